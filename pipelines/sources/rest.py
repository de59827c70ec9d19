"""A paginated REST API as a bronze batch (every page, fetched with retries by RestSource)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from churn_core.contract import SourceSpec
from churn_core.settings import RestSourceSettings
from pipelines.rest_source import RestSource
from pipelines.sources.records import record_row, records_to_frames

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def read_rest_batch(
    spark: SparkSession,
    settings: RestSourceSettings,
    spec: SourceSpec,
    source: RestSource | None = None,
) -> Iterator[DataFrame]:
    """Every record the API serves, as bronze-shaped DataFrames (``_partition`` = page number).

    The pages are fetched before the first frame is yielded, so an API that fails past its retry
    budget fails the batch before anything is staged.
    """
    columns = list(spec.columns)
    client = source or RestSource(settings)
    try:
        rows = [
            record_row(record, columns, f"page-{page.number}")
            for page in client.iter_pages()
            for record in page.records
        ]
    finally:
        if source is None:
            client.close()
    yield from records_to_frames(spark, columns, rows)
