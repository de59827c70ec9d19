"""PostgreSQL source: read a table incrementally by a watermark column, as text, into Spark.

The same function works on both engines the project runs on:

* **Sail** (embedded, the default): ``pysail.spark.datasource.jdbc.JdbcDataSource`` is registered
  as the ``jdbc`` data source. It reads with connectorx (Rust, one Arrow table per partition).
* **JVM Spark Connect**: Spark's built-in ``jdbc`` source with the PostgreSQL JDBC driver on the
  server's classpath (Debian: ``/usr/share/java/postgresql.jar``).

Which one a session talks to is found out by registering ``JdbcDataSource``: JVM Spark refuses
the registration with ``DATA_SOURCE_ALREADY_EXISTS`` because it has a built-in ``jdbc`` source,
Sail accepts it. The answer is cached per session; ``engine=`` overrides the detection.

Every column comes back as **text**, converted inside PostgreSQL (in the pushed-down SELECT),
so both engines see identical strings despite their different type mappings (``numeric(12,2)``
arrives as ``decimal(38,10)`` in Sail). The forms:

* ``timestamp``: ``YYYY-MM-DD HH:MM:SS`` plus ``.f`` .. ``.ffffff`` when the fraction is not
  zero, trailing zeros trimmed: the same string Spark's ``CAST(ts AS STRING)`` gives (on Sail and
  JVM), which the bronze layer applies to file sources. ``timestamptz`` is converted to UTC first.
  Lexicographic order of these strings is time order, so a watermark can be a ``max()`` of text.
* ``date``: ``YYYY-MM-DD``; ``boolean``: ``true``/``false``.
* ``numeric``: plain decimal text with the column's scale (``12.50``), never an exponent.
* ``double precision``/``real``: PostgreSQL's shortest exact text (``0.1``, ``3``, ``1e+20``);
  Spark would write ``3.0``/``1.0E20``, and casts either back to the same double.
* everything else (integers, text, uuid, json, ...): PostgreSQL's text output (``col::text``).

Before anything is sent to Spark the table is inspected over psycopg: that turns an unreachable
server, a missing table or a missing column into one clear :class:`PostgresSourceError` naming
host, database and table. The password never appears in an exception message or a log line.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from dataclasses import replace as _copy_with
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql
from pydantic import SecretStr

from churn_core.logging import get_logger
from churn_core.settings import PostgresSourceSettings, TlsSettings
from churn_core.tls import postgres_params

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "Engine",
    "PostgresSourceError",
    "detect_engine",
    "load_table",
    "postgres_errors",
    "read_postgres_batch",
    "upsert_rows",
]

log = get_logger(__name__)

Engine = Literal["auto", "sail", "jvm"]

# Shown in pg_stat_activity, so an operator (and the tests) can tell the source's reads apart.
APPLICATION_NAME = "churn-postgres-source"
# Seconds to wait for a TCP connection; an unreachable host must fail, not hang.
CONNECT_TIMEOUT_S = 10
# Rows per round trip on JVM Spark. Without it pgjdbc buffers the whole result in memory.
JDBC_FETCH_SIZE = 10_000
# Name of the synthetic partitioning column added to the pushed-down query (dropped again).
_PART_COLUMN = "__churn_part"
_SUBQUERY_ALIAS = "churn_src"
_REDACTED = "***"

_TIMESTAMP_TYPES = {"timestamp", "timestamptz", "date"}


class PostgresSourceError(RuntimeError):
    """Reading from PostgreSQL failed; the message is one line and never carries the password."""


# ---------------------------------------------------------------------------------------------
# Connection URL
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """A parsed ``postgresql://`` URL. ``repr`` leaves the password out."""

    host: str
    port: int
    database: str
    user: str | None
    password: str | None = field(repr=False)
    params: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        """``host:port/database``: how every message names the server."""
        return f"{self.host}:{self.port}/{self.database}"

    def conninfo(self) -> str:
        """A libpq URI for psycopg (credentials percent-encoded)."""
        creds = ""
        if self.user is not None:
            creds = quote(self.user, safe="")
            if self.password is not None:
                creds += ":" + quote(self.password, safe="")
            creds += "@"
        query = f"?{urlencode(self.params)}" if self.params else ""
        return f"postgresql://{creds}{_host_for_url(self.host)}:{self.port}/{quote(self.database, safe='')}{query}"

    def secrets(self) -> list[str]:
        """Every spelling of the password that could leak into a message."""
        if not self.password:
            return []
        return sorted(
            {self.password, quote(self.password, safe=""), quote(self.password)},
            key=len,
            reverse=True,
        )


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _secret_value(url: SecretStr | str) -> str:
    return url.get_secret_value() if isinstance(url, SecretStr) else url


