"""Bronze: read each raw source into a Delta table of strings, exactly as it arrived.

Every declared column is kept as text so that nothing is lost to a failed type conversion here;
typing, and quarantining what does not type, is the silver job's work. Message-like sources keep
the raw text of each record in ``_raw`` so a quarantined record can be inspected and replayed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from churn_core.contract import FeatureContract, SourceSpec
from churn_core.tables import Tables
from pipelines.delta import table_rows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class SourceNotFoundError(FileNotFoundError):
    """A configured raw source has no files."""


@dataclass(frozen=True)
class BronzeSummary:
    """What one source ingest wrote."""

    source: str
    rows: int
    seconds: float


def _string_struct(spec: SourceSpec) -> str:
    return ", ".join(f"`{name}` string" for name in spec.columns)


def read_raw_source(spark: SparkSession, spec: SourceSpec, raw_dir: Path) -> DataFrame:
    """Read one raw source as a DataFrame of its declared columns (strings) plus ``_raw``."""
    from pyspark.sql import functions as F

    location = raw_dir / spec.path
    if not location.exists():
        raise SourceNotFoundError(f"raw source not found: {location}")
    columns = list(spec.columns)
    if spec.format == "parquet":
        frame = spark.read.parquet(str(location))
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ValueError(f"{location}: columns missing from the source: {absent}")
        return frame.select(
            *[F.col(c).cast("string").alias(c) for c in columns],
            F.lit(None).cast("string").alias("_raw"),
        )
    if spec.format == "csv":
        frame = spark.read.option("header", "true").csv(str(location))
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ValueError(f"{location}: columns missing from the source: {absent}")
        return frame.select(*columns, F.lit(None).cast("string").alias("_raw"))
    if spec.format == "jsonl":
        lines = spark.read.text(str(location))
        parsed = lines.select(
            F.col("value").alias("_raw"), F.from_json("value", _string_struct(spec)).alias("r")
        )
        return parsed.select(*[F.col(f"r.`{c}`").alias(c) for c in columns], "_raw")
    # json_pages: each file is one page; its records array is exploded, one row per record.
    pages = spark.read.text(str(location), wholetext=True)
    schema = f"`{spec.records_field}` array<struct<{_string_struct(spec).replace(' string', ': string')}>>"
    records = pages.select(F.explode(F.from_json("value", schema)[spec.records_field]).alias("r"))
    return records.select(
        *[F.col(f"r.`{c}`").alias(c) for c in columns], F.to_json("r").alias("_raw")
    )


def ingest_sources(
    spark: SparkSession, contract: FeatureContract, raw_dir: Path, tables: Tables
) -> list[BronzeSummary]:
    """Write every source of the contract to its bronze Delta table (overwrite: re-runs agree)."""
    from pyspark.sql import functions as F

    summaries = []
    for name, spec in contract.sources.items():
        started = time.perf_counter()
        frame = read_raw_source(spark, spec, raw_dir).withColumn(
            "_ingested_at", F.current_timestamp()
        )
        target = tables.bronze(name)
        frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
            str(target)
        )
        summaries.append(BronzeSummary(name, table_rows(target), time.perf_counter() - started))
    return summaries
