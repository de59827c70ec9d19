"""PostgreSQL in a backup: ``pg_dump --format=custom`` out, ``pg_restore`` back in.

Which databases: every distinct PostgreSQL URL anywhere in the settings (sources, the online
store, the scores table ...), found by walking the settings, so a section added later is
backed up without a change here. One dump per database, naming every setting that points at
it; a restore writes to wherever those settings point at restore time.

Passwords travel in ``PGPASSWORD`` only: never on a command line (other users can read it in
``ps``), in a log line, in an error or in the manifest.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

from churn_core.backup.manifest import BackupError
from churn_core.logging import get_logger
from churn_core.settings import TlsSettings
from churn_core.tls import postgres_url

log = get_logger(__name__)

_SCHEMES = ("postgresql", "postgres")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# Relations a restore would collide with: tables, partitioned tables, views, materialised
# views, sequences, foreign tables, outside the system schemas.
_RELATIONS_SQL = """
SELECT n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1
"""


class Sink(Protocol):
    """Where a dump is written (the backup's hashing stream)."""

    def write(self, data: bytes, /) -> int:
        """Write ``data``."""
        ...


@dataclass(frozen=True)
class PostgresTarget:
    """One database and every setting that points at it."""

    settings: tuple[str, ...]
    # The full URL, password included: only ever passed to libpq through the environment.
    url: str

    @property
    def parts(self) -> Any:
        """The parsed URL."""
        return urlsplit(self.url)

    @property
    def database(self) -> str:
        """The database name (libpq's default: the user name)."""
        return unquote(self.parts.path.lstrip("/")) or unquote(self.parts.username or "")

    @property
    def display(self) -> str:
        """``postgresql://user@host:port/database`` without password or query."""
        return display_postgres_url(self.url)

    @property
    def file_name(self) -> str:
        """A file name for its dump: database, host and port."""
        host = self.parts.hostname or "local"
        port = self.parts.port or 5432
        return _UNSAFE.sub("_", f"{self.database}_{host}_{port}") + ".dump"


def is_postgres_url(value: str) -> bool:
    """Whether ``value`` is a ``postgresql://`` (or ``postgres://``) URL."""
    return urlsplit(value).scheme in _SCHEMES


def display_postgres_url(url: str) -> str:
    """The URL with user and location only (no password, no query)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password (user info or ``password=`` query), and the password."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password is not None else None
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = []
    for key, value in query:
        if key == "password":
            password = value
        else:
            kept.append((key, value))
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username is not None:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), "")), password


def _tls_sibling(model: BaseModel, name: str) -> str | None:
    """The TLS field next to URL field ``name``: ``url`` -> ``tls``, ``x_url`` -> ``x_tls``."""
    if not name.endswith("url"):
        return None
    sibling = name.removesuffix("url") + "tls"
    return sibling if sibling in type(model).model_fields else None


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(setting path, URL) of every PostgreSQL URL inside a settings value.

    A URL whose connection has TLS settings (the ``*_tls`` field next to it) comes with them
    as libpq parameters in its query, so ``pg_dump``, ``pg_restore`` and psycopg all use them.
    """
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        if is_postgres_url(value):
            yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            child = f"{path}.{name}" if path else name
            sibling = _tls_sibling(value, name)
            tls = getattr(value, sibling) if sibling else None
            for where, url in _walk(getattr(value, name), child):
                if isinstance(tls, TlsSettings):
                    url = postgres_url(url, tls, f"{path}.{sibling}" if path else str(sibling))
                yield where, url
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}.{index}")


def _identity(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "")
    return (parts.hostname or "", parts.port or 5432, database)


def postgres_targets(settings: BaseModel) -> list[PostgresTarget]:
    """Every distinct database the settings name (same host, port and database: one target)."""
    grouped: dict[tuple[str, int, str], list[tuple[str, str]]] = {}
    for path, url in _walk(settings, ""):
        grouped.setdefault(_identity(url), []).append((path, url))
    return [
        PostgresTarget(settings=tuple(sorted(p for p, _ in found)), url=found[0][1])
        for _, found in sorted(grouped.items())
    ]


def libpq_environment(url: str) -> tuple[str, dict[str, str]]:
    """The URL to pass on a command line (no password) and the environment carrying it."""
    bare, password = split_password(url)
    environment = dict(os.environ)
    if password is not None:
        environment["PGPASSWORD"] = password
    return bare, environment


def _stderr_line(stderr: bytes, url: str) -> str:
    """The tool's error output as one line, any password scrubbed."""
    text = " ".join(stderr.decode(errors="replace").split())
    _, password = split_password(url)
    if password:
        text = text.replace(password, "***")
    return text[:500] or "no output"


def dump_database(target: PostgresTarget, out: Sink, pg_dump: str, timeout_s: float) -> None:
    """``pg_dump --format=custom`` of one database, streamed into ``out``."""
    bare, environment = libpq_environment(target.url)
    command = [pg_dump, "--format=custom", "--no-password", f"--dbname={bare}"]
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment
        )
    except OSError as error:
        raise BackupError(f"cannot run {pg_dump}: {error.strerror}") from None
    assert process.stdout is not None and process.stderr is not None
    try:
        while chunk := process.stdout.read(1024 * 1024):
            out.write(chunk)
        stderr = process.stderr.read()
        code = process.wait(timeout=timeout_s)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if code != 0:
        raise BackupError(
            f"pg_dump of {target.display} failed (exit {code}): {_stderr_line(stderr, target.url)}"
        )


def _connect(url: str, timeout_s: float = 10.0) -> Any:
    import psycopg

    return psycopg.connect(url, connect_timeout=int(timeout_s), autocommit=True)


def _describe(error: Exception, url: str) -> str:
    return _stderr_line(str(error).encode(), url)


def relations(url: str) -> list[str] | None:
    """User relations in the database (None: the database does not exist)."""
    import psycopg

    try:
        with _connect(url) as conn:
            return [str(row[0]) for row in conn.execute(_RELATIONS_SQL).fetchall()]
    except psycopg.OperationalError as error:
        if "does not exist" in str(error):
            return None
        raise BackupError(
            f"cannot connect to {display_postgres_url(url)}: {_describe(error, url)}"
        ) from None


def create_database(url: str) -> None:
    """Create the database ``url`` names, connecting to ``postgres`` on the same server."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    try:
        with _connect(admin) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as error:
        raise BackupError(
            f"cannot create database {database!r} on {display_postgres_url(url)}: "
            f"{_describe(error, url)}"
        ) from None
    log.info("postgres database created", url=display_postgres_url(url))


def restore_database(
    url: str, dump: Path, pg_restore: str, timeout_s: float, *, clean: bool
) -> None:
    """``pg_restore`` a custom-format dump into ``url`` in one transaction.

    Owners and grants are not restored (the restoring role owns what it creates), so a dump
    taken as one role restores as another. ``clean`` drops the dumped objects first.
    """
    bare, environment = libpq_environment(url)
    command = [
        pg_restore,
        "--no-password",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        f"--dbname={bare}",
    ]
    if clean:
        command += ["--clean", "--if-exists"]
    try:
        finished = subprocess.run(
            [*command, str(dump)], capture_output=True, env=environment, timeout=timeout_s
        )
    except OSError as error:
        raise BackupError(f"cannot run {pg_restore}: {error.strerror}") from None
    if finished.returncode != 0:
        raise BackupError(
            f"pg_restore into {display_postgres_url(url)} failed (exit {finished.returncode}): "
            f"{_stderr_line(finished.stderr, url)}"
        )