def _parse_url(url: SecretStr | str) -> _Target:
    """Split a ``postgresql://user:password@host:port/db?params`` URL; errors never echo it."""
    raw = _secret_value(url)
    try:
        parts = urlsplit(raw)
        port = parts.port or 5432
    except ValueError:
        raise PostgresSourceError(
            "PostgreSQL URL is malformed (not shown: it may hold a password)"
        ) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise PostgresSourceError(
            f"PostgreSQL URL must start with postgresql://, got scheme {parts.scheme!r}"
        )
    database = unquote(parts.path.lstrip("/"))
    # Spark's executors connect over TCP, so a Unix-socket URL (no host) cannot work there.
    if not parts.hostname or not database:
        raise PostgresSourceError("PostgreSQL URL must name a host and a database")
    return _Target(
        host=parts.hostname,
        port=port,
        database=database,
        user=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        params=tuple(parse_qsl(parts.query)),
    )


def _with_tls(target: _Target, tls: TlsSettings | None, table: str) -> _Target:
    """``target`` with the TLS settings as libpq parameters (replacing the URL's own).

    They travel in ``params``, so psycopg, connectorx (Sail) and pgjdbc (JVM Spark) all get
    them: the three read ``sslmode``, ``sslrootcert``, ``sslcert`` and ``sslkey``. pgjdbc
    wants the key as PKCS-8 DER and knows no ``sslrootcert=system``.
    """
    params = postgres_params(tls, f"sources.<{table}>.tls") if tls is not None else {}
    if not params:
        return target
    kept = tuple((k, v) for k, v in target.params if k not in params)
    return _copy_with(target, params=(*kept, *params.items()))


_URL_CREDENTIALS = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


def _redact(text: str, target: _Target | None) -> str:
    """``text`` with the password (any spelling) and URL credentials masked."""
    if target is not None:
        for secret in target.secrets():
            text = text.replace(secret, _REDACTED)
    return _URL_CREDENTIALS.sub(rf"\1:{_REDACTED}@", text)


def _one_line(text: str, limit: int = 400) -> str:
    """The informative part of an engine or driver message, collapsed onto one line."""
    lines = [line.strip() for line in text.strip().splitlines()]
    # JVM errors append "JVM stacktrace:" and frames; only what precedes them explains anything.
    kept: list[str] = []
    for line in lines:
        if line.startswith(("JVM stacktrace", "at ", "Traceback")):
            break
        if line:
            kept.append(line)
    joined = " ".join(kept) or text.strip()
    # pysail's messages quote the whole pushed-down query before the driver's error, which is
    # the part worth reading: "... Query: '<SQL>'. Error: connection closed".
    if " Query: " in joined and ". Error: " in joined:
        head, _, _ = joined.partition(" Query: ")
        joined = f"{head} Error: {joined.rpartition('. Error: ')[2]}"
    joined = re.sub(r"\s+", " ", joined)
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def _source_error(
    target: _Target, table: str, what: str, cause: BaseException | str
) -> PostgresSourceError:
    detail = _one_line(_redact(str(cause), target))
    return PostgresSourceError(f"PostgreSQL {target.where} table {table}: {what}: {detail}")


# ---------------------------------------------------------------------------------------------
# Identifiers and literals
# ---------------------------------------------------------------------------------------------


