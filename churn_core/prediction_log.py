"""The prediction log: every online and batch prediction, appended to one Delta table.

Serving replicas must not wait on storage, so :class:`PredictionLogWriter` only appends rows to
an in-memory buffer on the request's path; a background thread writes the buffer to Delta
(delta-rs, no Spark) every ``flush_interval_s`` or ``flush_rows`` rows. Closing the writer
writes what is left, so a replica that is shut down (scaled in, redeployed, Ctrl-C) loses
nothing. A write that fails (storage unreachable) goes to a spool folder on local disk as an
Arrow file, and the next successful flush replays it with an insert-if-absent ``MERGE`` on
``prediction_id``, so a replay that is interrupted and repeated adds no duplicates.

A process killed without warning (SIGKILL, out of memory) loses at most its last
``flush_interval_s`` of rows: making every prediction durable before answering would put a
disk write on every request.

The table's columns are derived from the feature contract: the prediction's metadata, then
one typed column per feature, so drift checks read features as columns, like gold.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from churn_core.contract import FeatureContract
from churn_core.logging import get_logger
from churn_core.settings import PredictionLogSettings, Settings
from churn_core.tables import Tables

log = get_logger(__name__)

# Columns every prediction has, before the contract's feature columns.
METADATA_FIELDS: tuple[pa.Field, ...] = (
    pa.field("prediction_id", pa.string(), nullable=False),
    pa.field("logged_at", pa.timestamp("us", tz="UTC"), nullable=False),
    # Partition column: drift and accuracy windows read whole days.
    pa.field("log_date", pa.date32(), nullable=False),
    pa.field("model_name", pa.string(), nullable=False),
    pa.field("model_version", pa.int64(), nullable=False),
    # predict | batch_predict | batch_scoring
    pa.field("endpoint", pa.string(), nullable=False),
    pa.field("customer_id", pa.string()),
    # request | redis | postgres | gold
    pa.field("features_from", pa.string(), nullable=False),
    # The date the features describe (the gold snapshot, or the day of the request): the
    # accuracy job labels a prediction with what happened in the horizon after it.
    pa.field("as_of", pa.date32(), nullable=False),
    pa.field("probability", pa.float64(), nullable=False),
    pa.field("churn", pa.bool_(), nullable=False),
    pa.field("threshold", pa.float64(), nullable=False),
)
METADATA_COLUMNS: tuple[str, ...] = tuple(f.name for f in METADATA_FIELDS)
PARTITION_COLUMNS = ["log_date"]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "numeric": pa.float64(),
    "categorical": pa.string(),
    "boolean": pa.bool_(),
}
_WRITE_ATTEMPTS = 3


def prediction_log_schema(contract: FeatureContract) -> pa.Schema:
    """The prediction log's Arrow schema for ``contract``: metadata, then one column per feature."""
    reserved = set(METADATA_COLUMNS)
    clash = [f.name for f in contract.features if f.name in reserved]
    if clash:
        raise ValueError(f"contract {contract.name}: features {clash} clash with log columns")
    features = [pa.field(f.name, _ARROW_TYPES[f.type]) for f in contract.features]
    return pa.schema([*METADATA_FIELDS, *features])


def new_prediction_id() -> str:
    """A fresh prediction id (returned to the caller, so feedback can name the prediction)."""
    return uuid.uuid4().hex


