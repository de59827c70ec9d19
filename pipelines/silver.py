"""Silver: type each bronze table per the contract, quarantine what does not type, de-duplicate.

Every bronze row ends in exactly one place: silver, quarantine (with a reason) or counted as a
duplicate of a row kept in silver; ``SilverSummary.reconciled`` checks the sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from churn_core.contract import SPARK_SOURCE_TYPES, FeatureContract, SourceSpec
from churn_core.tables import Tables
from pipelines.delta import table_rows

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


@dataclass(frozen=True)
class SilverSummary:
    """Row accounting of one source's silver build."""

    source: str
    bronze: int
    silver: int
    quarantined: int
    duplicates: int
    seconds: float

    @property
    def reconciled(self) -> bool:
        """True when every bronze row is in silver, in quarantine or a counted duplicate."""
        return self.bronze == self.silver + self.quarantined + self.duplicates


def _blank_to_null(name: str) -> Column:
    from pyspark.sql import functions as F

    return F.when(F.trim(F.col(name)) == "", F.lit(None)).otherwise(F.col(name))


def _rejection_reason(spec: SourceSpec) -> Column:
    """First problem of a row as text, or null for a good row."""
    from pyspark.sql import functions as F

    checks = [(F.col(f"_raw_{key}").isNull(), f"missing key column {key}") for key in spec.key]
    for name, kind in spec.columns.items():
        failed = F.col(f"_raw_{name}").isNotNull() & F.col(name).isNull()
        checks.append((failed, f"column {name}: not a valid {kind}"))
    # A flat coalesce of single-branch CASEs: a nested CASE chain of this depth stalled Sail's planner.
    return F.coalesce(*[F.when(condition, F.lit(text)) for condition, text in checks])


def type_source(bronze: DataFrame, spec: SourceSpec) -> DataFrame:
    """Bronze strings -> contract types, with ``_reason`` set on rows that fail."""
    from pyspark.sql import functions as F

    raw = bronze.select(
        *[_blank_to_null(c).alias(f"_raw_{c}") for c in spec.columns], "_raw", "_ingested_at"
    )
    typed = raw.select(
        "*",
        *[
            F.expr(f"try_cast(`_raw_{c}` as {SPARK_SOURCE_TYPES[t]})").alias(c)
            for c, t in spec.columns.items()
        ],
    )
    return typed.withColumn("_reason", _rejection_reason(spec))


def deduplicate(frame: DataFrame, spec: SourceSpec) -> DataFrame:
    """Keep one row per source key: the latest by ``order_by``/``event_time``, ties broken stably."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = spec.order_by or spec.event_time
    ordering = [F.col(latest).desc_nulls_last()] if latest else []
    # Ties (exact re-deliveries) are broken on the values themselves so re-runs pick the same row.
    ordering += [F.col(c).asc_nulls_last() for c in spec.columns if c not in spec.key]
    window = Window.partitionBy(*spec.key).orderBy(*ordering)
    return frame.withColumn("_rank", F.row_number().over(window)).filter("_rank = 1").drop("_rank")


def build_silver(
    spark: SparkSession, contract: FeatureContract, tables: Tables
) -> list[SilverSummary]:
    """Build silver and quarantine tables for every source."""
    from pyspark.sql import functions as F

    summaries = []
    for name, spec in contract.sources.items():
        started = time.perf_counter()
        bronze = spark.read.format("delta").load(str(tables.bronze(name)))
        typed = type_source(bronze, spec)
        rejected = typed.filter(F.col("_reason").isNotNull()).select(
            F.lit(name).alias("source"),
            "_reason",
            F.to_json(F.struct(*[F.col(f"_raw_{c}").alias(c) for c in spec.columns])).alias(
                "record"
            ),
            "_raw",
            "_ingested_at",
        )
        rejected.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
            str(tables.quarantine(name))
        )
        good = typed.filter(F.col("_reason").isNull()).select(*spec.columns)
        valid_rows = good.count()
        deduplicate(good, spec).write.format("delta").mode("overwrite").option(
            "overwriteSchema", "true"
        ).save(str(tables.silver(name)))
        bronze_rows = table_rows(tables.bronze(name))
        silver_rows = table_rows(tables.silver(name))
        quarantined = table_rows(tables.quarantine(name))
        summaries.append(
            SilverSummary(
                source=name,
                bronze=bronze_rows,
                silver=silver_rows,
                quarantined=quarantined,
                duplicates=valid_rows - silver_rows,
                seconds=time.perf_counter() - started,
            )
        )
    return summaries
