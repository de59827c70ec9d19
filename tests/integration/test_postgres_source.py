"""The PostgreSQL source against a real server, on embedded Sail and on a JVM Spark Connect server.

Both engines must return the same text for every value: the expected rows below are written by
hand from the data, not computed by either engine.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from churn_core.settings import PostgresSourceSettings
from pipelines.sources.postgres import (
    APPLICATION_NAME,
    PostgresSourceError,
    load_table,
    postgres_errors,
    read_postgres_batch,
    upsert_rows,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# Trust auth ignores it, but it is sent: it must never show up in an error.
PASSWORD = "s3cr:t/p@ss'w0rd"
COLUMNS = [
    "customer_id",
    "name",
    "signup_date",
    "autopay",
    "monthly_fee",
    "score",
    "age",
    "cancelled_at",
    "last_login",
    "updated_at",
]
CET = timezone(timedelta(hours=2))


def customers() -> pa.Table:
    """Five customers: quotes, empty and null strings, NULLs everywhere, fractions of seconds."""
    return pa.table(
        {
            "customer_id": ["C001", "C002", "C003", "C004", "C005"],
            "name": ["O'Brien", 'say "hi"', "", None, "Zoë"],
            "signup_date": [
                date(2023, 1, 15),
                date(2023, 2, 28),
                None,
                date(2024, 2, 29),
                date(2020, 12, 31),
            ],
            "autopay": [True, False, None, True, False],
            "monthly_fee": pa.array(
                [
                    Decimal("12.50"),
                    Decimal("1234567890.99"),
                    None,
                    Decimal("0.00"),
                    Decimal("99.90"),
                ],
                pa.decimal128(12, 2),
            ),
            "score": [0.1, 1e20, None, -2.5, 3.0],
            "age": pa.array([34, None, 90, 18, 45], pa.int64()),
            "cancelled_at": pa.array(
                [
                    None,
                    datetime(2024, 2, 1, 8, 30, 0, 500000),
                    None,
                    datetime(2024, 3, 5, 23, 59, 59),
                    None,
                ],
                pa.timestamp("us"),
            ),
            "last_login": pa.array(
                [
                    datetime(2024, 3, 1, 12, 0, tzinfo=CET),
                    None,
                    None,
                    None,
                    datetime(2024, 1, 1, tzinfo=UTC),
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "updated_at": pa.array(
                [
                    datetime(2024, 3, 1, 10, 0, 0),
                    datetime(2024, 3, 1, 10, 0, 0, 500000),
                    datetime(2024, 3, 2, 0, 0, 0, 123456),
                    datetime(2024, 3, 3, 12, 0, 0),
                    datetime(2024, 3, 3, 12, 0, 0),  # two rows at the maximum watermark
                ],
                pa.timestamp("us"),
            ),
        }
    )


Row = tuple[str | None, ...]

# Written by hand: what PostgreSQL holds, in the source's canonical text.
EXPECTED: dict[str, Row] = {
    "C001": ("C001", "O'Brien", "2023-01-15", "true", "12.50", "0.1", "34", None, "2024-03-01 10:00:00", "2024-03-01 10:00:00"),
    "C002": ("C002", 'say "hi"', "2023-02-28", "false", "1234567890.99", "1e+20", None, "2024-02-01 08:30:00.5", None, "2024-03-01 10:00:00.5"),
    "C003": ("C003", "", None, None, None, None, "90", None, None, "2024-03-02 00:00:00.123456"),
    "C004": ("C004", None, "2024-02-29", "true", "0.00", "-2.5", "18", "2024-03-05 23:59:59", None, "2024-03-03 12:00:00"),
    "C005": ("C005", "Zoë", "2020-12-31", "false", "99.90", "3", "45", None, "2024-01-01 00:00:00", "2024-03-03 12:00:00"),
}  # fmt: skip


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that is bound but never listens: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def with_password(url: str) -> str:
    """``url`` with :data:`PASSWORD` (percent-encoded) added to its user."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{quote(PASSWORD, safe='')}@{host}"


def settings(url: str, table: str, **updates: Any) -> PostgresSourceSettings:
    return PostgresSourceSettings(url=with_password(url), table=table, **updates)