def _quote_ident(name: str) -> str:
    """``name`` as a double-quoted PostgreSQL identifier (exact, case-sensitive)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _split_table(table: str) -> tuple[str | None, str]:
    """``schema.table`` or ``table``; the first dot separates the schema."""
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else (None, table)


def _quote_table(table: str) -> str:
    schema, name = _split_table(table)
    return (
        f"{_quote_ident(schema)}.{_quote_ident(name)}" if schema is not None else _quote_ident(name)
    )


def _parse_since(since: str) -> datetime:
    """``since`` as a naive UTC datetime; anything that is not a timestamp is refused.

    The literal sent to PostgreSQL is re-rendered from the parsed value, so no character of the
    caller's string reaches the SQL text.
    """
    try:
        value = datetime.fromisoformat(since.strip())
    except (ValueError, AttributeError, TypeError):
        raise ValueError(
            f"since must be a timestamp like 'YYYY-MM-DD HH:MM:SS[.ffffff]', got {since!r}"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


# ---------------------------------------------------------------------------------------------
# Inspecting the table (psycopg, in the driver)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableInfo:
    types: dict[str, str]  # column -> base type name (pg_type.typname)
    primary_key: tuple[str, ...]


_COLUMNS_SQL = """
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PRIMARY_KEY_SQL = """
SELECT a.attname
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY array_position(i.indkey::int2[], a.attnum)
"""


def _connect(target: _Target, table: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            target.conninfo(),
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=APPLICATION_NAME,
            autocommit=True,
        )
    except psycopg.Error as exc:
        raise _source_error(target, table, "cannot connect", exc) from None


def _inspect(target: _Target, table: str, needed: Sequence[str]) -> _TableInfo:
    """Column types and primary key of ``table``; a clear error if it or a column is missing."""
    with _connect(target, table) as conn:
        try:
            row = conn.execute("SELECT to_regclass(%s)::oid", [_quote_table(table)]).fetchone()
            oid = row[0] if row else None
            if oid is None:
                raise PostgresSourceError(
                    f"PostgreSQL {target.where} table {table}: table does not exist "
                    "(or is not visible to this user on its search_path)"
                )
            types = {name: typ for name, typ in conn.execute(_COLUMNS_SQL, [oid]).fetchall()}
            primary_key = tuple(
                name for (name,) in conn.execute(_PRIMARY_KEY_SQL, [oid]).fetchall()
            )
        except psycopg.Error as exc:
            raise _source_error(target, table, "cannot inspect the table", exc) from None
    missing = [c for c in needed if c not in types]
    if missing:
        raise PostgresSourceError(
            f"PostgreSQL {target.where} table {table}: missing column(s) {missing} "
            f"(the table has {sorted(types)})"
        )
    return _TableInfo(types=types, primary_key=primary_key)


# ---------------------------------------------------------------------------------------------
# The pushed-down query
# ---------------------------------------------------------------------------------------------


def _timestamp_text(expr: str) -> str:
    # to_char does not depend on the session's DateStyle (a role or database may change it);
    # the fraction is trimmed of trailing zeros the way Spark's CAST(ts AS STRING) does.
    # to_char of +/-infinity is NULL, so those keep PostgreSQL's own spelling.
    return (
        f"CASE WHEN isfinite({expr}) THEN to_char({expr}, 'YYYY-MM-DD HH24:MI:SS')"
        f" || rtrim(rtrim(to_char({expr}, '.US'), '0'), '.') ELSE ({expr})::text END"
    )


def _text_expr(column: str, typname: str) -> str:
    """SQL turning ``column`` of type ``typname`` into its canonical text."""
    col = _quote_ident(column)
    if typname == "timestamp":
        return _timestamp_text(col)
    if typname == "timestamptz":
        return _timestamp_text(f"({col} AT TIME ZONE 'UTC')")
    if typname == "date":
        return f"CASE WHEN isfinite({col}) THEN to_char({col}, 'YYYY-MM-DD') ELSE {col}::text END"
    # bool -> true/false, numeric -> plain decimal, float -> shortest exact text, text as is.
    return f"{col}::text"


