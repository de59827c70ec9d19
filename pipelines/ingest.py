"""Bronze: read each raw source into a Delta table of strings, exactly as it arrived.

Every declared column is kept as text so that nothing is lost to a failed type conversion here;
typing, and quarantining what does not type, is the silver job's work. Message-like sources keep
the raw text of each record in ``_raw`` so a quarantined record can be inspected and replayed.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churn_core.contract import FeatureContract, SourceSpec
from churn_core.tables import Tables
from pipelines.delta import table_rows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


# Records per Arrow batch handed to Spark Connect (well under its 128 MiB message limit).
PAGE_BATCH_ROWS = 200_000


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


def read_raw_source(spark: SparkSession, spec: SourceSpec, raw_dir: Path) -> Iterator[DataFrame]:
    """Read one raw source as DataFrames of its declared columns (strings) plus ``_raw``."""
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
        yield frame.select(
            *[F.col(c).cast("string").alias(c) for c in columns],
            F.lit(None).cast("string").alias("_raw"),
        )
    if spec.format == "csv":
        frame = spark.read.option("header", "true").csv(str(location))
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ValueError(f"{location}: columns missing from the source: {absent}")
        yield frame.select(*columns, F.lit(None).cast("string").alias("_raw"))
    if spec.format == "jsonl":
        lines = spark.read.text(str(location))
        parsed = lines.select(
            F.col("value").alias("_raw"), F.from_json("value", _string_struct(spec)).alias("r")
        )
        yield parsed.select(*[F.col(f"r.`{c}`").alias(c) for c in columns], "_raw")
    else:
        yield from read_json_pages(spark, spec, location)


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def page_records(spec: SourceSpec, location: Path) -> Iterator[dict[str, str | None]]:
    """Records of every page file in page order, values as text, each with its raw JSON.

    Pages are parsed here rather than by Spark: Sail splits large files into byte ranges even
    for whole-file reads (``wholetext``, multi-line JSON), which cut pages in two and lost them.
    """
    for page_file in sorted(location.glob("*.json")):
        try:
            page = json.loads(page_file.read_text())
            records = page[spec.records_field]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{page_file}: not a page with a '{spec.records_field}' list: {error}"
            ) from error
        for record in records:
            if not isinstance(record, dict):
                yield {**dict.fromkeys(spec.columns), "_raw": json.dumps(record)}
                continue
            row = {name: _as_text(record.get(name)) for name in spec.columns}
            yield {**row, "_raw": json.dumps(record, sort_keys=True)}


def read_json_pages(spark: SparkSession, spec: SourceSpec, location: Path) -> Iterator[DataFrame]:
    """All page records (strings) as DataFrames of at most ``PAGE_BATCH_ROWS`` rows each."""
    import pyarrow as pa

    names = [*spec.columns, "_raw"]
    schema = pa.schema([pa.field(n, pa.string()) for n in names])
    rows = page_records(spec, location)
    empty = True
    while batch := list(itertools.islice(rows, PAGE_BATCH_ROWS)):
        empty = False
        yield spark.createDataFrame(pa.Table.from_pylist(batch, schema=schema).to_pandas())
    if empty:
        yield spark.createDataFrame([], ", ".join(f"`{n}` string" for n in names))


def ingest_sources(
    spark: SparkSession, contract: FeatureContract, raw_dir: Path, tables: Tables
) -> list[BronzeSummary]:
    """Write every source of the contract to its bronze Delta table (overwrite: re-runs agree)."""
    from pyspark.sql import functions as F

    summaries = []
    for name, spec in contract.sources.items():
        started = time.perf_counter()
        target = tables.bronze(name)
        for part, frame in enumerate(read_raw_source(spark, spec, raw_dir)):
            writer = frame.withColumn("_ingested_at", F.current_timestamp()).write.format("delta")
            if part == 0:
                writer = writer.mode("overwrite").option("overwriteSchema", "true")
            else:
                writer = writer.mode("append")
            writer.save(str(target))
        summaries.append(BronzeSummary(name, table_rows(target), time.perf_counter() - started))
    return summaries
