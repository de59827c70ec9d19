"""TLS settings turned into each client library's options: one function per client family.

Every connection to PostgreSQL, Redis, MongoDB and Kafka is built with these, so a TLS
setting means the same thing everywhere (``TlsSettings.verify``):

=======  ==========================  ============================  ===================================
verify   psycopg / libpq (sslmode)   redis-py, pymongo             librdkafka (confluent-kafka)
=======  ==========================  ============================  ===================================
full     ``verify-full``             CA chain + host name          verification on, endpoint ``https``
ca       ``verify-ca``               CA chain, any host name       verification on, endpoint ``none``
none     ``require``                 no checks (encryption only)   verification off
=======  ==========================  ============================  ===================================

The files a setting names are checked here, when a client is built, not when settings load:
settings load in places where the files are not mounted (tests, tools, a driver that never
opens this connection). A missing or unreadable file, a CA file that holds no certificate, or
a key that does not belong to its certificate fails with one line naming the setting and the
path (:class:`TlsConfigError`), before any library turns it into a handshake error.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from churn_core.settings import TlsSettings

__all__ = [
    "TlsConfigError",
    "check_tls_files",
    "kafka_config",
    "mongo_options",
    "postgres_params",
    "postgres_url",
    "redis_options",
    "server_ssl_options",
]

_SSLMODE = {"full": "verify-full", "ca": "verify-ca", "none": "require"}


class TlsConfigError(ValueError):
    """A TLS file named in settings is missing or unusable; one line naming setting and path."""


def _require_file(path: Path, setting: str) -> str:
    if not path.exists():
        raise TlsConfigError(f"{setting}: {path} does not exist")
    if not path.is_file():
        raise TlsConfigError(f"{setting}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise TlsConfigError(f"{setting}: {path} is not readable by this process")
    return str(path)


def _no_password() -> bytes:
    # An encrypted key fails the check instead of OpenSSL prompting on a terminal.
    return b""


def check_tls_files(tls: TlsSettings, setting: str) -> None:
    """Raise :class:`TlsConfigError` unless every file ``tls`` names exists and is usable.

    ``setting`` is where ``tls`` sits in the settings (``serve.redis_tls``), for the message.
    The CA file must hold at least one PEM certificate and the key must match the certificate:
    checked with Python's own OpenSSL so each library's later handshake error cannot be the
    first sign of a wrong file.
    """
    if not tls.enabled:
        return
    if tls.ca_file is not None:
        ca = _require_file(tls.ca_file, f"{setting}.ca_file")
        try:
            ssl.create_default_context().load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError) as error:
            raise TlsConfigError(
                f"{setting}.ca_file: {ca} holds no usable PEM certificate ({error})"
            ) from None
    if tls.cert_file is not None:
        cert = _require_file(tls.cert_file, f"{setting}.cert_file")
        key = _require_file(tls.key_file, f"{setting}.key_file") if tls.key_file else None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, _no_password)
        except (ssl.SSLError, ValueError) as error:
            where = f"{cert} and {key}" if key else f"{cert} (certificate and key in one file)"
            raise TlsConfigError(
                f"{setting}.cert_file/key_file: {where} are not a matching PEM certificate "
                f"and unencrypted key ({error})"
            ) from None


def postgres_params(tls: TlsSettings, setting: str) -> dict[str, str]:
    """libpq connection parameters (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``).

    Keyword arguments of ``psycopg.connect`` and of a ``psycopg_pool`` pool's ``kwargs``; the
    same names go in a URL's query for tools that take one URL (:func:`postgres_url`). Empty
    when TLS is off, so whatever the URL itself says (``?sslmode=...``) still applies.
    """
    if not tls.enabled:
        return {}
    check_tls_files(tls, setting)
    params = {"sslmode": _SSLMODE[tls.verify]}
    if tls.verify != "none":
        # "system": libpq (16+) trusts the system's CA store, as the other clients do when
        # no CA file is given; without it libpq would look for ~/.postgresql/root.crt.
        params["sslrootcert"] = str(tls.ca_file) if tls.ca_file is not None else "system"
    if tls.cert_file is not None:
        params["sslcert"] = str(tls.cert_file)
        params["sslkey"] = str(tls.key_file or tls.cert_file)
    return params


def postgres_url(url: str, tls: TlsSettings, setting: str) -> str:
    """``url`` with :func:`postgres_params` in its query (they replace the URL's own).

    For clients that take a single libpq URI: ``pg_dump``/``pg_restore`` (``--dbname``) and
    connectorx, which reads the same parameter names.
    """
    params = postgres_params(tls, setting)
    if not params:
        return url
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query = urlencode([*kept, *params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def redis_options(url: str, tls: TlsSettings, setting: str) -> tuple[str, dict[str, Any]]:
    """The URL and keyword arguments for ``redis.Redis.from_url`` (sync or asyncio).

    TLS on turns ``redis://`` into ``rediss://``, which is what makes redis-py pick its TLS
    connection class (for both the sync and the asyncio client), then adds the CA, client
    certificate and checks. TLS off returns the URL unchanged and no options.
    """
    if not tls.enabled:
        return url, {}
    check_tls_files(tls, setting)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise TlsConfigError(
            f"{setting}: TLS needs a redis:// or rediss:// URL, not {parts.scheme}://"
        )
    secure = urlunsplit(("rediss", parts.netloc, parts.path, parts.query, parts.fragment))
    options: dict[str, Any] = {
        "ssl_cert_reqs": "none" if tls.verify == "none" else "required",
        "ssl_check_hostname": tls.verify == "full",
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if tls.ca_file is not None and tls.verify != "none":
        options["ssl_ca_certs"] = str(tls.ca_file)
    if tls.cert_file is not None:
        options["ssl_certfile"] = str(tls.cert_file)
        options["ssl_keyfile"] = str(tls.key_file or tls.cert_file)
    return secure, options


def mongo_options(tls: TlsSettings, setting: str) -> dict[str, Any]:
    """Keyword arguments for ``pymongo.MongoClient`` (``tls``, ``tlsCAFile``, ...).

    pymongo reads the client certificate and its key from one file
    (``tlsCertificateKeyFile``): ``cert_file`` must hold both and ``key_file`` stay unset.
    """
    if not tls.enabled:
        return {}
    check_tls_files(tls, setting)
    if tls.key_file is not None and tls.key_file != tls.cert_file:
        raise TlsConfigError(
            f"{setting}.key_file: pymongo reads the key from the certificate file; put "
            f"certificate and key in one PEM at {setting}.cert_file and unset key_file"
        )
    options: dict[str, Any] = {"tls": True}
    if tls.ca_file is not None and tls.verify != "none":
        options["tlsCAFile"] = str(tls.ca_file)
    if tls.cert_file is not None:
        options["tlsCertificateKeyFile"] = str(tls.cert_file)
    # pymongo refuses tlsInsecure next to tlsAllowInvalidHostnames: set only the one meant.
    if tls.verify == "ca":
        options["tlsAllowInvalidHostnames"] = True
    elif tls.verify == "none":
        options["tlsInsecure"] = True
    return options


def kafka_config(tls: TlsSettings, setting: str) -> dict[str, str]:
    """librdkafka properties (``security.protocol=SSL``, ``ssl.*``) for confluent-kafka.

    Plain strings, so they also travel as a JSON option of the Spark data source to the
    processes that read partitions (which need the same files at the same paths).
    """
    if not tls.enabled:
        return {}
    check_tls_files(tls, setting)
    verify = tls.verify != "none"
    config = {
        "security.protocol": "SSL",
        "enable.ssl.certificate.verification": "true" if verify else "false",
        "ssl.endpoint.identification.algorithm": "https" if tls.verify == "full" else "none",
        # "probe": librdkafka looks for the system's CA store itself (its wheels do not know
        # where this distribution keeps it).
        "ssl.ca.location": str(tls.ca_file) if tls.ca_file is not None else "probe",
    }
    if tls.cert_file is not None:
        config["ssl.certificate.location"] = str(tls.cert_file)
        config["ssl.key.location"] = str(tls.key_file or tls.cert_file)
    return config


def server_ssl_options(
    cert_file: Path | None, key_file: Path | None, setting: str = "serve"
) -> dict[str, str]:
    """``ssl_certfile`` / ``ssl_keyfile`` for uvicorn and Ray Serve's ``http_options``.

    Both take these same two names. Empty when no certificate is configured (plain HTTP);
    the files are checked (present, readable, a matching certificate and key) first.
    """
    if cert_file is None or key_file is None:
        return {}
    cert = _require_file(cert_file, f"{setting}.tls_cert_file")
    key = _require_file(key_file, f"{setting}.tls_key_file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, _no_password)
    except (ssl.SSLError, ValueError) as error:
        raise TlsConfigError(
            f"{setting}.tls_cert_file/tls_key_file: {cert} and {key} are not a matching PEM "
            f"certificate and unencrypted key ({error})"
        ) from None
    return {"ssl_certfile": cert, "ssl_keyfile": key}
