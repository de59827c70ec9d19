"""Online store: each customer's latest gold features, materialised into Redis and PostgreSQL.

Serving looks a customer up by id in Redis first and falls back to PostgreSQL
(``serve_apps/online_store.py``); both hold the same thing, written here from one read of gold.
The gold table is read through Spark, reduced to the latest snapshot per customer (group-by max,
then a join: plain SQL that Sail and JVM Spark both run), and collected with ``toArrow()`` in
buckets of customers, so the driver holds one bucket at a time however large gold is.

Redis values never expire: the next materialisation overwrites them. PostgreSQL rows are
upserted on (contract, customer_id) from a COPY-loaded temporary table, in one transaction, so a
re-run leaves the same rows and a failed run leaves the previous ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import redis
from psycopg import sql

from churn_core.contract import FeatureContract
from churn_core.logging import get_logger
from churn_core.online_features import (
    create_table_sql,
    describe_error,
    encode_features,
    feature_key,
    json_scalar,
    table_identifier,
)
from churn_core.settings import OnlineStoreSettings, Settings, TlsSettings
from churn_core.tables import Tables
from churn_core.tls import postgres_params, redis_options
from pipelines.delta import table_exists

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "OnlineStoreError",
    "OnlineStoreSummary",
    "latest_features",
    "materialize_online_features",
]

log = get_logger(__name__)

# Customers per toArrow() collect: bounds the driver's memory, each bucket re-scans gold.
CHUNK_CUSTOMERS = 200_000
# Commands per Redis round trip: large enough to amortise latency, small enough not to
# stall the server (it answers other clients between pipelines).
REDIS_PIPELINE_COMMANDS = 5_000
CONNECT_TIMEOUT_S = 10
_STAGE = "_online_features_stage"

Progress = Callable[[int, int], None]


class OnlineStoreError(RuntimeError):
    """Materialisation failed; the message is one line and never carries a password."""


@dataclass(frozen=True)
class OnlineStoreSummary:
    """What one materialisation wrote."""

    customers: int
    snapshot_date: str | None
    redis_written: int
    postgres_written: int
    seconds: float


@dataclass(frozen=True)
class _Record:
    """One customer's latest features, already JSON scalars."""

    customer_id: str
    snapshot_date: str
    features: dict[str, Any]


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


class _RedisWriter:
    """``SET key value`` for every record, pipelined, no TTL."""

    def __init__(
        self, url: str, prefix: str, contract_name: str, tls: TlsSettings | None = None
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._contract = contract_name
        url, tls_options = redis_options(url, tls or TlsSettings(), "serve.online_store.redis_tls")
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=CONNECT_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            **tls_options,
        )

    def write(self, records: Sequence[_Record]) -> int:
        written = 0
        try:
            for start in range(0, len(records), REDIS_PIPELINE_COMMANDS):
                # No MULTI: atomicity across customers buys nothing and blocks the server.
                with self.client.pipeline(transaction=False) as pipe:
                    for record in records[start : start + REDIS_PIPELINE_COMMANDS]:
                        key = feature_key(self._prefix, self._contract, record.customer_id)
                        pipe.set(key, encode_features(record.features, record.snapshot_date))
                    written += sum(1 for ok in pipe.execute() if ok)
        except redis.RedisError as error:
            raise OnlineStoreError(
                f"Redis write failed: {describe_error(error, self._url)}"
            ) from None
        return written


class _PostgresWriter:
    """COPY into a temporary table, then upsert; committed once, when every chunk is in."""

    def __init__(
        self, url: str, table: str, contract_name: str, tls: TlsSettings | None = None
    ) -> None:
        self._url = url
        self._contract = contract_name
        self._upsert = sql.SQL(
            "INSERT INTO {table} (contract, customer_id, snapshot_date, features, updated_at) "
            "SELECT %s, customer_id, snapshot_date, features, now() FROM {stage} "
            "ON CONFLICT (contract, customer_id) DO UPDATE SET "
            "snapshot_date = EXCLUDED.snapshot_date, features = EXCLUDED.features, "
            "updated_at = EXCLUDED.updated_at"
        ).format(table=table_identifier(table), stage=sql.Identifier(_STAGE))
        self._copy = sql.SQL("COPY {} (customer_id, snapshot_date, features) FROM STDIN").format(
            sql.Identifier(_STAGE)
        )
        self._truncate = sql.SQL("TRUNCATE {}").format(sql.Identifier(_STAGE))
        tls_params = postgres_params(tls or TlsSettings(), "serve.online_store.postgres_tls")
        try:
            self.conn: psycopg.Connection[Any] = psycopg.connect(
                url,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="churn-online-store",
                **tls_params,
            )
        except psycopg.Error as error:
            raise self._error("connect failed", error) from None
        try:
            self.conn.execute(create_table_sql(table))
            self.conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} (customer_id text, snapshot_date date, features jsonb) "
                    "ON COMMIT DROP"
                ).format(sql.Identifier(_STAGE))
            )
        except psycopg.Error as error:
            self.conn.close()
            raise self._error("table setup failed", error) from None

    def _error(self, what: str, error: BaseException) -> OnlineStoreError:
        return OnlineStoreError(f"PostgreSQL {what}: {describe_error(error, self._url)}")

    def write(self, records: Sequence[_Record]) -> int:
        try:
            with self.conn.cursor() as cur:
                with cur.copy(self._copy) as copy:
                    for record in records:
                        copy.write_row(
                            (
                                record.customer_id,
                                record.snapshot_date,
                                orjson.dumps(record.features).decode(),
                            )
                        )
                cur.execute(self._upsert, [self._contract])
                upserted = cur.rowcount
                # The stage is per chunk: the next chunk's COPY must not re-upsert these rows.
                cur.execute(self._truncate)
        except psycopg.Error as error:
            raise self._error("write failed", error) from None
        return upserted

    def commit(self) -> None:
        try:
            self.conn.commit()
        except psycopg.Error as error:
            raise self._error("commit failed", error) from None