def _since_predicate(column: str, typname: str, since: datetime) -> str:
    literal = since.isoformat(sep=" ", timespec="microseconds")  # digits and separators only
    col = _quote_ident(column)
    if typname == "timestamptz":
        # Watermarks are handed out in UTC (see _text_expr), so the bound is UTC too.
        return f"{col} >= TIMESTAMP WITH TIME ZONE '{literal}+00'"
    # timestamp, and date (compared as midnight of that day).
    return f"{col} >= TIMESTAMP '{literal}'"


def _build_query(
    table: str,
    columns: Sequence[str],
    info: _TableInfo,
    watermark_column: str,
    since: datetime | None,
    num_partitions: int,
) -> str:
    """The SELECT pushed to PostgreSQL (text columns, watermark filter, partition number)."""
    select = [f"{_text_expr(c, info.types[c])} AS {_quote_ident(c)}" for c in columns]
    if num_partitions > 1:
        # Hash of the primary key: stable across updates, so a row that changes while the
        # partitions are read one after another still lands in exactly one partition.
        key = ", ".join(_quote_ident(k) for k in info.primary_key)
        select.append(
            f"mod(hashtext(ROW({key})::text)::bigint + 2147483648, {int(num_partitions)})"
            f" AS {_quote_ident(_PART_COLUMN)}"
        )
    query = f"SELECT {', '.join(select)} FROM {_quote_table(table)}"
    if since is not None:
        query += f" WHERE {_since_predicate(watermark_column, info.types[watermark_column], since)}"
    return query


# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------

_engines: dict[str, Literal["sail", "jvm"]] = {}
_engines_lock = threading.Lock()


def _condition(exc: BaseException) -> str:
    get = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    value = get() if callable(get) else None
    return value if isinstance(value, str) else ""


def detect_engine(spark: SparkSession, engine: Engine = "auto") -> Literal["sail", "jvm"]:
    """Which ``jdbc`` source ``spark`` uses; on Sail this also registers ``JdbcDataSource``.

    ``"auto"`` registers connectorx's ``JdbcDataSource`` as ``jdbc``: JVM Spark refuses with
    ``DATA_SOURCE_ALREADY_EXISTS`` (it has a built-in ``jdbc`` source), Sail accepts. The result
    is cached per session id. ``"sail"`` registers without asking; ``"jvm"`` registers nothing.
    """
    if engine == "jvm":
        return "jvm"
    session_id = str(spark.session_id) if hasattr(spark, "session_id") else str(id(spark))
    with _engines_lock:
        known = _engines.get(session_id)
        if known is not None and (engine == "auto" or known == engine):
            return known
        from pysail.spark.datasource.jdbc import JdbcDataSource

        try:
            spark.dataSource.register(JdbcDataSource)
            found: Literal["sail", "jvm"] = "sail"
        except Exception as exc:
            text = str(exc)
            if engine == "auto" and (
                _condition(exc) == "DATA_SOURCE_ALREADY_EXISTS"
                or "DATA_SOURCE_ALREADY_EXISTS" in text
            ):
                found = "jvm"
            else:
                raise
        _engines[session_id] = found
        return found


def _url_params(target: _Target, own: Mapping[str, str]) -> str:
    """The URL's own query parameters, plus ours unless the URL sets them."""
    given = dict(target.params)
    return urlencode([*target.params, *((k, v) for k, v in own.items() if k not in given)])


