"""Files under ``raw_dir``: the embedded default source (and the sample data's shape).

Parquet and CSV stand in for a database table, JSON lines for a topic's message values, page
files for a REST API's pages. Each yields bronze-shaped frames: the declared columns as text,
``_raw`` (the record as JSON) and ``_partition`` (the file it came from).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from churn_core.contract import SourceSpec
from pipelines.sources.records import record_row, records_to_frames

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class SourceNotFoundError(FileNotFoundError):
    """A configured raw source has no files."""


class SourceSchemaError(ValueError):
    """A source's records do not have the shape its contract declares."""


def _string_struct(spec: SourceSpec) -> str:
    return ", ".join(f"`{name}` string" for name in spec.columns)


def _check_columns(location: Path, present: list[str], spec: SourceSpec) -> None:
    absent = [c for c in spec.columns if c not in present]
    if absent:
        raise SourceSchemaError(f"{location}: columns missing from the source: {absent}")


def read_file_batch(spark: SparkSession, spec: SourceSpec, raw_dir: Path) -> Iterator[DataFrame]:
    """Every record of one file source, as bronze-shaped DataFrames."""
    from pyspark.sql import functions as F

    location = raw_dir / spec.path
    if not location.exists():
        raise SourceNotFoundError(f"raw source not found: {location}")
    columns = list(spec.columns)
    origin = F.lit(spec.path).alias("_partition")
    if spec.format in ("parquet", "csv"):
        reader = spark.read.option("header", "true") if spec.format == "csv" else spark.read
        frame = (
            reader.parquet(str(location)) if spec.format == "parquet" else reader.csv(str(location))
        )
        _check_columns(location, frame.columns, spec)
        text = frame.select(*[F.col(c).cast("string").alias(c) for c in columns])
        yield text.select(*columns, F.to_json(F.struct(*columns)).alias("_raw"), origin)
    elif spec.format == "jsonl":
        lines = spark.read.text(str(location))
        parsed = lines.select(
            F.col("value").alias("_raw"), F.from_json("value", _string_struct(spec)).alias("r")
        )
        yield parsed.select(*[F.col(f"r.`{c}`").alias(c) for c in columns], "_raw", origin)
    else:
        yield from records_to_frames(spark, columns, _page_rows(spec, location))


def _page_rows(spec: SourceSpec, location: Path) -> Iterator[dict[str, str | None]]:
    """Records of every page file in page order.

    Pages are parsed here rather than by Spark: Sail splits large files into byte ranges even
    for whole-file reads (``wholetext``, multi-line JSON), which cut pages in two and lost them.
    """
    for page_file in sorted(location.glob("*.json")):
        try:
            page = json.loads(page_file.read_text())
            records = page[spec.records_field]
        except (ValueError, KeyError, TypeError) as error:
            raise SourceSchemaError(
                f"{page_file}: not a page with a '{spec.records_field}' list: {error}"
            ) from error
        for record in records:
            yield record_row(record, list(spec.columns), page_file.name)
