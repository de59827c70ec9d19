"""Gold: one row per (customer, snapshot date) with the contract's features and label.

Point-in-time: a feature for snapshot T only sees events strictly before T; the label looks at the
``horizon_days`` after T. Features are built with a join to the snapshot dates plus conditional
aggregation (range-frame window functions are ~100x slower on Sail). Everything is derived from
the contract, so a new data set needs a new contract file, not new code here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deltalake import DeltaTable

from churn_core.contract import Aggregate, FeatureContract, FeatureSpec, Recency
from churn_core.tables import Tables
from pipelines.delta import table_exists, table_rows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


@dataclass(frozen=True)
class GoldSummary:
    """What the gold build wrote."""

    rows: int
    snapshots: int
    positives: int
    seconds: float
    written: bool = True


def _snapshot_ts(contract: FeatureContract, days: int = 0) -> str:
    column = f"`{contract.snapshot_column}`"
    date = f"date_add({column}, {days})" if days else column
    return f"cast({date} as timestamp)"


def _since(days: int) -> str:
    return f"`_since_{days}`"


def aggregate_expression(contract: FeatureContract, source_time: str, agg: Aggregate) -> str:
    """SQL for one conditional aggregate over events already limited to before the snapshot.

    A window's start is a column of the (few-row) snapshot table, ``_since_<days>``, so it is
    computed once per snapshot, not once per joined event row.
    """
    conditions = []
    if agg.window_days:
        conditions.append(f"`{source_time}` >= {_since(agg.window_days)}")
    if agg.filter:
        conditions.append(f"({agg.filter})")
    value = "1" if agg.fn == "count" else f"`{agg.value}`"
    guarded = f"case when {' and '.join(conditions)} then {value} end" if conditions else value
    return f"{agg.fn}({guarded})"


def recency_expression(contract: FeatureContract, source_time: str, rec: Recency) -> str:
    """SQL for days since the last matching event before the snapshot."""
    last = (
        f"max(case when {rec.filter} then `{source_time}` end)"
        if rec.filter
        else f"max(`{source_time}`)"
    )
    return f"datediff(`{contract.snapshot_column}`, cast({last} as date))"


def _window_days(spec: FeatureSpec) -> int | None:
    return spec.derive.aggregate.window_days if spec.derive.aggregate else None


def _filter_of(spec: FeatureSpec) -> str | None:
    reference = spec.derive.aggregate or spec.derive.recency
    return reference.filter if reference else None


def _snapshot_bounds(contract: FeatureContract, snapshots: DataFrame, days: set[int]) -> DataFrame:
    """The snapshot table with its timestamp and the start of every window used."""
    from pyspark.sql import functions as F

    frame = snapshots.withColumn("_snapshot_ts", F.expr(_snapshot_ts(contract)))
    for window in sorted(days):
        frame = frame.withColumn(f"_since_{window}", F.expr(_snapshot_ts(contract, -window)))
    return frame


def event_features(
    contract: FeatureContract, events: Mapping[str, DataFrame], snapshots: DataFrame
) -> list[DataFrame]:
    """Per (entity, snapshot) aggregates of each events source, from events before the snapshot.

    Features with a window read only the events inside the longest window of their source;
    features without one (recency, all-time aggregates) read the whole history, narrowed to
    the events their filters can match. Each event is joined to the snapshots it can count for
    (not to every snapshot), which is where the time goes at scale.
    """
    from pyspark.sql import functions as F

    frames = []
    for source_name, source in contract.sources.items():
        specs = [f for f in contract.features if f.derive.event_source == source_name]
        time_col = source.event_time or ""
        windowed = [f for f in specs if _window_days(f)]
        unbounded = [f for f in specs if not _window_days(f)]
        for group in (windowed, unbounded):
            if not group:
                continue
            days = {d for d in (_window_days(f) for f in group) if d}
            bounds = _snapshot_bounds(contract, snapshots, days)
            in_range = F.col(time_col) < F.col("_snapshot_ts")
            if days:
                in_range = in_range & (F.col(time_col) >= F.col(f"_since_{max(days)}"))
            candidates = events[source_name]
            filters = [_filter_of(f) for f in group]
            if all(filters):
                candidates = candidates.filter(F.expr(" or ".join(f"({f})" for f in filters)))
            joined = candidates.join(bounds, in_range)
            expressions = []
            for spec in group:
                if spec.derive.aggregate:
                    sql = aggregate_expression(contract, time_col, spec.derive.aggregate)
                else:
                    assert spec.derive.recency is not None
                    sql = recency_expression(contract, time_col, spec.derive.recency)
                expressions.append(F.expr(sql).alias(spec.name))
            frames.append(
                joined.groupBy(contract.entity_key, contract.snapshot_column).agg(*expressions)
            )
    return frames


def entity_base(contract: FeatureContract, entities: DataFrame) -> DataFrame:
    """Entity rows, one per snapshot in which the entity is eligible (exists, not yet churned)."""
    from pyspark.sql import functions as F

    if contract.snapshot is None:
        return entities
    snapshot = contract.snapshot
    dates = entities.sparkSession.createDataFrame(
        [(d,) for d in snapshot.dates], f"`{snapshot.column}` date"
    )
    base = entities.crossJoin(dates).filter(F.col(snapshot.entity_since) < F.col(snapshot.column))
    if contract.label.kind == "event_within_horizon":
        label_col = contract.label.column
        base = base.filter(
            F.col(label_col).isNull() | (F.col(label_col) >= F.expr(_snapshot_ts(contract)))
        )
    return base


def _label_expression(contract: FeatureContract) -> str:
    label = contract.label
    if label.kind == "column":
        values = ", ".join("'" + v.replace("'", "''") + "'" for v in label.positive)
        return f"case when `{label.column}` in ({values}) then 1 else 0 end"
    horizon = contract.snapshot.horizon_days if contract.snapshot else 0
    return (
        f"case when `{label.column}` >= {_snapshot_ts(contract)} and "
        f"`{label.column}` < {_snapshot_ts(contract, horizon)} then 1 else 0 end"
    )


def _feature_expression(spec: FeatureSpec) -> str:
    if spec.derive.column:
        return f"`{spec.derive.column}`"
    if spec.derive.sql:
        return spec.derive.sql
    default = spec.derive.aggregate.default if spec.derive.aggregate else None
    if spec.derive.aggregate and (spec.derive.aggregate.fn == "count" or default is not None):
        # A typed literal: an untyped one let Sail widen the column to DECIMAL, which overflowed.
        return f"coalesce(`{spec.name}`, cast({default if default is not None else 0} as double))"
    return f"`{spec.name}`"


def gold_features(
    contract: FeatureContract, entities: DataFrame, events: Mapping[str, DataFrame]
) -> DataFrame:
    """The gold feature frame from silver DataFrames: pure DataFrame code, columns in contract order.

    ``entities`` is the entity source, ``events`` maps each events source name to its frame. No
    tables are read here, so the same function runs on any Spark Connect engine.
    """
    from pyspark.sql import functions as F

    frame = entity_base(contract, entities)
    keys = [contract.entity_key] + ([contract.snapshot_column] if contract.snapshot else [])
    if contract.snapshot:
        dates = frame.select(contract.snapshot_column).distinct()
        for features in event_features(contract, events, dates):
            frame = frame.join(features, keys, "left")
    frame = frame.withColumn(contract.label.name, F.expr(_label_expression(contract)))
    # In contract order, replacing columns in place: a derived feature sees the final values
    # of the features declared before it.
    for spec in contract.features:
        frame = frame.withColumn(spec.name, F.expr(_feature_expression(spec)))
    return frame.select(*[F.col(n).cast(k).alias(n) for n, k in contract.gold_columns()])


def gold_frame(spark: SparkSession, contract: FeatureContract, tables: Tables) -> DataFrame:
    """The gold feature frame over the silver Delta tables (not yet written)."""
    entity_source = contract.entity_source_name
    sources = {
        name: spark.read.format("delta").load(str(tables.silver(name))) for name in contract.sources
    }
    events = {name: frame for name, frame in sources.items() if name != entity_source}
    return gold_features(contract, sources[entity_source], events)


def gold_inputs(contract: FeatureContract, tables: Tables) -> dict[str, object]:
    """What a gold build depends on: the contract's content and each silver table's version."""
    return {
        "contract_sha256": hashlib.sha256(contract.model_dump_json().encode()).hexdigest(),
        "silver_versions": {
            name: DeltaTable(str(tables.silver(name))).version() for name in contract.sources
        },
    }


def last_gold_inputs(target: Path) -> dict[str, object] | None:
    """The inputs recorded with the current gold version (None if there is no gold yet)."""
    if not table_exists(target):
        return None
    metadata = DeltaTable(str(target)).history(1)[0].get("userMetadata")
    if not metadata:
        return None
    recorded: dict[str, object] = json.loads(metadata)
    return recorded


def build_gold(spark: SparkSession, contract: FeatureContract, tables: Tables) -> GoldSummary:
    """Write the gold feature table, recording its inputs in the Delta commit.

    When neither the contract nor any silver table changed since the last build, nothing is
    written: re-running the job leaves the table at the same version.
    """
    started = time.perf_counter()
    target = tables.gold_features
    inputs = gold_inputs(contract, tables)
    written = last_gold_inputs(target) != inputs
    if written:
        gold_frame(spark, contract, tables).write.format("delta").mode("overwrite").option(
            "overwriteSchema", "true"
        ).option("userMetadata", json.dumps(inputs, sort_keys=True)).save(str(target))
    stats = (
        spark.read.format("delta")
        .load(str(target))
        .agg({contract.label.name: "sum"})
        .collect()[0][0]
    )
    return GoldSummary(
        rows=table_rows(target),
        snapshots=len(contract.snapshot.dates) if contract.snapshot else 0,
        positives=int(stats or 0),
        seconds=time.perf_counter() - started,
        written=written,
    )