def _for_connectorx(target: _Target) -> _Target:
    """``target`` with libpq's verifying ``sslmode`` values spelt the way connectorx reads them.

    connectorx (Sail's JDBC source) refuses ``verify-ca``/``verify-full``; it takes ``require``
    and then checks the server's chain against ``sslrootcert`` when one is given (measured:
    a server signed by another CA is refused), but not the host name, and with no
    ``sslrootcert`` it checks nothing. So a verifying mode becomes ``require`` + the CA file,
    and is refused without a CA file rather than silently read unverified.
    """
    params = dict(target.params)
    if params.get("sslmode") not in ("verify-ca", "verify-full"):
        return target
    if params.get("sslrootcert") in (None, "system"):
        raise PostgresSourceError(
            f"PostgreSQL {target.where}: Sail's reader (connectorx) verifies the server only "
            "against a CA file: set the source's tls.ca_file"
        )
    params["sslmode"] = "require"
    return _copy_with(target, params=tuple(params.items()))


def _reader(
    spark: SparkSession, engine: Literal["sail", "jvm"], target: _Target, dbtable: str
) -> Any:
    """A ``jdbc`` DataFrameReader for ``dbtable`` on ``engine`` (credentials as options)."""
    base = f"jdbc:postgresql://{_host_for_url(target.host)}:{target.port}/{quote(target.database, safe='')}"
    reader = spark.read.format("jdbc").option("dbtable", dbtable)
    if engine == "sail":
        # pysail turns jdbc:postgresql://... back into a libpq URI for connectorx, so libpq
        # parameter names apply (connect_timeout, application_name, sslmode, ...).
        target = _for_connectorx(target)
        own = {
            "connect_timeout": str(CONNECT_TIMEOUT_S),
            "application_name": APPLICATION_NAME,
            "keepalives": "1",
        }
        reader = reader.option("url", f"{base}?{_url_params(target, own)}")
    else:
        # pgjdbc parameter names, in the URL: connection properties passed as reader options
        # did not reach the driver through Spark Connect (ApplicationName was ignored).
        own = {
            "connectTimeout": str(CONNECT_TIMEOUT_S),
            "ApplicationName": APPLICATION_NAME,
            "tcpKeepAlive": "true",
        }
        reader = (
            reader.option("url", f"{base}?{_url_params(target, own)}")
            .option("driver", "org.postgresql.Driver")
            .option("fetchsize", str(JDBC_FETCH_SIZE))
        )
    if target.user is not None:
        reader = reader.option("user", target.user)
    if target.password is not None:
        reader = reader.option("password", target.password)
    return reader


def read_postgres_batch(
    spark: SparkSession,
    settings: PostgresSourceSettings,
    columns: Sequence[str],
    since: str | None,
    *,
    engine: Engine = "auto",
) -> DataFrame:
    """Rows of ``settings.table`` with ``watermark_column >= since``, every column as text.

    ``since`` is inclusive (rows at exactly the previous watermark come again; the caller
    de-duplicates them) and must parse as a timestamp (``YYYY-MM-DD[ HH:MM:SS[.ffffff]]``; an
    offset is converted to UTC, as ``timestamptz`` values are, and a ``timestamp`` column is
    taken to hold UTC); ``None`` reads the whole table. Rows whose
    watermark is NULL are only returned by a full read. The watermark column must be a
    ``timestamp``, ``timestamptz`` or ``date``.

    With ``settings.num_partitions > 1`` and a primary key the read is split by a hash of the
    key; a table without a primary key is read as one partition.

    The table is inspected first (over psycopg), so an unreachable server or a missing table or
    column raises :class:`PostgresSourceError` here. The DataFrame is lazy: wrap the action that
    runs it in :func:`postgres_errors` to get the same kind of error if the connection breaks
    during the read.
    """
    if not columns:
        raise ValueError("columns must name at least one column")
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns must be distinct, got {list(columns)}")
    target = _with_tls(_parse_url(settings.url), settings.tls, settings.table)
    table = settings.table
    since_value = _parse_since(since) if since is not None else None
    needed = list(dict.fromkeys([*columns, settings.watermark_column]))
    info = _inspect(target, table, needed)
    watermark_type = info.types[settings.watermark_column]
    if since_value is not None and watermark_type not in _TIMESTAMP_TYPES:
        raise PostgresSourceError(
            f"PostgreSQL {target.where} table {table}: watermark column "
            f"{settings.watermark_column!r} is {watermark_type}, expected timestamp, timestamptz or date"
        )
    partitions = settings.num_partitions if info.primary_key else 1
    if settings.num_partitions > 1 and not info.primary_key:
        log.warning(
            "postgres table has no primary key: reading one partition",
            table=table,
            where=target.where,
        )
    query = _build_query(table, columns, info, settings.watermark_column, since_value, partitions)

    with postgres_errors(settings):
        found = detect_engine(spark, engine)
        reader = _reader(spark, found, target, f"({query}) AS {_SUBQUERY_ALIAS}")
        if partitions > 1:
            reader = (
                reader.option("partitionColumn", _PART_COLUMN)
                .option("lowerBound", "0")
                .option("upperBound", str(partitions))
                .option("numPartitions", str(partitions))
            )
        frame: DataFrame = reader.load()
        if partitions > 1:
            frame = frame.drop(_PART_COLUMN)
    log.info(
        "postgres batch planned",
        where=target.where,
        table=table,
        engine=found,
        since=since_value.isoformat(sep=" ") if since_value is not None else None,
        partitions=partitions,
    )
    return frame