def latest_features(contract: FeatureContract, gold: DataFrame) -> DataFrame:
    """Each customer's row of their latest snapshot: key, snapshot column (if any), features.

    A group-by max joined back, rather than a window: both Sail and JVM Spark plan it as two
    aggregations over one scan, and it needs no ``row_number`` tie-breaking.
    """
    from pyspark.sql import functions as F

    key, snapshot = contract.entity_key, contract.snapshot_column
    frame = gold.select(key, *([snapshot] if snapshot else []), *contract.feature_names)
    if not snapshot:
        return frame
    latest = frame.groupBy(key).agg(F.max(snapshot).alias(snapshot))
    return frame.join(latest, [key, snapshot])


def _buckets(frame: DataFrame, key: str, customers: int, chunk: int) -> Iterator[DataFrame]:
    """``frame`` split into buckets of about ``chunk`` customers by a hash of the key."""
    from pyspark.sql import functions as F

    count = max(1, math.ceil(customers / chunk))
    if count == 1:
        yield frame
        return
    bucket = F.pmod(F.hash(F.col(key)), F.lit(count))
    for index in range(count):
        yield frame.filter(bucket == index)


def _records(contract: FeatureContract, table: pa.Table, default_snapshot: str) -> list[_Record]:
    """The Arrow chunk as records, features in contract order (nulls stay null)."""
    key, snapshot = contract.entity_key, contract.snapshot_column
    names = contract.feature_names
    records = []
    for row in table.to_pylist():
        when = row[snapshot].isoformat() if snapshot and row[snapshot] else default_snapshot
        records.append(
            _Record(
                customer_id=str(row[key]),
                snapshot_date=when,
                features={name: json_scalar(row[name]) for name in names},
            )
        )
    return records


def _check_targets(store: OnlineStoreSettings) -> None:
    if store.redis_url is None and store.postgres_url is None:
        raise OnlineStoreError(
            "no online store target: set serve.online_store.redis_url and/or postgres_url "
            "(e.g. CHURN_SERVE__ONLINE_STORE__REDIS_URL=redis://127.0.0.1:6379/0)"
        )


def _customer_count(contract: FeatureContract, gold: DataFrame) -> int:
    from pyspark.sql import functions as F

    row = gold.agg(F.count_distinct(contract.entity_key).alias("n")).first()
    return int(row["n"]) if row else 0


def materialize_online_features(
    spark: SparkSession,
    settings: Settings,
    contract: FeatureContract,
    tables: Tables,
    *,
    chunk_customers: int = CHUNK_CUSTOMERS,
    progress: Progress | None = None,
) -> OnlineStoreSummary:
    """Write each customer's latest gold features to the configured Redis and/or PostgreSQL.

    A target whose URL is unset is skipped; with neither set this raises OnlineStoreError.
    ``progress(done, total)`` is called after each chunk with customers written so far.
    A contract without snapshots stamps its rows with today's (UTC) date.
    """
    started = time.perf_counter()
    store = settings.serve.online_store
    _check_targets(store)
    source = tables.gold_features
    if not table_exists(source):
        raise OnlineStoreError(f"no gold table at {source}: run `churn features` first")
    gold = spark.read.format("delta").load(str(source))
    customers = _customer_count(contract, gold)
    latest = latest_features(contract, gold)
    today = datetime.now(UTC).date().isoformat()
    redis_url, postgres_url = _secret(store.redis_url), _secret(store.postgres_url)
    done = redis_written = postgres_written = 0
    newest: str | None = None
    with ExitStack() as stack:
        redis_writer = postgres_writer = None
        if redis_url:
            redis_writer = _RedisWriter(redis_url, store.key_prefix, contract.name, store.redis_tls)
            stack.callback(redis_writer.client.close)
        if postgres_url:
            postgres_writer = _PostgresWriter(
                postgres_url, store.table, contract.name, store.postgres_tls
            )
            stack.enter_context(postgres_writer.conn)
        for frame in _buckets(latest, contract.entity_key, customers, chunk_customers):
            records = _records(contract, frame.toArrow(), today)
            if postgres_writer:
                postgres_written += postgres_writer.write(records)
            if redis_writer:
                redis_written += redis_writer.write(records)
            done += len(records)
            if records:
                chunk_newest = max(r.snapshot_date for r in records)
                newest = chunk_newest if newest is None else max(newest, chunk_newest)
            if progress:
                progress(done, customers)
        if postgres_writer:
            postgres_writer.commit()
    summary = OnlineStoreSummary(
        customers=done,
        snapshot_date=newest,
        redis_written=redis_written,
        postgres_written=postgres_written,
        seconds=time.perf_counter() - started,
    )
    log.info(
        "online store materialised",
        contract=contract.name,
        customers=summary.customers,
        snapshot_date=summary.snapshot_date,
        redis_written=summary.redis_written,
        postgres_written=summary.postgres_written,
        seconds=round(summary.seconds, 2),
    )
    return summary
