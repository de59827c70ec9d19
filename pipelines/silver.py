"""Silver: validate new bronze records against the contract and upsert the good ones.

Each run takes the bronze batches no reconciliation has accounted for yet, types and checks
every record, and sends each to exactly one place:

* **silver**, by ``MERGE`` upsert on the source key (a newer version of an entity replaces the
  older one; a new event is inserted);
* **quarantine**, with a machine-readable ``reason_code``, a human ``reason``, the raw record and
  its source identity (see ``REASON_CODES``).

The classified batch is staged once, so silver, quarantine and the counts all come from the same
rows. A reconciliation row per bronze batch (read = accepted + quarantined, counted from bronze
and from what was written) is stored last; a mismatch fails the job. Every write is keyed by
record identity, so a run killed midway and started again converges to the same tables.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from churn_core.contract import SPARK_SOURCE_TYPES, FeatureContract, SourceSpec
from churn_core.faults import failpoint
from churn_core.tables import Tables
from pipelines.delta import table_exists

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

REASON_CODES = {
    "malformed_record": "the record could not be parsed into the declared columns",
    "missing_key": "a key column is empty",
    "type_mismatch": "a value does not convert to the declared type",
    "missing_required": "a required value is empty (key, time or a feature with missing: reject)",
    "out_of_range": "a value is outside the feature's declared range",
    "unknown_category": "a value is not one of the feature's declared categories",
    "late_event": "the event is older than the source's lateness bound allows",
    "duplicate_key": "another record with the same key was already accepted",
    "stale_version": "silver already holds this or a newer version of the entity",
    "superseded_version": "a newer version of the entity arrived in the same run",
}
ACCEPTED = "accepted"
SILVER_METADATA = ["_record_id", "_batch_id", "_ingested_at"]


class ReconciliationError(RuntimeError):
    """Records read from bronze do not equal records accepted plus records quarantined."""


@dataclass(frozen=True)
class SilverSummary:
    """Row accounting of one source's silver run (over the bronze batches it processed)."""

    source: str
    batches: int
    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    out_of_order: int = 0
    seconds: float = 0.0

    @property
    def reconciled(self) -> bool:
        """True when every record read is either accepted or quarantined."""
        return self.read == self.accepted + self.quarantined


def _blank_to_null(name: str) -> Column:
    from pyspark.sql import functions as F

    return F.when(F.trim(F.col(name)) == "", F.lit(None)).otherwise(F.col(name))


def required_columns(contract: FeatureContract, name: str) -> list[str]:
    """Columns of source ``name`` that must not be empty."""
    spec = contract.sources[name]
    required = [c for c in (spec.event_time, spec.order_by) if c]
    if name == contract.entity_source_name:
        required += [
            f.derive.column
            for f in contract.features
            if f.missing == "reject" and f.derive.column in spec.columns
        ]
    return [c for c in dict.fromkeys(required) if c not in spec.key]


def value_checks(contract: FeatureContract, name: str) -> list[tuple[Column, str, str]]:
    """(failed condition, reason code, reason) for the declared ranges and categories."""
    from pyspark.sql import functions as F

    spec = contract.sources[name]
    if name != contract.entity_source_name:
        return []
    checks = []
    for feature in contract.features:
        column = feature.derive.column
        if column is None or column not in spec.columns:
            continue
        value = F.col(column)
        if feature.range and spec.columns[column] in ("int", "double"):
            low, high = feature.range
            checks.append(
                (
                    (value < low) | (value > high),
                    "out_of_range",
                    f"{column}: outside [{low:g}, {high:g}]",
                )
            )
        if feature.categories:
            checks.append(
                (
                    ~value.isin(feature.categories),
                    "unknown_category",
                    f"{column}: not one of {feature.categories}",
                )
            )
    return checks


