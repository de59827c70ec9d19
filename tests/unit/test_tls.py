"""TLS settings and the one helper per client family that turns them into client options.

The handshakes themselves (right CA, untrusted CA, mutual TLS) run against real servers in
``tests/integration/test_tls.py``; here: the mapping of each verification mode, the refusals,
and the one-line errors for files that are missing or wrong.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from churn_core.settings import (
    KafkaSourceSettings,
    PostgresSourceSettings,
    ServeSettings,
    Settings,
    TlsSettings,
    load_settings,
    unknown_setting_variables,
)
from churn_core.tls import (
    TlsConfigError,
    check_tls_files,
    kafka_config,
    mongo_options,
    postgres_params,
    postgres_url,
    redis_options,
    server_ssl_options,
)
from tests.fixtures.certs import Authority, Issued, make_authority


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_authority(tmp_path_factory.mktemp("pki"), "test-ca")


@pytest.fixture(scope="module")
def client(ca: Authority) -> Issued:
    return ca.issue("client", client=True)


@pytest.fixture(scope="module")
def server(ca: Authority) -> Issued:
    return ca.issue("server")


def tls(ca: Authority, client: Issued | None = None, **changes: object) -> TlsSettings:
    values: dict[str, object] = {"enabled": True, "ca_file": ca.cert}
    if client is not None:
        values.update(cert_file=client.cert, key_file=client.key)
    return TlsSettings(**{**values, **changes})


# --- settings -------------------------------------------------------------------------------


def test_tls_is_off_by_default_everywhere() -> None:
    settings = load_settings("local")
    for found in (
        settings.serve.redis_tls,
        settings.serve.online_store.redis_tls,
        settings.serve.online_store.postgres_tls,
        settings.registry.mongodb_tls,
        settings.monitoring.mongodb_tls,
        settings.scoring.postgres_tls,
    ):
        assert found == TlsSettings()
    assert settings.serve.tls_cert_file is None


def test_k8s_turns_tls_on_for_every_store_without_needing_the_files_at_load() -> None:
    settings = load_settings("k8s")
    stores = {
        "serve.redis_tls": settings.serve.redis_tls,
        "serve.online_store.redis_tls": settings.serve.online_store.redis_tls,
        "serve.online_store.postgres_tls": settings.serve.online_store.postgres_tls,
        "scoring.postgres_tls": settings.scoring.postgres_tls,
        "registry.mongodb_tls": settings.registry.mongodb_tls,
        "monitoring.mongodb_tls": settings.monitoring.mongodb_tls,
    }
    for name, found in stores.items():
        assert found.enabled and found.verify == "full", name
        assert found.ca_file is not None and str(found.ca_file).startswith("/etc/churn/tls/"), name
    # The files are mounted only in the pods: building a client here names what is missing.
    with pytest.raises(TlsConfigError, match=r"^serve\.redis_tls\.ca_file: /etc/churn/tls/"):
        redis_options("redis://redis:6379/0", settings.serve.redis_tls, "serve.redis_tls")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ca_file": "certs/ca.pem"}, "must be an absolute path"),
        ({"key_file": "/k.pem"}, "key_file is set but cert_file is not"),
        ({"enabled": True, "verify": "ca"}, "verify 'ca' needs ca_file"),
        ({"verify": "maybe"}, "verify"),
        ({"ca": "/x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_tls_settings_are_refused_naming_the_field(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        TlsSettings.model_validate(values)


def test_tls_settings_attach_to_sources_and_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, ca: Authority
) -> None:
    monkeypatch.setenv("CHURN_SERVE__REDIS_TLS__ENABLED", "true")
    monkeypatch.setenv("CHURN_SERVE__REDIS_TLS__CA_FILE", str(ca.cert))
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__KIND", "postgres")
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__URL", "postgresql://db/crm")
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__TABLE", "customers")
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__TLS__ENABLED", "true")
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__TLS__VERIFY", "ca")
    monkeypatch.setenv("CHURN_SOURCES__CUSTOMERS__TLS__CA_FILE", str(ca.cert))
    settings = load_settings("test")
    assert settings.serve.redis_tls == TlsSettings(enabled=True, ca_file=ca.cert)
    source = settings.source("customers")
    assert isinstance(source, PostgresSourceSettings)
    assert source.tls.verify == "ca"
    # A typo in a TLS variable is caught like any other.
    assert unknown_setting_variables(["CHURN_SERVE__REDIS_TLS__CAFILE"]) == [
        "CHURN_SERVE__REDIS_TLS__CAFILE is not a setting "
        "(did you mean CHURN_SERVE__REDIS_TLS__CA_FILE?)"
    ]


def test_serve_certificate_and_key_go_together() -> None:
    with pytest.raises(ValidationError, match=r"tls_cert_file and serve\.tls_key_file go together"):
        ServeSettings(tls_cert_file=Path("/etc/churn/tls/api/tls.crt"))


# --- one line naming the setting and the path -------------------------------------------------


def test_missing_files_fail_in_one_line_naming_setting_and_path(
    tmp_path: Path, ca: Authority, client: Issued
) -> None:
    missing = tmp_path / "nowhere" / "ca.crt"
    for build in (
        lambda t: postgres_params(t, "scoring.postgres_tls"),
        lambda t: redis_options("redis://h:6379/0", t, "scoring.postgres_tls"),
        lambda t: mongo_options(t, "scoring.postgres_tls"),
        lambda t: kafka_config(t, "scoring.postgres_tls"),
    ):
        with pytest.raises(TlsConfigError) as caught:
            build(TlsSettings(enabled=True, ca_file=missing))
        assert str(caught.value) == f"scoring.postgres_tls.ca_file: {missing} does not exist"
    with pytest.raises(TlsConfigError, match=r"^x\.key_file: .*key\.pem does not exist$"):
        check_tls_files(tls(ca, cert_file=client.cert, key_file=tmp_path / "key.pem"), "x")


def test_wrong_files_fail_before_any_handshake(
    tmp_path: Path, ca: Authority, client: Issued, server: Issued
) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match=r"^x\.ca_file: .* holds no usable PEM certificate"):
        check_tls_files(TlsSettings(enabled=True, ca_file=garbage), "x")
    # The server's key with the client's certificate: a mix-up of Secret keys.
    with pytest.raises(TlsConfigError, match="not a matching PEM certificate and unencrypted key"):
        check_tls_files(tls(ca, cert_file=client.cert, key_file=server.key), "x")
    folder = tmp_path / "dir.crt"
    folder.mkdir()
    with pytest.raises(TlsConfigError, match="is not a file"):
        check_tls_files(TlsSettings(enabled=True, ca_file=folder), "x")


def test_disabled_tls_checks_nothing_and_changes_nothing(tmp_path: Path) -> None:
    off = TlsSettings(enabled=False, ca_file=tmp_path / "absent.crt")
    assert postgres_params(off, "x") == {}
    assert postgres_url("postgresql://h/db?sslmode=require", off, "x") == (
        "postgresql://h/db?sslmode=require"
    )
    assert redis_options("redis://h:6379/0", off, "x") == ("redis://h:6379/0", {})
    assert mongo_options(off, "x") == {}
    assert kafka_config(off, "x") == {}


# --- each client family ------------------------------------------------------------------------


def test_postgres_parameters_per_verification_mode(ca: Authority, client: Issued) -> None:
    assert postgres_params(tls(ca, client), "x") == {
        "sslmode": "verify-full",
        "sslrootcert": str(ca.cert),
        "sslcert": str(client.cert),
        "sslkey": str(client.key),
    }
    assert postgres_params(tls(ca, verify="ca"), "x") == {
        "sslmode": "verify-ca",
        "sslrootcert": str(ca.cert),
    }
    # No CA file: libpq's own name for the system trust store, as the other clients use it.
    assert postgres_params(TlsSettings(enabled=True), "x") == {
        "sslmode": "verify-full",
        "sslrootcert": "system",
    }
    # Encryption only: no root certificate, or libpq would verify the chain after all.
    assert postgres_params(tls(ca, verify="none"), "x") == {"sslmode": "require"}


def test_postgres_url_replaces_the_urls_own_tls_parameters(ca: Authority) -> None:
    url = postgres_url(
        "postgresql://u:p%40ss@db:5432/crm?sslmode=disable&application_name=a", tls(ca), "x"
    )
    assert url == (
        "postgresql://u:p%40ss@db:5432/crm?application_name=a&sslmode=verify-full"
        f"&sslrootcert={str(ca.cert).replace('/', '%2F')}"
    )


def test_redis_options_switch_to_rediss_and_verify(ca: Authority, client: Issued) -> None:
    url, options = redis_options("redis://:pw@cache:6379/2", tls(ca, client), "x")
    assert url == "rediss://:pw@cache:6379/2"
    assert options == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
        "ssl_ca_certs": str(ca.cert),
        "ssl_certfile": str(client.cert),
        "ssl_keyfile": str(client.key),
    }
    _, options = redis_options("rediss://cache:6379/0", tls(ca, verify="ca"), "x")
    assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is False
    _, options = redis_options("redis://cache", tls(ca, verify="none"), "x")
    assert options["ssl_cert_reqs"] == "none" and "ssl_ca_certs" not in options
    with pytest.raises(TlsConfigError, match=r"^x: TLS needs a redis:// or rediss:// URL"):
        redis_options("unix:///run/redis.sock", tls(ca), "x")


def test_mongo_options_use_one_certificate_key_file(ca: Authority, client: Issued) -> None:
    assert mongo_options(tls(ca, cert_file=client.combined), "x") == {
        "tls": True,
        "tlsCAFile": str(ca.cert),
        "tlsCertificateKeyFile": str(client.combined),
    }
    assert mongo_options(tls(ca, verify="ca"), "x")["tlsAllowInvalidHostnames"] is True
    insecure = mongo_options(tls(ca, verify="none"), "x")
    assert insecure == {"tls": True, "tlsInsecure": True}
    with pytest.raises(TlsConfigError, match=r"^registry\.mongodb_tls\.key_file: pymongo reads"):
        mongo_options(tls(ca, client), "registry.mongodb_tls")


def test_kafka_properties(ca: Authority, client: Issued) -> None:
    assert kafka_config(tls(ca, client), "x") == {
        "security.protocol": "SSL",
        "enable.ssl.certificate.verification": "true",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": str(ca.cert),
        "ssl.certificate.location": str(client.cert),
        "ssl.key.location": str(client.key),
    }
    relaxed = kafka_config(tls(ca, verify="ca"), "x")
    assert relaxed["ssl.endpoint.identification.algorithm"] == "none"
    assert kafka_config(TlsSettings(enabled=True), "x")["ssl.ca.location"] == "probe"
    off = kafka_config(tls(ca, verify="none"), "x")
    assert off["enable.ssl.certificate.verification"] == "false"


def test_kafka_source_carries_tls_to_the_data_source_option(ca: Authority) -> None:
    from pipelines.sources.kafka import _ReadOptions, _security

    source = KafkaSourceSettings(bootstrap_servers="b:9093", topic="t", tls=tls(ca))
    security = _security(source.tls)
    assert security["security.protocol"] == "SSL"
    import json

    parsed = _ReadOptions.parse(
        {"bootstrap_servers": "b:9093", "topic": "t", "security": json.dumps(security)}
    )
    assert parsed.security == security
    assert _ReadOptions.parse({"bootstrap_servers": "b", "topic": "t"}).security == {}
    with pytest.raises(ValueError, match="'security' must be a JSON object of strings"):
        _ReadOptions.parse({"bootstrap_servers": "b", "topic": "t", "security": '{"a": 1}'})


def test_sail_reads_verify_against_the_ca_file_or_refuse(ca: Authority) -> None:
    from pipelines.sources.postgres import (
        PostgresSourceError,
        _for_connectorx,
        _parse_url,
        _with_tls,
    )

    target = _with_tls(_parse_url("postgresql://u@db:5432/crm"), tls(ca), "customers")
    assert dict(target.params)["sslmode"] == "verify-full"
    # connectorx knows only "require", and then checks the chain against sslrootcert.
    assert dict(_for_connectorx(target).params) == {
        "sslmode": "require",
        "sslrootcert": str(ca.cert),
    }
    system = _with_tls(_parse_url("postgresql://u@db/crm"), TlsSettings(enabled=True), "c")
    with pytest.raises(PostgresSourceError, match=r"set the source's tls\.ca_file"):
        _for_connectorx(system)


def test_backup_reaches_each_database_with_the_tls_of_its_setting(ca: Authority) -> None:
    from churn_core.backup.postgres import display_postgres_url, postgres_targets

    base = load_settings("test")
    settings = base.model_copy(
        update={
            "scoring": base.scoring.model_copy(
                update={
                    "postgres_url": SecretStr("postgresql://churn@db:5432/scores"),
                    "postgres_tls": tls(ca),
                }
            ),
            "serve": base.serve.model_copy(
                update={
                    "online_store": base.serve.online_store.model_copy(
                        update={"postgres_url": SecretStr("postgresql://churn@db:5432/online")}
                    )
                }
            ),
        }
    )
    assert isinstance(settings, Settings)
    urls = {t.settings: t.url for t in postgres_targets(settings)}
    scores = urls[("scoring.postgres_url",)]
    assert "sslmode=verify-full" in scores and "sslrootcert=" in scores
    assert display_postgres_url(scores) == "postgresql://churn@db:5432/scores"
    assert urls[("serve.online_store.postgres_url",)] == "postgresql://churn@db:5432/online"


# --- HTTPS of the API -------------------------------------------------------------------------


def test_server_certificate_is_checked(tmp_path: Path, ca: Authority, server: Issued) -> None:
    assert server_ssl_options(server.cert, server.key) == {
        "ssl_certfile": str(server.cert),
        "ssl_keyfile": str(server.key),
    }
    assert server_ssl_options(None, None) == {}
    with pytest.raises(TlsConfigError, match=r"^serve\.tls_key_file: .* does not exist$"):
        server_ssl_options(server.cert, tmp_path / "tls.key")


def test_serve_https_through_rays_proxy_but_not_haproxy(server: Issued) -> None:
    from serve_apps.launcher import ServeStartError, load_serve_config

    base = load_settings("test")
    tls_serve = base.serve.model_copy(
        update={"tls_cert_file": server.cert, "tls_key_file": server.key, "ingress": "proxy"}
    )
    config = load_serve_config(base.model_copy(update={"serve": tls_serve}))
    assert config["http_options"]["ssl_certfile"] == str(server.cert)
    assert config["http_options"]["ssl_keyfile"] == str(server.key)
    assert "ssl_certfile" not in load_serve_config(base)["http_options"]
    haproxy = base.model_copy(update={"serve": tls_serve.model_copy(update={"ingress": "haproxy"})})
    with pytest.raises(ServeStartError, match="HAProxy frontend cannot terminate TLS"):
        load_serve_config(haproxy)


def test_the_standalone_server_gets_uvicorns_ssl_options(server: Issued) -> None:
    from serve_apps.standalone import standalone_tls_options

    base = load_settings("test")
    assert standalone_tls_options(base) == {}
    on = base.model_copy(
        update={
            "serve": base.serve.model_copy(
                update={"tls_cert_file": server.cert, "tls_key_file": server.key}
            )
        }
    )
    assert standalone_tls_options(on) == {
        "ssl_certfile": str(server.cert),
        "ssl_keyfile": str(server.key),
    }