def prediction_row(
    *,
    prediction_id: str,
    logged_at: datetime,
    model_name: str,
    model_version: int,
    endpoint: str,
    customer_id: str | None,
    features_from: str,
    as_of: date | str | None,
    probability: float,
    churn: bool,
    threshold: float,
    features: Mapping[str, Any],
) -> dict[str, Any]:
    """One log row: the prediction's metadata and its features (missing features are null)."""
    when = logged_at.astimezone(UTC)
    day = date.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    return {
        **features,
        "prediction_id": prediction_id,
        "logged_at": when,
        "log_date": when.date(),
        "model_name": model_name,
        "model_version": model_version,
        "endpoint": endpoint,
        "customer_id": customer_id,
        "features_from": features_from,
        "as_of": day or when.date(),
        "probability": probability,
        "churn": churn,
        "threshold": threshold,
    }


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Log rows as an Arrow table of ``schema`` (values that do not fit the type are an error)."""
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


@dataclass(frozen=True)
class PredictionLogTarget:
    """Where a process's predictions go (plain data: shipped to Serve replicas by ``bind``)."""

    table_path: str
    spool_dir: str
    settings: PredictionLogSettings

    def open(self, contract: FeatureContract) -> PredictionLogWriter:
        """A writer for predictions of models trained on ``contract`` (not started)."""
        return PredictionLogWriter(
            self.table_path, prediction_log_schema(contract), self.settings, Path(self.spool_dir)
        )


def prediction_log_target(settings: Settings) -> PredictionLogTarget:
    """The prediction log of the configured data set."""
    monitoring = settings.monitoring
    return PredictionLogTarget(
        table_path=str(Tables(settings.dataset_lake).prediction_log),
        spool_dir=str(settings.resolve(monitoring.prediction_log.spool_dir)),
        settings=monitoring.prediction_log,
    )


@dataclass(frozen=True)
class FlushResult:
    """What one flush did."""

    written: int
    spooled: int
    replayed: int


class PredictionLogWriter:
    """Buffers prediction rows and appends them to the Delta prediction log in the background.

    Thread-safe: ``append`` may be called from any thread or coroutine and never blocks on I/O.
    """

    def __init__(
        self,
        table_path: Path | str,
        schema: pa.Schema,
        settings: PredictionLogSettings,
        spool_dir: Path,
    ) -> None:
        self.table_path = str(table_path)
        self.schema = schema
        self.settings = settings
        self.spool_dir = spool_dir
        self.stats: Counter[str] = Counter()
        self._rows: list[Mapping[str, Any]] = []
        self._lock = threading.Lock()
        # One flush at a time: the background thread and close() never write concurrently.
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def buffered(self) -> int:
        """Rows appended but not yet written or spooled."""
        with self._lock:
            return len(self._rows)

    def start(self) -> None:
        """Start the background writer (and write at interpreter exit what is still buffered)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Queue rows for the log; returns at once (the write happens in the background)."""
        if not rows:
            return
        with self._lock:
            self._rows.extend(rows)
            size = len(self._rows)
        self.stats["appended"] += len(rows)
        if size >= self.settings.flush_rows:
            self._wake.set()

    def flush(self) -> FlushResult:
        """Write everything buffered now (to Delta, or to the spool if Delta fails)."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            return self._write_rows(rows)

    def close(self) -> None:
        """Stop the background thread and write what is left; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.settings.close_timeout_s)
        result = self.flush()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        log.info(
            "prediction_log_closed",
            written=self.stats["written"],
            spooled=self.stats["spooled"],
            last_flush=result.written + result.spooled,
        )

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.flush()
            except Exception as error:  # the thread must survive anything
                log.error("prediction_log_flush_failed", error=str(error)[:300])

    def _write_rows(self, rows: list[Mapping[str, Any]]) -> FlushResult:
        replayed = 0
        if not rows:
            replayed = self._replay_spool()
            return FlushResult(0, 0, replayed)
        table = rows_to_table(rows, self.schema)
        try:
            self._append_with_retries(table)
        except Exception as error:
            self._spool(table, error)
            return FlushResult(0, table.num_rows, 0)
        self.stats["written"] += table.num_rows
        replayed = self._replay_spool()
        return FlushResult(table.num_rows, 0, replayed)

    def _append_with_retries(self, table: pa.Table) -> None:
        from deltalake import write_deltalake

        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                # schema_mode="merge": a later contract that adds a feature adds a column.
                write_deltalake(
                    self.table_path,
                    table,
                    mode="append",
                    partition_by=PARTITION_COLUMNS,
                    schema_mode="merge",
                )
                return
            except Exception:
                # Two replicas creating the table at once: one commit loses and retries.
                self.stats["write_retries"] += 1
                if attempt == _WRITE_ATTEMPTS:
                    raise
                time.sleep(0.1 * attempt)

    def _spool(self, table: pa.Table, error: Exception) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        final = self.spool_dir / f"{uuid.uuid4().hex}.arrow"
        partial = final.with_suffix(".partial")
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        partial.rename(final)
        self.stats["spooled"] += table.num_rows
        log.warning(
            "prediction_log_spooled",
            rows=table.num_rows,
            spool=str(final),
            error=" ".join(str(error).split())[:300],
        )

    def _replay_spool(self) -> int:
        """Write spooled batches into the table, each exactly once (by prediction_id)."""
        if not self.spool_dir.is_dir():
            return 0
        replayed = 0
        for path in sorted(self.spool_dir.glob("*.arrow")):
            claimed = path.with_suffix(f".claimed-{os.getpid()}")
            try:
                path.rename(claimed)  # another replica sharing the folder may take it first
            except FileNotFoundError:
                continue
            try:
                table = _read_spool_file(claimed)
                self._merge_new(table)
            except Exception as error:
                claimed.rename(path)
                log.warning("prediction_log_replay_failed", spool=str(path), error=str(error))
                break
            claimed.unlink()
            replayed += table.num_rows
            self.stats["replayed"] += table.num_rows
        return replayed

    def _merge_new(self, table: pa.Table) -> None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            target = DeltaTable(self.table_path)
        except TableNotFoundError:
            self._append_with_retries(table)
            return
        (
            target.merge(
                source=table,
                predicate="t.prediction_id = s.prediction_id AND t.log_date = s.log_date",
                source_alias="s",
                target_alias="t",
                merge_schema=True,
            )
            .when_not_matched_insert_all()
            .execute()
        )