def rows(
    spark: SparkSession, source: PostgresSourceSettings, since: str | None = None
) -> dict[str, Row]:
    frame = read_postgres_batch(spark, source, COLUMNS, since)
    assert [f.dataType.simpleString() for f in frame.schema.fields] == ["string"] * len(COLUMNS)
    assert frame.columns == COLUMNS
    with postgres_errors(source):
        collected = frame.collect()
    result = {r["customer_id"]: tuple(r) for r in collected}
    assert len(result) == len(collected), "a row came twice"
    return result


def assert_clean_error(error: BaseException, where: str, table: str) -> None:
    """One line, names the server and table, never the password in any spelling."""
    message = str(error)
    assert "\n" not in message, message
    assert where in message and table in message, message
    for spelling in (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), "s3cr"):
        assert spelling not in message, message
        assert spelling not in repr(error.__cause__), repr(error.__cause__)


@pytest.fixture(scope="module")
def db(postgres_url: str) -> str:
    """The session database, holding ``customers``."""
    load_table(postgres_url, "customers", customers(), "customer_id", replace=True)
    return postgres_url


@dataclass(frozen=True)
class Engine:
    name: str
    spark: SparkSession


@pytest.fixture(params=["sail", "jvm"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each test taking ``engine`` runs on embedded Sail and on JVM Spark Connect."""
    fixture = "spark" if request.param == "sail" else "jvm_spark"
    return Engine(request.param, request.getfixturevalue(fixture))


def test_load_table_maps_arrow_types_and_sets_the_key(db: str) -> None:
    with psycopg.connect(db) as conn:
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, CASE WHEN data_type = 'numeric' THEN"
                " format('numeric(%s,%s)', numeric_precision, numeric_scale) ELSE data_type END"
                " FROM information_schema.columns WHERE table_name = 'customers'"
            ).fetchall()
        )
        key = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
            " WHERE i.indrelid = 'customers'::regclass AND i.indisprimary"
        ).fetchall()
        count = conn.execute("SELECT count(*) FROM customers").fetchone()
    assert types == {
        "customer_id": "text",
        "name": "text",
        "signup_date": "date",
        "autopay": "boolean",
        "monthly_fee": "numeric(12,2)",
        "score": "double precision",
        "age": "bigint",
        "cancelled_at": "timestamp without time zone",
        "last_login": "timestamp with time zone",
        "updated_at": "timestamp without time zone",
    }
    assert key == [("customer_id",)]
    assert count == (5,)


def test_load_table_takes_pandas_and_appends(db: str) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": ["a", "b"],
            "at": pd.to_datetime(
                ["2024-01-01 00:00:00.123456789", "2024-01-02 00:00:00.000000000"]
            ),
            "n": pd.array([1, None], dtype="Int64"),
            "x": [0.5, float("nan")],  # NaN is a missing value in pandas: NULL
            "flag": [True, False],
            "label": pd.Categorical(["u", "v"]),
        }
    )
    assert load_table(db, "from_pandas", frame, ["id"], replace=True) == 2
    assert load_table(db, "from_pandas", frame.assign(id=["c", "d"]), "id") == 2  # appended
    with pytest.raises(PostgresSourceError, match=r"load failed: .*duplicate key"):
        load_table(with_password(db), "from_pandas", frame, "id")
    with psycopg.connect(db) as conn:
        got = conn.execute(
            "SELECT id, at::text, n, x, flag, label FROM from_pandas ORDER BY id"
        ).fetchall()
    assert got[:2] == [
        ("a", "2024-01-01 00:00:00.123456", 1, 0.5, True, "u"),  # nanoseconds truncated
        ("b", "2024-01-02 00:00:00", None, None, False, "v"),
    ]
    assert len(got) == 4


def test_full_read_is_canonical_text(engine: Engine, db: str) -> None:
    assert rows(engine.spark, settings(db, "customers")) == EXPECTED


def test_sail_and_jvm_return_identical_rows_in_one_process(
    spark: SparkSession, jvm_spark: SparkSession, db: str
) -> None:
    # Both sessions alive at once, queried alternately: neither hijacks the other.
    for partitions in (1, 3):
        source = settings(db, "customers", num_partitions=partitions)
        sail_rows = rows(spark, source)
        jvm_rows = rows(jvm_spark, source)
        assert sail_rows == jvm_rows == EXPECTED
    versions = {s.sql("SELECT version() AS v").collect()[0]["v"] for s in (spark, jvm_spark)}
    assert len(versions) == 2  # really two engines (Sail answers with its own version)


def _count_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield pa.RecordBatch.from_pylist([{"rows": sum(b.num_rows for b in batches)}])


def test_partitioned_read_splits_by_key(engine: Engine, db: str) -> None:
    source = settings(db, "customers", num_partitions=3)
    frame = read_postgres_batch(engine.spark, source, COLUMNS, None)
    # One output row per Spark partition (Sail has no spark_partition_id() in aggregations).
    per_partition = [r["rows"] for r in frame.mapInArrow(_count_rows, "rows long").collect()]
    assert sum(per_partition) == len(EXPECTED)
    assert len([n for n in per_partition if n]) > 1  # 5 keys over 3 hash buckets


@pytest.mark.parametrize(
    ("since", "expected_ids"),
    [
        ("2024-03-01 10:00:00.5", ["C002", "C003", "C004", "C005"]),  # the boundary row is kept
        ("2024-03-01T10:00:00.500000", ["C002", "C003", "C004", "C005"]),
        ("2024-03-01 12:00:00.5+02:00", ["C002", "C003", "C004", "C005"]),  # converted to UTC
        ("2024-03-01 10:00:00.500001", ["C003", "C004", "C005"]),
        ("2024-03-03 12:00:00", ["C004", "C005"]),  # both rows at the maximum
        ("2024-03-03", ["C004", "C005"]),
        ("2024-03-03 12:00:00.000001", []),
        ("1900-01-01", ["C001", "C002", "C003", "C004", "C005"]),
    ],
)
def test_since_is_inclusive(engine: Engine, db: str, since: str, expected_ids: list[str]) -> None:
    got = rows(engine.spark, settings(db, "customers"), since)
    assert got == {i: EXPECTED[i] for i in expected_ids}


@pytest.mark.parametrize(
    ("watermark", "since", "expected_ids"),
    [
        # timestamptz: since is UTC; C001 logged in at 12:00+02:00 = 10:00 UTC.
        ("last_login", "2024-01-01 00:00:00", ["C001", "C005"]),
        ("last_login", "2024-03-01 10:00:00", ["C001"]),
        ("last_login", "2024-03-01 10:00:00.000001", []),
        # date: compared as midnight of that day.
        ("signup_date", "2023-02-28", ["C002", "C004"]),
        ("signup_date", "2023-02-27 23:59:59", ["C002", "C004"]),
        ("signup_date", "2023-02-28 00:00:01", ["C004"]),
    ],
)
def test_since_on_timestamptz_and_date_watermarks(
    engine: Engine, db: str, watermark: str, since: str, expected_ids: list[str]
) -> None:
    source = settings(db, "customers", watermark_column=watermark)
    assert rows(engine.spark, source, since) == {i: EXPECTED[i] for i in expected_ids}


def test_watermark_must_be_a_time_column(spark: SparkSession, db: str) -> None:
    source = settings(db, "customers", watermark_column="age")
    with pytest.raises(PostgresSourceError, match="watermark column 'age' is int8") as caught:
        read_postgres_batch(spark, source, COLUMNS, "2024-01-01")
    assert_clean_error(caught.value, "127.0.0.1:5432/", "customers")
    assert len(rows(spark, source)) == 5  # a full read needs no comparison


def test_incremental_read_returns_changes_and_boundary_rows(engine: Engine, db: str) -> None:
    table = f"customers_incr_{engine.name}"
    load_table(db, table, customers(), "customer_id", replace=True)
    source = settings(db, table)
    first = rows(engine.spark, source)
    assert first == EXPECTED
    watermark = max(r[-1] for r in first.values() if r[-1] is not None)
    assert watermark == "2024-03-03 12:00:00"

    upsert_rows(
        with_password(db),
        table,
        [
            {"customer_id": "C001", "name": "O'Brien-Smith", "autopay": False},
            {"customer_id": "C003", "name": "Back", "autopay": True},
            {"customer_id": "C006", "name": "New", "autopay": True},
        ],
        "customer_id",
        touch="updated_at",
    )
    second = rows(engine.spark, source, since=watermark)

    assert set(second) == {"C001", "C003", "C006", "C004", "C005"}
    assert second["C004"] == EXPECTED["C004"] and second["C005"] == EXPECTED["C005"]  # boundary
    assert second["C001"][1:4] == ("O'Brien-Smith", "2023-01-15", "false")  # other columns kept
    assert second["C003"][1] == "Back" and second["C006"][1:4] == ("New", None, "true")
    for changed in ("C001", "C003", "C006"):
        bumped = second[changed][-1]
        assert bumped is not None and bumped > watermark
        datetime.strptime(bumped[:19], "%Y-%m-%d %H:%M:%S")  # canonical shape

    # The caller's next watermark is the new maximum: reading from it returns only its rows.
    newest = max(r[-1] for r in second.values() if r[-1] is not None)
    third = rows(engine.spark, source, since=newest)
    assert set(third) == {i for i, r in second.items() if r[-1] == newest}


@pytest.fixture(scope="module")
def slow_view(db: str) -> str:
    """A view over ``customers`` that takes 20 ms per row, so a read is provably in flight."""
    big = pa.concat_tables([customers()] * 30)  # 150 rows: ~3 s per read
    ids = [f"S{i:04d}" for i in range(big.num_rows)]
    big = big.set_column(0, "customer_id", pa.array(ids))
    load_table(db, "customers_big", big, "customer_id", replace=True)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE VIEW customers_slow AS"
            " SELECT * FROM customers_big WHERE pg_sleep(0.02) IS NOT NULL"
        )
    return "customers_slow"


def _terminate_when_sleeping(db: str, done: threading.Event, killed: list[int]) -> None:
    """Terminate the source's backend once it is executing the data query (pg_sleep)."""
    database = db.rsplit("/", 1)[1]
    deadline = time.monotonic() + 60
    with psycopg.connect(db, autocommit=True) as conn:
        while not done.is_set() and time.monotonic() < deadline:
            found = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
                " AND wait_event = 'PgSleep'",
                [database, APPLICATION_NAME],
            ).fetchall()
            if found:
                # Let some rows stream first, then cut the connection.
                time.sleep(0.3)
                conn.execute("SELECT pg_terminate_backend(%s)", [found[0][0]])
                killed.append(found[0][0])
                return
            time.sleep(0.02)


def test_connection_terminated_mid_read_fails_clearly_then_retry_reads_all(
    engine: Engine, db: str, slow_view: str
) -> None:
    source = settings(db, slow_view)
    frame = read_postgres_batch(engine.spark, source, COLUMNS, None)
    done, killed = threading.Event(), list[int]()
    killer = threading.Thread(target=_terminate_when_sleeping, args=(db, done, killed))
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(PostgresSourceError) as caught, postgres_errors(source):
            frame.collect()
    finally:
        done.set()
        killer.join()
    assert killed, "the read finished before its connection could be cut"
    assert time.monotonic() - started < 60
    assert_clean_error(caught.value, "127.0.0.1:5432/", slow_view)
    assert "read failed" in str(caught.value)

    again = rows(engine.spark, source)
    assert len(again) == 150


def test_database_refusing_connections_fails_clearly_then_recovers(engine: Engine, db: str) -> None:
    database = db.rsplit("/", 1)[1]
    admin = db.rsplit("/", 1)[0] + "/postgres"
    source = settings(db, "customers")
    with psycopg.connect(admin, autocommit=True) as conn:
        alter = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}")
        conn.execute(alter.format(sql.Identifier(database), sql.SQL("false")))
        try:
            started = time.monotonic()
            with pytest.raises(PostgresSourceError) as caught:
                read_postgres_batch(engine.spark, source, COLUMNS, None)
            assert time.monotonic() - started < 15
        finally:
            conn.execute(alter.format(sql.Identifier(database), sql.SQL("true")))
    assert_clean_error(caught.value, f"127.0.0.1:5432/{database}", "customers")
    assert "not currently accepting connections" in str(caught.value)
    assert rows(engine.spark, source) == EXPECTED


