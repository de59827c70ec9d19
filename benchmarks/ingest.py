"""The gold feature job on embedded Sail versus the same features in single-process polars, same run.

Usage: ``python -m benchmarks.ingest [--customers 1000000] [--repeats 3] [--keep]``.

Inputs are the deterministic sample data (``pipelines.sample_data``; 1M customers give ~10.7M
transaction events and ~10.7M support records), cached under ``var/bench/ingest/`` keyed by the
generator arguments and the generator's source, and turned into typed, de-duplicated silver Delta
tables with pyarrow + delta-rs (cached too, keyed by the contract). Neither step is timed.

Timed, each side from reading the silver Delta tables to the committed gold Delta table:

* Sail: the project's own ``pipelines.features.gold_features`` on an embedded Sail server.
* polars: the same contract translated to a lazy polars query (the contract's SQL filters and
  derivations go through ``pl.sql_expr``; Spark's ``datediff`` is rewritten), written with
  delta-rs.

Runs alternate (Sail, polars, Sail, ...) and medians are reported. Afterwards both gold tables are
compared on every row and column (floats to 1e-9 relative) and the run fails if they differ.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import re
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from deltalake import write_deltalake

from churn_core.contract import (
    SPARK_SOURCE_TYPES,
    Aggregate,
    FeatureContract,
    FeatureSpec,
    Recency,
    SourceSpec,
    load_contract,
)
from churn_core.settings import PACKAGE_CONFIG_DIR, SparkSettings
from pipelines import sample_data
from pipelines.delta import table_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONTRACT = PACKAGE_CONFIG_DIR / "contracts" / f"{sample_data.SAMPLE_DATASET}.yaml"
FLOAT_TOLERANCE = 1e-9
SILVER_FORMAT = b"silver-v1"  # part of the silver cache key: bump when the silver build changes

# How each contract type is parsed from the raw files (text-like types as text, cast afterwards)
# and stored in silver (what Spark writes for SPARK_SOURCE_TYPES: timestamps are UTC instants).
_PARSE_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "double": pa.float64(),
    "date": pa.string(),
    "timestamp": pa.string(),
    "boolean": pa.bool_(),
}
_SILVER_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),  # Spark bigint
    "double": pa.float64(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "boolean": pa.bool_(),
}
assert set(_SILVER_TYPES) == set(SPARK_SOURCE_TYPES)
_GOLD_POLARS_TYPES: dict[str, Any] = {
    "string": pl.String,
    "date": pl.Date,
    "double": pl.Float64,
    "int": pl.Int32,
    "boolean": pl.Boolean,
}


class BenchmarkError(RuntimeError):
    """The inputs are not what the contract declares, or the two engines disagree."""


# --- inputs -------------------------------------------------------------------------------------


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:10]


def cached_sample_data(cache: Path, customers: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """Generated raw files for these arguments (generated once; the key includes the generator)."""
    generator = Path(sample_data.__file__).read_bytes()
    folder = cache / f"c{customers}-s{seed}-{_digest(generator)}"
    raw, marker = folder / "raw", folder / "raw.json"
    if marker.exists():
        return raw, {**json.loads(marker.read_text()), "cached": True}
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted generation, or silver of older raw files
    print(f"generating sample data for {customers:,} customers into {raw} ...", flush=True)
    summary = sample_data.generate_sample_data(raw, customers, seed)
    marker.write_text(json.dumps(asdict(summary)))
    return raw, {**asdict(summary), "cached": False}


def _files(location: Path, suffix: str) -> list[Path]:
    if location.is_file():
        return [location]
    return sorted(
        p for p in location.rglob(f"*{suffix}") if p.is_file() and not p.name.startswith((".", "_"))
    )


def _parse_schema(spec: SourceSpec) -> pa.Schema:
    return pa.schema([pa.field(c, _PARSE_TYPES[t]) for c, t in spec.columns.items()])


def _read_pages(files: list[Path], spec: SourceSpec, batch: int = 256) -> pa.Table:
    """Records of page files (one JSON object each, records in ``records_field``), vectorised."""
    page_schema = pa.schema(
        [pa.field(spec.records_field, pa.list_(pa.struct(list(_parse_schema(spec)))))]
    )
    options = pajson.ParseOptions(
        explicit_schema=page_schema, unexpected_field_behavior="ignore", newlines_in_values=True
    )
    parts = []
    for first in range(0, len(files), batch):
        text = b"\n".join(f.read_bytes() for f in files[first : first + batch])
        pages = pajson.read_json(io.BytesIO(text), parse_options=options)
        records = pc.list_flatten(pages.column(spec.records_field)).combine_chunks()
        parts.append(pa.Table.from_struct_array(records))
    return pa.concat_tables(parts)


def read_raw(spec: SourceSpec, location: Path) -> pa.Table:
    """One source's raw files as a table of its declared columns (not yet typed)."""
    suffix = {"parquet": ".parquet", "csv": ".csv", "jsonl": "", "json_pages": ".json"}[spec.format]
    files = _files(location, suffix)
    if not files:
        raise BenchmarkError(f"no {spec.format} files under {location}")
    columns = list(spec.columns)
    if spec.format == "parquet":
        table = pa.concat_tables(pq.read_table(f) for f in files)
    elif spec.format == "csv":
        convert = pacsv.ConvertOptions(
            column_types=_parse_schema(spec), include_columns=columns, strings_can_be_null=True
        )
        table = pa.concat_tables(pacsv.read_csv(f, convert_options=convert) for f in files)
    elif spec.format == "jsonl":
        options = pajson.ParseOptions(
            explicit_schema=_parse_schema(spec), unexpected_field_behavior="ignore"
        )
        table = pa.concat_tables(pajson.read_json(f, parse_options=options) for f in files)
    else:
        table = _read_pages(files, spec)
    absent = [c for c in columns if c not in table.column_names]
    if absent:
        raise BenchmarkError(f"{location}: declared columns missing from the files: {absent}")
    return table.select(columns)