def validate(
    bronze: DataFrame,
    contract: FeatureContract,
    name: str,
    event_watermark: datetime | None,
) -> DataFrame:
    """Bronze text -> contract types, with ``_reason_code``/``_reason`` set on failing rows.

    The first failed check names the reason. Checks are a flat ``coalesce`` of single-branch
    CASEs: a nested CASE chain of this depth stalled Sail's planner.
    """
    from pyspark.sql import functions as F

    spec = contract.sources[name]
    raw = bronze.select(
        *[_blank_to_null(c).alias(f"_raw_{c}") for c in spec.columns],
        "_raw",
        *SILVER_METADATA,
    )
    typed = raw.select(
        "*",
        *[
            F.expr(f"try_cast(`_raw_{c}` as {SPARK_SOURCE_TYPES[t]})").alias(c)
            for c, t in spec.columns.items()
        ],
    )
    nothing_parsed = F.col("_raw").isNotNull()
    for column in spec.columns:
        nothing_parsed = nothing_parsed & F.col(f"_raw_{column}").isNull()
    checks: list[tuple[Column, str, str]] = [
        (nothing_parsed, "malformed_record", "no declared column could be read")
    ]
    checks += [(F.col(f"_raw_{k}").isNull(), "missing_key", f"{k}: empty") for k in spec.key]
    for column, kind in spec.columns.items():
        failed = F.col(f"_raw_{column}").isNotNull() & F.col(column).isNull()
        checks.append((failed, "type_mismatch", f"{column}: not a valid {kind}"))
    checks += [
        (F.col(c).isNull(), "missing_required", f"{c}: empty")
        for c in required_columns(contract, name)
    ]
    checks += value_checks(contract, name)
    if spec.event_time and spec.max_lateness_days is not None and event_watermark is not None:
        reference = f"{event_watermark:%Y-%m-%d %H:%M:%S}"
        bound = F.expr(f"timestamp'{reference}' - INTERVAL {spec.max_lateness_days} DAYS")
        checks.append(
            (
                F.col(spec.event_time) < bound,
                "late_event",
                f"{spec.event_time}: more than {spec.max_lateness_days} days before "
                f"the source's latest accepted event ({event_watermark:%Y-%m-%d %H:%M:%S})",
            )
        )
    code = F.coalesce(*[F.when(cond, F.lit(c)) for cond, c, _ in checks])
    reason = F.coalesce(*[F.when(cond, F.lit(text)) for cond, _, text in checks])
    return typed.withColumn("_reason_code", code).withColumn("_reason", reason)


def classify(validated: DataFrame, spec: SourceSpec, silver: DataFrame | None) -> DataFrame:
    """Give each valid row its outcome: insert, update, no-op, or a duplicate/stale reason.

    Within the run, one row per key survives (the latest version of an entity; for events the
    first record by identity). Against silver: an event whose key is already there is a
    duplicate; an entity version replaces silver's only if it is newer. A row whose very record
    is already in silver (a retried run) is accepted again without a write.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = spec.order_by if spec.role == "entity" else None
    ranking = ([F.col(order).desc()] if order else []) + [F.col("_record_id").asc()]
    window = Window.partitionBy(*spec.key).orderBy(*ranking)
    ranked = validated.withColumn("_rank", F.row_number().over(window))
    if order:
        top_order = F.first(F.col(order)).over(window)
        ranked = ranked.withColumn("_top_order", top_order)
    valid = F.col("_reason_code").isNull()
    if order:
        within_run = F.when(
            valid & (F.col("_rank") > 1) & (F.col(order) == F.col("_top_order")),
            F.lit("duplicate_key"),
        ).when(valid & (F.col("_rank") > 1), F.lit("superseded_version"))
    else:
        within_run = F.when(valid & (F.col("_rank") > 1), F.lit("duplicate_key"))
    ranked = ranked.withColumn("_reason_code", F.coalesce("_reason_code", within_run))
    if silver is None:
        existing = ranked.withColumn("_s_record", F.lit(None).cast("string"))
        if order:
            order_type = SPARK_SOURCE_TYPES[spec.columns[order]]
            existing = existing.withColumn("_s_order", F.lit(None).cast(order_type))
    else:
        current = silver.select(
            *[F.col(k).alias(f"_s_key_{k}") for k in spec.key],
            F.col("_record_id").alias("_s_record"),
            *([F.col(order).alias("_s_order")] if order else []),
        )
        condition = [ranked[k] == current[f"_s_key_{k}"] for k in spec.key]
        existing = ranked.join(current, condition, "left").drop(*[f"_s_key_{k}" for k in spec.key])
    candidate = F.col("_reason_code").isNull()
    in_silver = F.col("_s_record").isNotNull()
    same_record = F.col("_s_record") == F.col("_record_id")
    if order:
        newer = F.col(order) > F.col("_s_order")
        against_silver = (
            F.when(candidate & in_silver & same_record, F.lit(None))
            .when(candidate & in_silver & newer, F.lit(None))
            .when(candidate & in_silver, F.lit("stale_version"))
        )
    else:
        against_silver = F.when(candidate & in_silver & ~same_record, F.lit("duplicate_key"))
    outcome = F.when(F.col("_reason_code").isNotNull(), F.lit("quarantine"))
    outcome = outcome.when(against_silver.isNotNull(), F.lit("quarantine"))
    outcome = outcome.when(in_silver & same_record, F.lit("noop"))
    outcome = outcome.when(in_silver, F.lit("update")).otherwise(F.lit("insert"))
    code = F.coalesce(F.col("_reason_code"), against_silver)
    keys = ", ".join(spec.key)
    described = F.coalesce(
        *[
            F.when(code == F.lit(c), F.lit(f"{keys}: {REASON_CODES[c]}"))
            for c in ("duplicate_key", "stale_version", "superseded_version")
        ]
    )
    reason_text = F.coalesce(F.col("_reason"), described)
    return (
        existing.withColumn("_outcome", outcome)
        .withColumn("_reason", reason_text)
        .withColumn("_reason_code", code)
    )


def _merge(spark: SparkSession, source: DataFrame, target: Path, sql_tail: str) -> None:
    if not table_exists(target):
        source.write.format("delta").mode("overwrite").save(str(target))
        return
    view = f"merge_source_{uuid.uuid4().hex}"
    source.createOrReplaceTempView(view)
    try:
        spark.sql(f"MERGE INTO delta.`{target}` AS t USING {view} AS s {sql_tail}").collect()
    finally:
        spark.catalog.dropTempView(view)


def write_quarantine(
    spark: SparkSession, staged: DataFrame, spec: SourceSpec, name: str, target: Path
) -> None:
    """Insert the run's rejected records into the source's quarantine table (once each)."""
    from pyspark.sql import functions as F

    rejected = staged.filter(F.col("_outcome") == "quarantine").select(
        F.lit(name).alias("source"),
        F.col("_reason_code").alias("reason_code"),
        F.col("_reason").alias("reason"),
        F.to_json(F.struct(*[F.col(f"_raw_{c}").alias(c) for c in spec.columns])).alias("record"),
        "_raw",
        "_record_id",
        "_batch_id",
        "_ingested_at",
        F.current_timestamp().alias("_quarantined_at"),
    )
    _merge(
        spark,
        rejected,
        target,
        "ON t._record_id = s._record_id WHEN NOT MATCHED THEN INSERT *",
    )


def upsert_silver(spark: SparkSession, staged: DataFrame, spec: SourceSpec, target: Path) -> None:
    """Upsert the run's accepted records into silver by source key."""
    from pyspark.sql import functions as F

    changes = staged.filter(F.col("_outcome").isin("insert", "update")).select(
        *spec.columns, *SILVER_METADATA
    )
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in spec.key)
    _merge(
        spark,
        changes,
        target,
        f"ON {on} WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
    )