def test_refusal_during_the_action_fails_within_a_bound(engine: Engine, db: str) -> None:
    # The table was inspected while the server still accepted connections; the refusal hits
    # the engine's own connection. JVM Spark fails at once; Sail's connectorx waits for its
    # connection pool's 30 s timeout (not configurable through the URL) before failing.
    database = db.rsplit("/", 1)[1]
    admin = db.rsplit("/", 1)[0] + "/postgres"
    source = settings(db, "customers")
    frame = read_postgres_batch(engine.spark, source, COLUMNS, None)
    with psycopg.connect(admin, autocommit=True) as conn:
        alter = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}")
        conn.execute(alter.format(sql.Identifier(database), sql.SQL("false")))
        try:
            started = time.monotonic()
            with pytest.raises(PostgresSourceError) as caught, postgres_errors(source):
                frame.collect()
            assert time.monotonic() - started < (10 if engine.name == "jvm" else 60)
        finally:
            conn.execute(alter.format(sql.Identifier(database), sql.SQL("true")))
    assert_clean_error(caught.value, f"127.0.0.1:5432/{database}", "customers")
    with postgres_errors(source):
        assert len(frame.collect()) == len(EXPECTED)  # the same DataFrame, once allowed again


def test_unreachable_server_is_a_one_line_error_without_password(spark: SparkSession) -> None:
    with refusing_port() as port:
        url = f"postgresql://postgres@127.0.0.1:{port}/nowhere"
        source = settings(url, "customers")
        started = time.monotonic()
        with pytest.raises(PostgresSourceError) as caught:
            read_postgres_batch(spark, source, COLUMNS, None)
    assert time.monotonic() - started < 15
    assert_clean_error(caught.value, f"127.0.0.1:{port}/nowhere", "customers")
    assert "cannot connect" in str(caught.value)
    assert PASSWORD not in repr(source)  # SecretStr