def _typed(table: pa.Table, spec: SourceSpec) -> pa.Table:
    """Cast to the silver types; a value that does not cast fails the benchmark (no quarantine)."""
    arrays = []
    for name, kind in spec.columns.items():
        column = table.column(name)
        if kind == "timestamp" and pa.types.is_string(column.type):
            column = column.cast(pa.timestamp("us"))  # naive ISO text, UTC like the sample data
        if pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = pc.assume_timezone(column.cast(pa.timestamp("us")), "UTC")
        arrays.append(column.cast(_SILVER_TYPES[kind]))
    return pa.Table.from_arrays(
        arrays, schema=pa.schema([(n, _SILVER_TYPES[k]) for n, k in spec.columns.items()])
    )


def _deduplicated(table: pa.Table, spec: SourceSpec) -> pa.Table:
    """One row per key, the latest by order_by/event_time, ties on the values (as silver does)."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    duplicated = frame.select(pl.struct(spec.key).is_duplicated()).to_series()
    if not duplicated.any():
        return table
    latest = spec.order_by or spec.event_time
    order = ([latest] if latest else []) + [c for c in spec.columns if c not in spec.key]
    winners = (
        frame.filter(duplicated)
        .sort(
            order, descending=[bool(latest) and i == 0 for i in range(len(order))], nulls_last=True
        )
        .unique(subset=spec.key, keep="first", maintain_order=True)
    )
    return pl.concat([frame.filter(~duplicated), winners]).to_arrow()


def cached_silver(
    contract: FeatureContract, contract_text: bytes, raw: Path
) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """Typed, de-duplicated silver Delta tables of every contract source, built once per contract."""
    folder = raw.parent / f"silver-{_digest(SILVER_FORMAT, contract_text)}"
    marker = folder / "silver.json"
    paths = {name: folder / name for name in contract.sources}
    if marker.exists():
        return paths, json.loads(marker.read_text())
    for stale in raw.parent.glob("silver-*"):  # this folder unfinished, or an older contract's
        shutil.rmtree(stale)
    counts = {}
    for name, spec in contract.sources.items():
        location = raw / spec.path
        if not location.exists():
            raise BenchmarkError(
                f"the contract declares source {name!r} at {location}, but the sample data has no "
                f"such files: the generator and the contract disagree"
            )
        started = time.perf_counter()
        table = read_raw(spec, location)
        silver = _deduplicated(_typed(table, spec), spec)
        write_deltalake(str(paths[name]), silver, mode="overwrite", target_file_size=64 << 20)
        counts[name] = {"raw": table.num_rows, "silver": silver.num_rows}
        print(
            f"silver {name}: {table.num_rows:,} raw -> {silver.num_rows:,} rows "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        del table, silver
    marker.write_text(json.dumps(counts))
    return paths, counts


# --- Sail: the project's gold job ---------------------------------------------------------------


def sail_gold(
    spark: SparkSession, contract: FeatureContract, silver: Mapping[str, Path], target: Path
) -> None:
    """Run ``gold_features`` over the silver Delta tables and commit the gold Delta table."""
    from pipelines.features import gold_features

    frames = {n: spark.read.format("delta").load(str(p)) for n, p in silver.items()}
    entity = contract.entity_source_name
    events = {n: f for n, f in frames.items() if n != entity}
    gold_features(contract, frames[entity], events).write.format("delta").mode("overwrite").option(
        "overwriteSchema", "true"
    ).save(str(target))


# --- polars: the same contract, single process --------------------------------------------------


def _split_call(sql: str, open_paren: int) -> tuple[list[str], int]:
    """Top-level arguments of the call whose ``(`` is at ``open_paren``, and the index after ``)``."""
    depth, quote, args, start = 0, "", [], open_paren + 1
    for i in range(open_paren, len(sql)):
        char = sql[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i].strip())
                return args, i + 1
        elif char == "," and depth == 1:
            args.append(sql[start:i].strip())
            start = i + 1
    raise BenchmarkError(f"unbalanced parentheses in contract SQL: {sql!r}")


_DATEDIFF = re.compile(r"\bdatediff\s*\(", re.IGNORECASE)


def polars_sql(sql: str) -> str:
    """Spark SQL of the contract as polars SQL: ``datediff(a, b)`` is the only function rewritten.

    Anything else polars does not know fails loudly in ``pl.sql_expr`` rather than silently
    computing something else.
    """
    while match := _DATEDIFF.search(sql):
        args, end = _split_call(sql, match.end() - 1)
        if len(args) != 2:
            raise BenchmarkError(f"datediff takes two arguments: {sql!r}")
        end_day, start_day = (f"cast(cast({polars_sql(a)} as date) as int)" for a in args)
        sql = f"{sql[: match.start()]}({end_day} - {start_day}){sql[end:]}"
    return sql


def sql_expr(sql: str) -> pl.Expr:
    """A contract SQL expression as a polars expression."""
    return pl.sql_expr(polars_sql(sql))


class PolarsGold:
    """``pipelines.features.gold_features`` re-derived from the contract in polars.

    Spark semantics kept: events strictly before the snapshot (midnight in the session time
    zone), a window keeps ``event_time >= snapshot - window_days``, ``count`` counts matching
    rows, ``sum``/``avg``/``max``/``min`` of no matching value is null, a count or an aggregate
    with a default is coalesced to it, features are derived in contract order (a derived feature
    sees the final values of the ones before it) and cast to the gold types.
    """

    def __init__(self, contract: FeatureContract, time_zone: str) -> None:
        self.contract = contract
        self.time_zone = time_zone

    def _snapshot_ts(self, days: int = 0) -> pl.Expr:
        """``cast(date_add(snapshot, days) as timestamp)`` as a UTC instant."""
        date = pl.col(self.contract.snapshot_column)
        if days:
            date = date + pl.duration(days=days)
        return (
            date.cast(pl.Datetime("us"))
            .dt.replace_time_zone(self.time_zone)
            .dt.convert_time_zone("UTC")
        )

    def _entity_base(self, entities: pl.LazyFrame) -> pl.LazyFrame:
        """Entity rows per snapshot in which they are eligible, with ``_ts`` (the snapshot instant)."""
        snapshot = self.contract.snapshot
        if snapshot is None:
            return entities
        dates = pl.LazyFrame(
            {snapshot.column: snapshot.dates}, schema={snapshot.column: pl.Date}
        ).with_columns(self._snapshot_ts().alias("_ts"))
        base = entities.join(dates, how="cross").filter(
            pl.col(snapshot.entity_since) < pl.col(snapshot.column)
        )
        label = self.contract.label
        if label.kind == "event_within_horizon":
            column = pl.col(label.column)
            base = base.filter(column.is_null() | (column >= pl.col("_ts")))
        return base

    @staticmethod
    def _aggregate(time_col: str, agg: Aggregate) -> pl.Expr:
        conditions = []
        if agg.window_days:
            conditions.append(pl.col(time_col) >= pl.col(f"_since_{agg.window_days}"))
        if agg.filter:
            conditions.append(sql_expr(agg.filter))
        value = pl.lit(1) if agg.fn == "count" else pl.col(agg.value or "")
        if conditions:
            value = pl.when(pl.all_horizontal(conditions)).then(value)
        if agg.fn == "count":
            return value.count() if conditions else pl.len()
        reduced = {"sum": value.sum(), "avg": value.mean(), "max": value.max(), "min": value.min()}
        # polars sums nothing to 0, Spark to null.
        return pl.when(value.count() > 0).then(reduced[agg.fn])

    def _last_time(self, time_col: str, rec: Recency) -> pl.Expr:
        """Date (in the session time zone) of the last matching event: ``recency`` before datediff."""
        times = pl.col(time_col)
        if rec.filter:
            times = pl.when(sql_expr(rec.filter)).then(times)
        return times.max().dt.convert_time_zone(self.time_zone).dt.date()

    def _event_features(
        self, events: Mapping[str, pl.LazyFrame], snapshots: pl.LazyFrame
    ) -> list[pl.LazyFrame]:
        contract = self.contract
        frames = []
        for source_name, source in contract.sources.items():
            specs = [f for f in contract.features if f.derive.event_source == source_name]
            if not specs:
                continue
            time_col = source.event_time or ""
            # The same plan as pipelines/features.py, so the ratio compares engines, not
            # algorithms: windowed features join only the snapshots whose longest window holds
            # the event; unwindowed ones the whole history, narrowed by their filters first.
            windowed = [f for f in specs if f.derive.aggregate and f.derive.aggregate.window_days]
            unbounded = [f for f in specs if f not in windowed]
            for group in (windowed, unbounded):
                if group:
                    frames.append(
                        self._group_features(events[source_name], snapshots, time_col, group)
                    )
        return frames

    def _group_features(
        self, events: pl.LazyFrame, snapshots: pl.LazyFrame, time_col: str, specs: list[Any]
    ) -> pl.LazyFrame:
        contract = self.contract
        keys = [contract.entity_key, contract.snapshot_column]
        windows = sorted(
            {s.derive.aggregate.window_days for s in specs if s.derive.aggregate} - {None}
        )
        bounds = snapshots.with_columns(
            *[self._snapshot_ts(-int(w)).alias(f"_since_{w}") for w in windows]
        )
        filters = [(s.derive.aggregate or s.derive.recency).filter for s in specs]
        if all(filters):
            events = events.filter(sql_expr(" or ".join(f"({f})" for f in filters)))
        conditions = [pl.col(time_col) < pl.col("_ts")]
        if windows:
            conditions.append(pl.col(time_col) >= pl.col(f"_since_{max(windows)}"))
        joined = events.join_where(bounds, *conditions)
        expressions, recencies = [], []
        for spec in specs:
            if spec.derive.aggregate:
                expression = self._aggregate(time_col, spec.derive.aggregate)
            else:
                assert spec.derive.recency is not None
                expression = self._last_time(time_col, spec.derive.recency)
                recencies.append(spec.name)
            expressions.append(expression.alias(spec.name))
        snapshot_date = pl.col(contract.snapshot_column)
        return (
            joined.group_by(keys)
            .agg(expressions)
            .with_columns((snapshot_date - pl.col(n)).dt.total_days().alias(n) for n in recencies)
        )

    def _label(self) -> pl.Expr:
        label = self.contract.label
        column = pl.col(label.column)
        if label.kind == "column":
            positive = column.is_in(label.positive).fill_null(False)
        else:
            horizon = self.contract.snapshot.horizon_days if self.contract.snapshot else 0
            positive = (
                (column >= self._snapshot_ts()) & (column < self._snapshot_ts(horizon))
            ).fill_null(False)
        return pl.when(positive).then(1).otherwise(0)

    @staticmethod
    def _feature(spec: FeatureSpec) -> pl.Expr:
        derive = spec.derive
        if derive.column:
            return pl.col(derive.column)
        if derive.sql:
            return sql_expr(derive.sql)
        default = derive.aggregate.default if derive.aggregate else None
        if derive.aggregate and (derive.aggregate.fn == "count" or default is not None):
            fill = pl.lit(default if default is not None else 0, dtype=pl.Float64)
            return pl.coalesce(pl.col(spec.name).cast(pl.Float64), fill)
        return pl.col(spec.name)

    def gold(self, entities: pl.LazyFrame, events: Mapping[str, pl.LazyFrame]) -> pl.LazyFrame:
        """The gold frame, columns in contract order (the analogue of ``gold_features``)."""
        contract = self.contract
        frame = self._entity_base(entities)
        if contract.snapshot:
            keys = [contract.entity_key, contract.snapshot_column]
            snapshots = frame.select(contract.snapshot_column, "_ts").unique()
            for features in self._event_features(events, snapshots):
                frame = frame.join(features, keys, "left")
        frame = frame.with_columns(self._label().alias(contract.label.name))
        for spec in contract.features:
            frame = frame.with_columns(self._feature(spec).alias(spec.name))
        return frame.select(
            pl.col(n).cast(_GOLD_POLARS_TYPES[k]).alias(n) for n, k in contract.gold_columns()
        )


def polars_gold(
    contract: FeatureContract, silver: Mapping[str, Path], target: Path, time_zone: str
) -> None:
    """Compute the gold frame in polars from the silver Delta tables and commit it to Delta."""
    frames = {n: pl.scan_delta(str(p)) for n, p in silver.items()}
    entity = contract.entity_source_name
    events = {n: f for n, f in frames.items() if n != entity}
    gold = PolarsGold(contract, time_zone).gold(frames[entity], events).collect()
    write_deltalake(
        str(target),
        gold.to_arrow().cast(contract.gold_arrow_schema()),
        mode="overwrite",
        schema_mode="overwrite",
    )


# --- checks and report --------------------------------------------------------------------------


def _mismatch(sail: pl.Series, base: pl.Series) -> pl.Series:
    """True where two columns differ (nulls equal nulls, floats within FLOAT_TOLERANCE)."""
    both_null = sail.is_null() & base.is_null()
    if sail.dtype.is_float():
        close = (sail - base).abs() <= FLOAT_TOLERANCE * base.abs().clip(lower_bound=1.0)
        same = close | (sail.is_nan() & base.is_nan())
    else:
        same = sail == base
    return ~(both_null | same.fill_null(False))


def compare_gold(contract: FeatureContract, sail_path: Path, base_path: Path) -> pl.DataFrame:
    """Both gold tables, checked equal on every row and column; raises ``BenchmarkError`` if not."""
    keys = [contract.entity_key] + ([contract.snapshot_column] if contract.snapshot else [])
    sail = pl.read_delta(str(sail_path)).sort(keys)
    base = pl.read_delta(str(base_path)).sort(keys)
    problems = []
    if sail.schema != base.schema:
        problems.append(f"schemas differ:\n  Sail   {sail.schema}\n  polars {base.schema}")
    elif sail.height != base.height:
        problems.append(f"row counts differ: Sail {sail.height:,}, polars {base.height:,}")
    elif sail.select(keys).n_unique() != sail.height:
        problems.append("gold keys are not unique")
    else:
        for name in sail.columns:
            bad = _mismatch(sail[name], base[name])
            count = int(bad.sum())
            if count:
                rows = pl.concat(
                    [
                        sail.filter(bad).select(*keys, pl.col(name).alias("sail")).head(5),
                        base.filter(bad).select(pl.col(name).alias("polars")).head(5),
                    ],
                    how="horizontal",
                )
                problems.append(f"{name}: {count:,} rows differ, e.g.\n{rows}")
    if problems:
        raise BenchmarkError("Sail and polars gold tables differ:\n" + "\n".join(problems))
    return sail


def snapshot_pairs(
    contract: FeatureContract, silver: Mapping[str, Path], dates: list[Any], time_zone: str
) -> dict[str, int]:
    """Per events source with features: (event, snapshot) pairs with the event before the snapshot.

    This is the row count both engines aggregate after the point-in-time join (the job's real
    work: every event counts once for each later snapshot).
    """
    pairs = {}
    for name, source in contract.sources.items():
        if not any(f.derive.event_source == name for f in contract.features):
            continue
        times = pl.scan_delta(str(silver[name])).select(source.event_time or "")
        instants = [
            pl.lit(d, dtype=pl.Date)
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone(time_zone)
            .dt.convert_time_zone("UTC")
            for d in dates
        ]
        counts = times.select(
            [
                (pl.col(source.event_time or "") < t).sum().alias(str(i))
                for i, t in enumerate(instants)
            ]
        ).collect()
        pairs[name] = int(sum(counts.row(0)))
    return pairs


def _cpu_seconds() -> float:
    """CPU time of this process: Sail runs in-process, so its worker threads count here too."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(run: Callable[[], None]) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    gc.collect()
    wall, cpu = time.perf_counter(), _cpu_seconds()
    run()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="sample customers")
    parser.add_argument("--seed", type=int, default=7, help="sample data seed")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine (median)")
    parser.add_argument("--contract", type=Path, default=DEFAULT_CONTRACT, help="contract file")
    parser.add_argument(
        "--cache-dir", type=Path, default=ROOT / "var" / "bench" / "ingest", help="input cache"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep both gold tables (deleted after the run otherwise)",
    )
    parser.add_argument("--explain", action="store_true", help="print Sail's physical plan")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _print_plan(spark: SparkSession, contract: FeatureContract, silver: Mapping[str, Path]) -> None:
    from pipelines.features import gold_features

    frames = {n: spark.read.format("delta").load(str(p)) for n, p in silver.items()}
    entity = contract.entity_source_name
    events = {n: f for n, f in frames.items() if n != entity}
    gold_features(contract, frames[entity], events).explain(mode="formatted")


