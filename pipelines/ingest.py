"""Bronze: append each source's new records to a Delta table, exactly once, as they arrived.

Every declared column is kept as text so nothing is lost to a failed type conversion here;
typing, and quarantining what does not type, is the silver job's work. Each bronze row carries
ingestion metadata: ``_raw`` (the record as received), ``_source`` (system and object),
``_partition``/``_offset`` (its position there, where the source has one), ``_record_id`` (its
identity), ``_batch_id`` and ``_ingested_at``.

Exactly once: a batch is read from the source once into a staging Delta table, then merged into
bronze with an insert-only ``MERGE`` on ``_record_id``. The position to resume from (Kafka
offsets, the PostgreSQL watermark) is read back from bronze itself, so it is committed in the
same Delta commit as the rows: a job killed at any point resumes where the last commit ended,
and re-reading a record that is already in bronze adds nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from churn_core.contract import FeatureContract, SourceSpec
from churn_core.faults import failpoint
from churn_core.logging import get_logger
from churn_core.settings import (
    IngestSettings,
    KafkaSourceSettings,
    PostgresSourceSettings,
    RestSourceSettings,
    Settings,
    SourceSettings,
)
from churn_core.tables import Tables
from churn_core.tls import TlsConfigError, check_tls_files
from pipelines.delta import table_exists, table_rows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = get_logger(__name__)

BRONZE_METADATA = ["_raw", "_source", "_partition", "_offset", "_record_id", "_batch_id"]


class IngestError(RuntimeError):
    """A source could not be ingested after every attempt; nothing of the batch was committed."""


@dataclass(frozen=True)
class BronzeSummary:
    """What one source's bronze ingest read and appended."""

    source: str
    origin: str
    read: int
    appended: int
    batch_id: str
    seconds: float

    @property
    def already_present(self) -> int:
        """Records read that bronze already held (re-deliveries of committed records)."""
        return self.read - self.appended