@pytest.mark.parametrize(
    ("table", "columns", "fragment"),
    [
        ("no_such_table", COLUMNS, "table does not exist"),
        ("nope.customers", COLUMNS, "table does not exist"),
        ("customers", [*COLUMNS, "no_such_column"], "missing column(s) ['no_such_column']"),
        ("customers", ["Customer_ID"], "missing column(s) ['Customer_ID']"),  # exact names
    ],
)
def test_missing_table_or_column_is_a_clear_error(
    spark: SparkSession, db: str, table: str, columns: Sequence[str], fragment: str
) -> None:
    with pytest.raises(PostgresSourceError) as caught:
        read_postgres_batch(spark, settings(db, table), columns, None)
    assert fragment in str(caught.value)
    assert_clean_error(caught.value, "127.0.0.1:5432/", table)


@pytest.mark.parametrize(
    "since",
    [
        "2024-01-01'; DROP TABLE customers; --",
        "2024-01-01 00:00:00' OR '1'='1",
        "now()",
        "",
    ],
)
def test_since_must_be_a_timestamp(spark: SparkSession, db: str, since: str) -> None:
    with pytest.raises(ValueError, match="since must be a timestamp"):
        read_postgres_batch(spark, settings(db, "customers"), COLUMNS, since)
    assert len(rows(spark, settings(db, "customers"))) == 5