def main(argv: list[str] | None = None) -> None:
    """Prepare (or reuse) the inputs, time both engines alternately, check and print."""
    from pipelines.session import spark_session

    args = parse_args(argv)
    contract = load_contract(args.contract)
    raw, generated = cached_sample_data(args.cache_dir, args.customers, args.seed)
    silver, counts = cached_silver(contract, args.contract.read_bytes(), raw)
    gold_dir = raw.parent / "gold"
    sail_path, base_path = gold_dir / "sail", gold_dir / "polars"
    if gold_dir.exists():
        shutil.rmtree(gold_dir)

    load_before = os.getloadavg()[0]
    timings: dict[str, list[tuple[float, float]]] = {"Sail": [], "polars": []}
    with spark_session(SparkSettings()) as spark:
        time_zone = str(spark.conf.get("spark.sql.session.timeZone"))
        if args.explain:
            _print_plan(spark, contract, silver)
        runs: dict[str, Callable[[], None]] = {
            "Sail": lambda: sail_gold(spark, contract, silver, sail_path),
            "polars": lambda: polars_gold(contract, silver, base_path, time_zone),
        }
        for repeat in range(args.repeats):
            for engine, run in runs.items():
                timings[engine].append(measure(run))
            print(
                f"run {repeat + 1}/{args.repeats}: "
                + ", ".join(
                    f"{e} {t[-1][0]:.2f} s (cpu {t[-1][1]:.1f} s)" for e, t in timings.items()
                ),
                flush=True,
            )
    load_after = os.getloadavg()[0]

    gold = compare_gold(contract, sail_path, base_path)
    rows = table_rows(sail_path)
    if rows != gold.height:
        raise BenchmarkError(f"Delta log says {rows:,} gold rows, the table holds {gold.height:,}")
    positives = int(gold[contract.label.name].sum())
    dates = gold[contract.snapshot_column].unique().to_list() if contract.snapshot else []
    del gold
    pairs = snapshot_pairs(contract, silver, dates, time_zone) if dates else {}

    entity = contract.entity_source_name
    event_counts = {n: c for n, c in counts.items() if n != entity}
    events = sum(c["silver"] for c in event_counts.values())
    inputs = counts[entity]["silver"] + events
    wall = {e: statistics.median(w for w, _ in t) for e, t in timings.items()}
    cpu = {e: statistics.median(c for _, c in t) for e, t in timings.items()}
    origin = "cached" if generated["cached"] else f"generated in {generated['seconds']:.1f} s"
    print()
    print(f"inputs: {raw} ({origin}), silver Delta tables:")
    print(f"  {entity}: {counts[entity]['silver']:,} rows")
    for name, c in event_counts.items():
        joined = f", {pairs[name]:,} (event, snapshot) pairs to aggregate" if name in pairs else ""
        print(f"  {name}: {c['silver']:,} events ({c['raw']:,} raw){joined}")
    print(f"gold: {rows:,} rows ({len(dates)} snapshots, {positives:,} positive labels)")
    print()
    header = (
        f"{'engine':<32} {'gold rows':>10} {'median s':>9} {'cpu s':>7} "
        f"{'gold rows/s':>12} {'input rows/s':>13}  runs (s)"
    )
    print(header)
    print("-" * len(header))
    names = {
        "Sail": "Sail, gold_features (embedded)",
        "polars": f"polars {pl.__version__} (one process)",
    }
    for engine, label in names.items():
        runs_text = ", ".join(f"{w:.2f}" for w, _ in timings[engine])
        print(
            f"{label:<32} {rows:>10,} {wall[engine]:>9.2f} {cpu[engine]:>7.1f} "
            f"{rows / wall[engine]:>12,.0f} {inputs / wall[engine]:>13,.0f}  {runs_text}"
        )
    ratio = wall["polars"] / wall["Sail"]
    verdict = f"Sail {ratio:.1f}x faster" if ratio >= 1 else f"Sail {1 / ratio:.1f}x slower"
    print(
        f"ratio polars / Sail: {ratio:.2f}x wall-clock ({verdict}), "
        f"{cpu['polars'] / cpu['Sail']:.2f}x CPU time"
    )
    print(
        f"correctness: both gold tables equal on all {rows:,} rows x "
        f"{len(contract.gold_columns())} columns (floats to {FLOAT_TOLERANCE:g} relative)"
    )
    print(
        f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before and "
        f"{load_after:.1f} after; peak RSS of this process (both engines) {_peak_rss_gib():.1f} GiB"
    )
    print(
        f"summary: gold job, {counts[entity]['silver']:,} customers / {events:,} events -> "
        f"{rows:,} rows: Sail {wall['Sail']:.2f} s, polars {wall['polars']:.2f} s, "
        f"polars/Sail {ratio:.2f}x ({verdict})"
    )
    if not args.keep:
        shutil.rmtree(gold_dir)


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        sys.exit(1)