@contextmanager
def postgres_errors(settings: PostgresSourceSettings, what: str = "read failed") -> Iterator[None]:
    """Re-raise any error inside the block as a one-line :class:`PostgresSourceError`.

    Use it around the Spark action that runs a DataFrame from :func:`read_postgres_batch`
    (``count``, ``collect``, a Delta write): engine errors are many lines of JVM or Python
    traceback and, on some paths, could echo connection options. The original exception is
    chained only when its text does not contain the password.
    """
    target = _parse_url(settings.url)
    try:
        yield
    except PostgresSourceError:
        raise
    except Exception as exc:
        error = _source_error(target, settings.table, what, exc)
        leaks = any(secret in str(exc) for secret in target.secrets())
        if leaks:
            raise error from None
        raise error from exc


# ---------------------------------------------------------------------------------------------
# Loading tables (tests, sample data)
# ---------------------------------------------------------------------------------------------


def _sql_type(arrow_type: pa.DataType) -> str:
    """The PostgreSQL column type for an Arrow type."""
    if pa.types.is_dictionary(arrow_type):
        return _sql_type(arrow_type.value_type)
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz is not None else "timestamp"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_float64(arrow_type):
        return "double precision"
    if pa.types.is_float32(arrow_type) or pa.types.is_float16(arrow_type):
        return "real"
    if pa.types.is_integer(arrow_type):
        return "bigint"
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    if pa.types.is_null(arrow_type):
        return "text"
    raise TypeError(f"no PostgreSQL type for Arrow type {arrow_type}")


def _as_arrow(data: pa.Table | pd.DataFrame) -> pa.Table:
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    fields = []
    for f in table.schema:
        typ = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        # PostgreSQL keeps microseconds; cast explicitly instead of letting COPY round nanos.
        if pa.types.is_timestamp(typ) and typ.unit == "ns":
            typ = pa.timestamp("us", tz=typ.tz)
        fields.append(pa.field(f.name, typ))
    return table.cast(pa.schema(fields), safe=False)


def _keys(key: str | Sequence[str]) -> list[str]:
    keys = [key] if isinstance(key, str) else list(key)
    if not keys:
        raise ValueError("a key needs at least one column")
    return keys


def _table_ident(table: str) -> sql.Composable:
    schema, name = _split_table(table)
    return sql.Identifier(schema, name) if schema is not None else sql.Identifier(name)