def new_batch_id() -> str:
    """A sortable, unique id for one ingest run."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def origin_of(spec: SourceSpec, source: SourceSettings) -> str:
    """The ``_source`` value: which system and object the records come from."""
    if isinstance(source, KafkaSourceSettings):
        return f"kafka:{source.topic}"
    if isinstance(source, PostgresSourceSettings):
        return f"postgres:{source.table}"
    if isinstance(source, RestSourceSettings):
        return f"rest:{source.base_url.rstrip('/')}{source.path}"
    return f"files:{spec.path}"


def _bronze_of(spark: SparkSession, target: Path, origin: str) -> DataFrame | None:
    from pyspark.sql import functions as F

    if not table_exists(target):
        return None
    return spark.read.format("delta").load(str(target)).filter(F.col("_source") == origin)


def kafka_start_offsets(spark: SparkSession, target: Path, origin: str) -> dict[int, int]:
    """Next offset to read per partition: one past the last offset committed to bronze."""
    from pyspark.sql import functions as F

    bronze = _bronze_of(spark, target, origin)
    if bronze is None:
        return {}
    rows = bronze.groupBy("_partition").agg(F.max("_offset").alias("last")).collect()
    return {int(row["_partition"]): int(row["last"]) + 1 for row in rows}


def postgres_watermark(
    spark: SparkSession, target: Path, origin: str, column: str, overlap_s: float = 0.0
) -> str | None:
    """Where the next read starts: the highest watermark committed to bronze, minus an overlap.

    The overlap re-reads rows whose transaction committed late with an earlier ``updated_at``;
    rows re-read unchanged have the same content identity and add nothing to bronze.
    """
    from pyspark.sql import functions as F

    bronze = _bronze_of(spark, target, origin)
    if bronze is None:
        return None
    latest: datetime | None = bronze.agg(
        F.max(F.expr(f"try_cast(`{column}` as timestamp)"))
    ).collect()[0][0]
    if latest is None:
        return None
    return (latest - timedelta(seconds=overlap_s)).strftime("%Y-%m-%d %H:%M:%S.%f")


def read_source(
    spark: SparkSession,
    spec: SourceSpec,
    source: SourceSettings,
    raw_dir: Path,
    target: Path,
) -> Iterator[DataFrame]:
    """New records of one source as bronze-shaped frames (columns as text, ``_raw``, position).

    Frames have the declared columns, ``_raw``, ``_partition`` (string) and ``_offset``
    (bigint, null where the source has no offsets).
    """
    from pyspark.sql import functions as F

    columns = list(spec.columns)
    origin = origin_of(spec, source)
    no_offset = F.lit(None).cast("bigint").alias("_offset")
    if isinstance(source, KafkaSourceSettings):
        from pipelines.sources.kafka import read_kafka_batch

        start = kafka_start_offsets(spark, target, origin)
        frame = read_kafka_batch(spark, source, columns, start)
        yield frame.select(
            *columns,
            "_raw",
            F.col("_partition").cast("string").alias("_partition"),
            F.col("_offset").cast("bigint").alias("_offset"),
        )
    elif isinstance(source, PostgresSourceSettings):
        from pipelines.sources.postgres import read_postgres_batch

        since = postgres_watermark(
            spark, target, origin, source.watermark_column, source.watermark_overlap_s
        )
        frame = read_postgres_batch(spark, source, columns, since)
        yield frame.select(
            *columns,
            F.to_json(F.struct(*columns)).alias("_raw"),
            F.lit(None).cast("string").alias("_partition"),
            no_offset,
        )
    elif isinstance(source, RestSourceSettings):
        from pipelines.sources.rest import read_rest_batch

        for frame in read_rest_batch(spark, source, spec):
            yield frame.select(*columns, "_raw", "_partition", no_offset)
    else:
        from pipelines.sources.files import read_file_batch

        for frame in read_file_batch(spark, spec, raw_dir):
            yield frame.select(*columns, "_raw", "_partition", no_offset)


def stage_batch(frames: Iterator[DataFrame], staging: Path) -> None:
    """Write the batch once to the staging table, so the source is read exactly once."""
    for part, frame in enumerate(frames):
        writer = frame.write.format("delta")
        if part == 0:
            writer = writer.mode("overwrite").option("overwriteSchema", "true")
        else:
            writer = writer.mode("append")
        writer.save(str(staging))


def with_identity(staged: DataFrame, origin: str, batch_id: str) -> DataFrame:
    """Add ``_record_id`` and the batch metadata.

    Offset sources are identified by position. Others by content: the hash of the raw record
    plus its occurrence among identical records, so a re-read of the same data gets the same
    ids, and a record delivered twice in one read still lands twice (silver counts it as a
    duplicate instead of it vanishing here).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    digest = F.sha2(F.coalesce(F.col("_raw"), F.lit("")), 256)
    occurrence = F.row_number().over(
        Window.partitionBy("_digest").orderBy(F.col("_partition").asc_nulls_first())
    )
    by_content = F.concat(F.col("_digest"), F.lit(":"), occurrence.cast("string"))
    by_position = F.concat(
        F.lit(origin), F.lit("/"), F.col("_partition"), F.lit("/"), F.col("_offset").cast("string")
    )
    identified = staged.withColumn("_digest", digest).withColumn(
        "_record_id", F.when(F.col("_offset").isNotNull(), by_position).otherwise(by_content)
    )
    return identified.drop("_digest").select(
        "*",
        F.lit(origin).alias("_source"),
        F.lit(batch_id).alias("_batch_id"),
        F.current_timestamp().alias("_ingested_at"),
    )


def append_new_records(spark: SparkSession, batch: DataFrame, target: Path) -> None:
    """Insert the batch's records that bronze does not hold yet (one atomic Delta commit)."""
    if not table_exists(target):
        batch.write.format("delta").mode("overwrite").save(str(target))
        return
    view = f"bronze_batch_{uuid.uuid4().hex}"
    batch.createOrReplaceTempView(view)
    try:
        spark.sql(
            f"MERGE INTO delta.`{target}` AS t USING {view} AS s "
            "ON t._record_id = s._record_id WHEN NOT MATCHED THEN INSERT *"
        ).collect()
    finally:
        spark.catalog.dropTempView(view)