def processed_batches(spark: SparkSession, tables: Tables, name: str) -> set[str]:
    """Bronze batches of ``name`` already reconciled."""
    from pyspark.sql import functions as F

    if not table_exists(tables.reconciliation):
        return set()
    ledger = spark.read.format("delta").load(str(tables.reconciliation))
    rows = ledger.filter((F.col("source") == name) & F.col("reconciled")).select("batch_id")
    return {row[0] for row in rows.collect()}


def latest_event_time(
    spark: SparkSession, spec: SourceSpec, target: Path, pending: list[str]
) -> datetime | None:
    """The newest event time silver held before this run (the lateness reference).

    Rows written by the pending batches themselves (by an earlier, interrupted attempt) are left
    out, so a retried run classifies every record as the first attempt did.
    """
    from pyspark.sql import functions as F

    if not spec.event_time or not table_exists(target):
        return None
    silver = spark.read.format("delta").load(str(target))
    before = silver.filter(~F.col("_batch_id").isin(pending))
    value = before.agg(F.max(spec.event_time)).collect()
    latest: datetime | None = value[0][0]
    return latest


def store_reconciliation(
    spark: SparkSession, tables: Tables, name: str, per_batch: list[dict[str, object]]
) -> None:
    """Upsert one reconciliation row per bronze batch (``reconciled`` false on a mismatch)."""
    schema = (
        "source string, batch_id string, read bigint, accepted bigint, quarantined bigint, "
        "reasons string, out_of_order bigint, reconciled boolean, processed_at timestamp"
    )
    frame = spark.createDataFrame(
        [
            (
                name,
                row["batch_id"],
                row["read"],
                row["accepted"],
                row["quarantined"],
                json.dumps(row["reasons"], sort_keys=True),
                row["out_of_order"],
                row["reconciled"],
                datetime.now(),
            )
            for row in per_batch
        ],
        schema,
    )
    _merge(
        spark,
        frame,
        tables.reconciliation,
        "ON t.source = s.source AND t.batch_id = s.batch_id "
        "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
    )