def load_table(
    url: SecretStr | str,
    table: str,
    data: pa.Table | pd.DataFrame,
    primary_key: str | Sequence[str],
    replace: bool = False,
    *,
    tls: TlsSettings | None = None,
) -> int:
    """Write ``data`` into PostgreSQL ``table`` with COPY; returns the number of rows written.

    The table is created if missing, with column types mapped from Arrow (timestamp ->
    timestamp, tz-aware timestamp -> timestamptz, date -> date, bool -> boolean, float64 ->
    double precision, integers -> bigint, decimal(p,s) -> numeric(p,s), string -> text) and
    ``primary_key``. ``replace=True`` drops an existing table first; otherwise rows are appended
    (a duplicate key fails the whole load: COPY is one statement). ``tls``: the source's TLS.
    """
    target = _with_tls(_parse_url(url), tls, table)
    arrow = _as_arrow(data)
    keys = _keys(primary_key)
    missing = [k for k in keys if k not in arrow.column_names]
    if missing:
        raise ValueError(f"primary key column(s) {missing} not in the data")
    ident = _table_ident(table)
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(_sql_type(f.type)))
        for f in arrow.schema
    )
    create = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
        ident, columns, sql.SQL(", ").join(map(sql.Identifier, keys))
    )
    # CSV: unquoted empty = NULL, quoted "" = empty string, which is exactly how pyarrow writes
    # nulls and strings; the whole conversion runs in Arrow's C++ writer, not per row in Python.
    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        ident, sql.SQL(", ").join(map(sql.Identifier, arrow.column_names))
    )
    options = pa_csv.WriteOptions(include_header=False, batch_size=65_536)
    try:
        with (
            psycopg.connect(target.conninfo(), connect_timeout=CONNECT_TIMEOUT_S) as conn,
            conn.cursor() as cur,
        ):
            if replace:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
            cur.execute(create)
            with cur.copy(copy) as writer:
                for batch in arrow.to_batches(max_chunksize=65_536):
                    buffer = io.BytesIO()
                    pa_csv.write_csv(batch, buffer, options)
                    writer.write(buffer.getvalue())
    except psycopg.Error as exc:
        raise _source_error(target, table, "load failed", exc) from None
    return int(arrow.num_rows)


def upsert_rows(
    url: SecretStr | str,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    key: str | Sequence[str],
    *,
    touch: str | None = None,
    tls: TlsSettings | None = None,
) -> int:
    """Insert ``rows`` or update the rows with the same ``key``; returns the number of rows.

    Each row may carry a subset of the columns (all rows the same subset); only those are set.
    ``touch`` names a column set to the server's current UTC time (``now() AT TIME ZONE 'UTC'``,
    the same transaction timestamp for every row) on insert and update: how an application bumps
    ``updated_at``. Runs in one transaction.
    """
    if not rows:
        return 0
    target = _with_tls(_parse_url(url), tls, table)
    keys = _keys(key)
    names = list(rows[0])
    if any(list(row) != names for row in rows):
        raise ValueError("every row must have the same columns in the same order")
    missing = [k for k in keys if k not in names]
    if missing:
        raise ValueError(f"key column(s) {missing} missing from the rows")
    values: list[sql.Composable] = [sql.Placeholder() for _ in names]
    columns = [sql.Identifier(n) for n in names]
    if touch is not None and touch not in names:
        columns.append(sql.Identifier(touch))
        values.append(sql.SQL("(now() AT TIME ZONE 'UTC')"))
    elif touch is not None:
        values[names.index(touch)] = sql.SQL("(now() AT TIME ZONE 'UTC')")
    updates = [
        n for n in [*names, *([touch] if touch and touch not in names else [])] if n not in keys
    ]
    conflict = (
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in updates
            )
        )
        if updates
        else sql.SQL("DO NOTHING")
    )
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
        _table_ident(table),
        sql.SQL(", ").join(columns),
        sql.SQL(", ").join(values),
        sql.SQL(", ").join(map(sql.Identifier, keys)),
        conflict,
    )
    params = [[row[n] for n in names if n != touch] for row in rows]
    try:
        with (
            psycopg.connect(target.conninfo(), connect_timeout=CONNECT_TIMEOUT_S) as conn,
            conn.cursor() as cur,
        ):
            cur.executemany(statement, params)
    except psycopg.Error as exc:
        raise _source_error(target, table, "upsert failed", exc) from None
    return len(rows)
