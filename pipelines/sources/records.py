"""Turning Python records (REST pages, page files) into bronze-shaped Spark DataFrames."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Records per Arrow batch handed to Spark Connect (well under its 128 MiB message limit).
RECORD_BATCH_ROWS = 200_000


def as_text(value: Any) -> str | None:
    """A JSON value as the text bronze keeps (numbers and booleans as JSON spells them)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def record_row(record: Any, columns: Sequence[str], partition: str) -> dict[str, str | None]:
    """One bronze row: declared columns as text, the record's raw JSON and where it came from.

    A record that is not a JSON object keeps its raw text with null columns, so validation can
    quarantine it rather than it vanishing here.
    """
    raw = json.dumps(record, sort_keys=True)
    if not isinstance(record, dict):
        return {**dict.fromkeys(columns), "_raw": raw, "_partition": partition}
    return {
        **{name: as_text(record.get(name)) for name in columns},
        "_raw": raw,
        "_partition": partition,
    }


def records_to_frames(
    spark: SparkSession, columns: Sequence[str], rows: Iterable[dict[str, str | None]]
) -> Iterator[DataFrame]:
    """Bronze rows as DataFrames of at most ``RECORD_BATCH_ROWS`` rows (one empty frame if none)."""
    import pyarrow as pa

    names = [*columns, "_raw", "_partition"]
    schema = pa.schema([pa.field(n, pa.string()) for n in names])
    iterator = iter(rows)
    empty = True
    while batch := list(itertools.islice(iterator, RECORD_BATCH_ROWS)):
        empty = False
        yield spark.createDataFrame(pa.Table.from_pylist(batch, schema=schema).to_pandas())
    if empty:
        yield spark.createDataFrame([], ", ".join(f"`{n}` string" for n in names))