def test_odd_identifiers_are_quoted(engine: Engine, db: str) -> None:
    # Quotes, capitals, spaces and a semicolon in table and column names.
    table = f'Odd "T"; {engine.name}'
    data = pa.table(
        {
            'Key "K"': ["a", "b"],
            "Mixed Case; x": ["1", None],
            "Updated At": pa.array(
                [datetime(2024, 1, 1), datetime(2024, 1, 2)], pa.timestamp("us")
            ),
        }
    )
    load_table(db, table, data, 'Key "K"', replace=True)
    source = settings(db, table, watermark_column="Updated At")
    frame = read_postgres_batch(engine.spark, source, list(data.column_names), "2024-01-02")
    assert [tuple(r) for r in frame.collect()] == [("b", None, "2024-01-02 00:00:00")]


def test_table_without_primary_key_is_read_as_one_partition(engine: Engine, db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE VIEW customers_view AS SELECT * FROM customers")
    assert rows(engine.spark, settings(db, "customers_view", num_partitions=4)) == EXPECTED


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_backends(db: str) -> Iterator[None]:
    """After the module, no source connection is left open (readers close what they open)."""
    yield
    database = db.rsplit("/", 1)[1]
    with psycopg.connect(db, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while True:
            (left,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                [database, APPLICATION_NAME],
            ).fetchone() or (0,)
            if left == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert left == 0, f"{left} source connection(s) still open"