def build_source_silver(
    spark: SparkSession, contract: FeatureContract, tables: Tables, name: str
) -> SilverSummary:
    """Validate and upsert one source's pending bronze batches; reconcile and store the counts."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    spec = contract.sources[name]
    done = processed_batches(spark, tables, name)
    bronze = spark.read.format("delta").load(str(tables.bronze(name)))
    pending = bronze.filter(~F.col("_batch_id").isin(sorted(done))) if done else bronze
    read_per_batch = {r[0]: int(r[1]) for r in pending.groupBy("_batch_id").count().collect()}
    if not read_per_batch:
        return SilverSummary(name, 0, 0, 0, 0, seconds=time.perf_counter() - started)

    silver_path = tables.silver(name)
    watermark = latest_event_time(spark, spec, silver_path, sorted(read_per_batch))
    validated = validate(pending, contract, name, watermark)
    silver = (
        spark.read.format("delta").load(str(silver_path)) if table_exists(silver_path) else None
    )
    staging = tables.staging(f"{name}__classified")
    classified = classify(validated, spec, silver)
    if spec.event_time and watermark is not None:
        late_order = F.col(spec.event_time) < F.lit(watermark)
    else:
        late_order = F.lit(False)
    classified.withColumn("_out_of_order", late_order).write.format("delta").mode(
        "overwrite"
    ).option("overwriteSchema", "true").save(str(staging))
    staged = spark.read.format("delta").load(str(staging))

    write_quarantine(spark, staged, spec, name, tables.quarantine(name))
    failpoint(f"silver.after_quarantine.{name}")
    upsert_silver(spark, staged, spec, silver_path)
    failpoint(f"silver.after_upsert.{name}")

    per_batch = _count_outcomes(spark, staged, tables.quarantine(name), read_per_batch)
    store_reconciliation(spark, tables, name, per_batch)
    summary = SilverSummary(
        source=name,
        batches=len(per_batch),
        read=sum(int(str(b["read"])) for b in per_batch),
        accepted=sum(int(str(b["accepted"])) for b in per_batch),
        quarantined=sum(int(str(b["quarantined"])) for b in per_batch),
        reasons=_sum_reasons(per_batch),
        out_of_order=sum(int(str(b["out_of_order"])) for b in per_batch),
        seconds=time.perf_counter() - started,
    )
    if not all(b["reconciled"] for b in per_batch):
        raise ReconciliationError(
            f"silver {name}: read {summary.read} != accepted {summary.accepted} + "
            f"quarantined {summary.quarantined}; stored in {tables.reconciliation}"
        )
    return summary


def _count_outcomes(
    spark: SparkSession, staged: DataFrame, quarantine: Path, read_per_batch: dict[str, int]
) -> list[dict[str, object]]:
    """Per batch: accepted from the staged outcomes, quarantined read back from its table."""
    from pyspark.sql import functions as F

    batches = sorted(read_per_batch)
    accepted = {
        r[0]: (int(r[1]), int(r[2]))
        for r in staged.filter(F.col("_outcome") != "quarantine")
        .groupBy("_batch_id")
        .agg(F.count(F.lit(1)), F.sum(F.col("_out_of_order").cast("int")))
        .collect()
    }
    reasons: dict[str, dict[str, int]] = {b: {} for b in batches}
    if table_exists(quarantine):
        written = spark.read.format("delta").load(str(quarantine))
        for row in (
            written.filter(F.col("_batch_id").isin(batches))
            .groupBy("_batch_id", "reason_code")
            .count()
            .collect()
        ):
            reasons[row[0]][row[1]] = int(row[2])
    rows: list[dict[str, object]] = []
    for batch in batches:
        taken, out_of_order = accepted.get(batch, (0, 0))
        quarantined = sum(reasons[batch].values())
        rows.append(
            {
                "batch_id": batch,
                "read": read_per_batch[batch],
                "accepted": taken,
                "quarantined": quarantined,
                "reasons": reasons[batch],
                "out_of_order": out_of_order or 0,
                "reconciled": read_per_batch[batch] == taken + quarantined,
            }
        )
    return rows


def _sum_reasons(per_batch: list[dict[str, object]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for batch in per_batch:
        reasons = batch["reasons"]
        assert isinstance(reasons, dict)
        for code, count in reasons.items():
            total[code] = total.get(code, 0) + count
    return total


def build_silver(
    spark: SparkSession, contract: FeatureContract, tables: Tables
) -> list[SilverSummary]:
    """Validate and upsert every source's pending bronze batches."""
    return [build_source_silver(spark, contract, tables, name) for name in contract.sources]