def _read_spool_file(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_file(source).read_all()


def query_delta(tables: Mapping[str, Path | str], sql: str) -> pa.Table:
    """Run ``sql`` over Delta tables registered under the given names (DataFusion, no Spark).

    Absent tables are an error. Preferred over ``DeltaTable.to_pyarrow_dataset()``: a dataset
    read through delta-rs's Python file system can abort the interpreter at exit when Arrow's
    threads release it during finalisation.
    """
    from deltalake import DeltaTable, QueryBuilder

    builder = QueryBuilder()
    for name, path in tables.items():
        builder = builder.register(name, DeltaTable(str(path)))
    # delta-rs answers with arro3 objects; the rest of the code speaks pyarrow.
    return pa.table(builder.execute(sql).read_all())


def table_exists(path: Path | str) -> bool:
    """Whether a Delta table exists at ``path``."""
    from deltalake import DeltaTable

    return bool(DeltaTable.is_deltatable(str(path)))


def _timestamp_literal(moment: datetime) -> str:
    return f"TIMESTAMP '{moment.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')}Z'"


def read_prediction_window(
    table_path: Path | str,
    since: datetime,
    until: datetime | None = None,
    *,
    max_rows: int | None = None,
) -> pa.Table:
    """Logged predictions with ``since <= logged_at < until``, the newest ``max_rows`` of them.

    Reads only the days in the window (``log_date`` partitions). An absent table reads as an
    empty window.
    """
    if not table_exists(table_path):
        return pa.table({})
    end = until or datetime.now(UTC)
    first, last = since.astimezone(UTC).date(), end.astimezone(UTC).date()
    sql = (
        "SELECT * FROM log"
        f" WHERE log_date >= DATE '{first.isoformat()}' AND log_date <= DATE '{last.isoformat()}'"
        f" AND logged_at >= {_timestamp_literal(since)} AND logged_at < {_timestamp_literal(end)}"
        " ORDER BY logged_at DESC"
    )
    if max_rows is not None:
        sql += f" LIMIT {int(max_rows)}"
    return query_delta({"log": table_path}, sql)


def window_start(hours: float, now: datetime | None = None) -> datetime:
    """The start of a window of the last ``hours`` hours."""
    return (now or datetime.now(UTC)) - timedelta(hours=hours)