@contextmanager
def _source_errors(source: SourceSettings) -> Iterator[None]:
    """One-line, secret-free errors for failures of a lazy source read inside Spark."""
    if isinstance(source, PostgresSourceSettings):
        from pipelines.sources.postgres import postgres_errors

        with postgres_errors(source):
            yield
    else:
        yield


def ingest_source(
    spark: SparkSession,
    name: str,
    spec: SourceSpec,
    source: SourceSettings,
    raw_dir: Path,
    tables: Tables,
) -> BronzeSummary:
    """Read one source's new records once and append them to its bronze table exactly once."""
    started = time.perf_counter()
    origin = origin_of(spec, source)
    target = tables.bronze(name)
    staging = tables.staging(name)
    batch_id = new_batch_id()
    with _source_errors(source):
        stage_batch(read_source(spark, spec, source, raw_dir, target), staging)
    failpoint(f"bronze.after_stage.{name}")
    staged = spark.read.format("delta").load(str(staging))
    read = staged.count()
    before = table_rows(target) if table_exists(target) else 0
    if read:
        append_new_records(spark, with_identity(staged, origin, batch_id), target)
    appended = (table_rows(target) if table_exists(target) else 0) - before
    failpoint(f"bronze.after_commit.{name}")
    if isinstance(source, KafkaSourceSettings) and source.consumer_group and table_exists(target):
        from pipelines.sources.kafka import commit_consumer_offsets

        # Also after a run that read nothing: the previous run may have died before this step.
        committed = kafka_start_offsets(spark, target, origin)
        try:
            commit_consumer_offsets(source, committed)
        except Exception as error:
            # Group offsets only feed lag dashboards; bronze already holds the truth.
            log.warning("consumer offsets not committed", source=name, error=_first_line(error))
    if read and not appended:
        log.info("bronze: nothing new", source=name, read=read)
    return BronzeSummary(name, origin, read, appended, batch_id, time.perf_counter() - started)


def ingest_with_retries(
    spark: SparkSession,
    name: str,
    spec: SourceSpec,
    source: SourceSettings,
    raw_dir: Path,
    tables: Tables,
    policy: IngestSettings,
) -> BronzeSummary:
    """``ingest_source`` retried on failure: an attempt that failed committed nothing to bronze."""
    from pipelines.rest_source import HostNotAllowedError
    from pipelines.sources.files import SourceNotFoundError, SourceSchemaError

    for attempt in range(1, policy.max_attempts + 1):
        try:
            return ingest_source(spark, name, spec, source, raw_dir, tables)
        except (SourceNotFoundError, SourceSchemaError, HostNotAllowedError, TlsConfigError):
            raise  # a missing source or a wrong configuration does not heal by waiting
        except Exception as error:
            if attempt == policy.max_attempts:
                raise IngestError(
                    f"source {name} ({origin_of(spec, source)}): failed after {attempt} "
                    f"attempts: {_first_line(error)}"
                ) from error
            log.warning(
                "ingest attempt failed", source=name, attempt=attempt, error=_first_line(error)
            )
            time.sleep(policy.retry_backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]


def ingest_sources(
    spark: SparkSession, contract: FeatureContract, settings: Settings, tables: Tables
) -> list[BronzeSummary]:
    """Append every source's new records to its bronze table."""
    raw_dir = settings.resolve(settings.raw_dir)
    for name in contract.sources:
        source = settings.source(name)
        if isinstance(source, PostgresSourceSettings | KafkaSourceSettings):
            # Before anything is read: a missing TLS file is named with its exact setting,
            # and a second source cannot be half ingested when the first is misconfigured.
            check_tls_files(source.tls, f"sources.{name}.tls")
    return [
        ingest_with_retries(
            spark, name, spec, settings.source(name), raw_dir, tables, settings.ingest
        )
        for name, spec in contract.sources.items()
    ]
