"""Batch scoring end to end (read Delta, score, write Delta) versus in-memory ``inplace_predict``.

Usage: ``python -m benchmarks.score [--customers 1000000] [--repeats 3]
[--engines spark,ray] [--reasons none,approximate]``. ``--reasons exact`` is accepted too
(TreeSHAP costs ~100x the prediction: a slow row of its own), and ``--engines ray-actors``
runs the Ray path with a callable class (``scoring.ray_compute: actors``) instead of tasks.

Inputs (not timed): the deterministic sample data and silver tables of ``benchmarks.ingest``
(cached under ``var/bench/ingest/``), the gold table built from them by the project's own
``gold_features`` on embedded Sail (cached under ``var/bench/score/``), and a champion trained
with plain XGBoost on gold's earlier snapshots (the training settings' parameters and rounds),
registered in a temporary registry. The latest snapshot's customers are scored.

Timed, in the same run:

* **in memory** (the baseline): the snapshot's rows already encoded as one float32 matrix in
  this process; one ``inplace_predict`` call with every core (plus ``pred_contribs`` when the
  row has reasons). Nothing is read or written.
* **spark**: ``pipelines.scoring.score_with_spark`` on embedded Sail: read the pinned gold
  version, ``mapInArrow`` (model cached per process), one ``replaceWhere`` commit of the slice,
  and the slice's row count read back.
* **ray**: ``pipelines.scoring_ray.score_with_ray`` (Ray Data; Ray is started before timing):
  row groups to pooled workers that read, score and return the scores; the driver commits the
  slice with delta-rs.

Each engine's first run is reported apart ("cold": it loads the model, and on Ray starts the
worker processes that import XGBoost); the ratio uses the median of the warm runs after it.
Every run rewrites the slice (``force``), and the slice is checked to hold every customer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from benchmarks.ingest import DEFAULT_CONTRACT, ROOT, cached_sample_data, cached_silver, sail_gold
from churn_core.contract import FeatureContract, load_contract
from churn_core.model import FeatureEncoder
from churn_core.prediction_log import query_delta
from churn_core.registry import LocalRegistry
from churn_core.settings import RaySettings, Settings, SparkSettings, load_settings
from churn_core.tables import Tables
from pipelines import features
from pipelines.scoring import ReasonsMode, ScoringPlan, encode_arrow, plan_scoring

TRAIN_ROWS = 300_000  # a sample of the earlier snapshots: enough for a realistic model


@dataclass(frozen=True)
class Timing:
    """One engine and reasons mode: the first run and the warm runs after it (seconds)."""

    cold: float
    warm: list[float]

    @property
    def median(self) -> float:
        """Median of the warm runs (the cold run when there are none)."""
        return statistics.median(self.warm) if self.warm else self.cold


def cached_gold(cache: Path, contract: FeatureContract, silver: dict[str, Path]) -> Path:
    """The gold table of these silver tables, built once by the project's gold job on Sail."""
    from pipelines.session import spark_session

    source = Path(features.__file__).read_bytes() + DEFAULT_CONTRACT.read_bytes()
    key = hashlib.sha256(source + json.dumps(sorted(map(str, silver.values()))).encode())
    target = cache / f"gold-{key.hexdigest()[:12]}"
    marker = target / "_built"
    if marker.exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    with spark_session(SparkSettings()) as spark:
        sail_gold(spark, contract, silver, target)
    marker.write_text("ok")
    print(f"gold built in {time.perf_counter() - started:.1f} s -> {target}", flush=True)
    return target


def train_champion(
    settings: Settings, contract: FeatureContract, gold: Path, registry: LocalRegistry
) -> None:
    """Fit the training settings' model on a sample of the earlier snapshots; make it champion."""
    dates = sorted(contract.snapshot.dates) if contract.snapshot else []
    before = f"WHERE snapshot_date < DATE '{dates[-1].isoformat()}'" if dates else ""
    rows = query_delta({"g": gold}, f"SELECT * FROM g {before} LIMIT {TRAIN_ROWS}")
    encoder = FeatureEncoder(contract)
    label = rows.column(contract.label.name).to_numpy().astype(np.float32)
    training = settings.training
    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "eval_metric": "logloss",
        "seed": training.seed,
        **training.params,
    }
    started = time.perf_counter()
    booster = xgb.train(
        params, encoder.dmatrix(encode_arrow(contract, rows), label), training.num_boost_round
    )
    print(
        f"champion: {training.num_boost_round} rounds on {rows.num_rows:,} rows "
        f"({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    meta = registry.register(
        settings.model_name,
        bytes(booster.save_raw("ubj")),
        contract,
        params={**params, "threshold": 0.5},
        metrics={},
        lineage={"benchmark": "benchmarks.score"},
        feature_importance={},
    )
    registry.set_alias(settings.model_name, "champion", meta.version)


def bench_settings(workdir: Path, reasons: ReasonsMode) -> Settings:
    """Local settings over the benchmark's lake and registry, with ``reasons``."""
    settings = load_settings("local")
    return settings.model_copy(
        update={
            "lake_dir": workdir / "lake",
            "registry": settings.registry.model_copy(update={"root": workdir / "registry"}),
            "scoring": settings.scoring.model_copy(update={"reasons": reasons}),
        }
    )


def in_memory(plan: ScoringPlan, repeats: int) -> Timing:
    """The baseline: one inplace_predict (and pred_contribs) over the encoded rows, all cores."""
    rows = query_delta(
        {"g": plan.gold_path},
        f"SELECT * FROM g WHERE snapshot_date = DATE '{plan.snapshot.isoformat()}'",
    )
    raw = plan.model.artifacts.read(plan.model.directory, "model.ubj", plan.model.sha256)
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    booster.set_param({"nthread": os.cpu_count() or 1})
    contract = plan.model.contract
    matrix = encode_arrow(contract, rows)
    dmatrix = FeatureEncoder(contract).dmatrix(matrix) if plan.reasons != "none" else None

    def run() -> None:
        booster.inplace_predict(matrix)
        if dmatrix is not None:
            booster.predict(
                dmatrix, pred_contribs=True, approx_contribs=plan.reasons == "approximate"
            )

    return timed(run, repeats)


def timed(run: Callable[[], object], repeats: int) -> Timing:
    """The first run apart, then ``repeats`` more."""
    started = time.perf_counter()
    run()
    cold = time.perf_counter() - started
    warm = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        warm.append(time.perf_counter() - started)
    return Timing(cold, warm)


def checked(plan: ScoringPlan, written: int) -> None:
    """Fail loudly unless the committed slice holds every customer of the snapshot."""
    if written != plan.rows:
        raise RuntimeError(f"the slice holds {written:,} rows, the snapshot {plan.rows:,}")


def engine_runs(
    engine: str, plan: ScoringPlan, settings: Settings, repeats: int, spark: object
) -> Timing:
    """Score the snapshot end to end with ``engine``: cold once, then ``repeats`` warm."""
    from pipelines.scoring import score_with_spark
    from pipelines.scoring_ray import score_with_ray

    scoring = settings.scoring.model_copy(
        update={"ray_compute": "actors" if engine == "ray-actors" else "tasks"}
    )

    def run() -> None:
        if engine == "spark":
            summary = score_with_spark(spark, plan, force=True)  # type: ignore[arg-type]
        else:
            summary = score_with_ray(plan, scoring, force=True)
        checked(plan, summary.written)

    return timed(run, repeats)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="sample customers")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per engine (median)")
    parser.add_argument("--engines", default="spark,ray")
    parser.add_argument("--reasons", default="none,approximate", help="none,approximate,exact")
    parser.add_argument("--keep", action="store_true", help="keep the scores table")
    args = parser.parse_args(argv)
    args.engines = [e for e in args.engines.split(",") if e]
    args.reasons = [r for r in args.reasons.split(",") if r]
    if not set(args.engines) <= {"spark", "ray", "ray-actors"}:
        parser.error("--engines: spark, ray and/or ray-actors")
    if not set(args.reasons) <= {"none", "approximate", "exact"}:
        parser.error("--reasons: none, approximate and/or exact")
    return args


def main(argv: list[str] | None = None) -> None:
    """Prepare inputs, time the baseline and each engine per reasons mode, print the ratios."""
    from churn_core.logging import configure_logging
    from churn_core.ray_runtime import ray_session
    from pipelines.session import spark_session

    args = parse_args(argv)
    configure_logging("WARNING")
    contract = load_contract(DEFAULT_CONTRACT)
    raw, _ = cached_sample_data(ROOT / "var" / "bench" / "ingest", args.customers, args.seed)
    silver, _ = cached_silver(contract, DEFAULT_CONTRACT.read_bytes(), raw)
    gold = cached_gold(ROOT / "var" / "bench" / "score", contract, silver)
    workdir = Path(tempfile.mkdtemp(prefix="bench-score-"))
    tables = Tables(workdir / "lake" / contract.name)
    tables.gold_features.parent.mkdir(parents=True)
    tables.gold_features.symlink_to(gold, target_is_directory=True)
    settings = bench_settings(workdir, "none")
    registry = LocalRegistry(workdir / "registry")
    train_champion(settings, contract, gold, registry)

    load_before = os.getloadavg()[0]
    results: list[tuple[str, str, int, Timing, Timing]] = []
    with (
        ray_session(RaySettings(num_cpus=os.cpu_count())),
        spark_session(SparkSettings()) as spark,
    ):
        for reasons in args.reasons:
            settings = bench_settings(workdir, reasons)
            plan = plan_scoring(settings, tables, registry)
            baseline = in_memory(plan, args.repeats)
            for engine in args.engines:
                timing = engine_runs(engine, plan, settings, args.repeats, spark)
                results.append((engine, reasons, plan.rows, timing, baseline))
                print_row(*results[-1])
    load_after = os.getloadavg()[0]
    print_report(results, args, gold, load_before, load_after)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


HEADER = (
    f"{'engine':<10} {'reasons':<12} {'rows':>9} {'cold s':>7} {'warm s':>7} {'rows/s':>11} "
    f"{'in-memory rows/s':>17} {'ratio':>6}  warm runs (s)"
)


def print_row(engine: str, reasons: str, rows: int, timing: Timing, baseline: Timing) -> None:
    """One engine and reasons mode against the in-memory baseline of the same mode."""
    if not getattr(print_row, "header", False):
        print("\n" + HEADER + "\n" + "-" * len(HEADER), flush=True)
        print_row.header = True  # type: ignore[attr-defined]
    rate, base = rows / timing.median, rows / baseline.median
    runs = ", ".join(f"{w:.2f}" for w in timing.warm)
    print(
        f"{engine:<10} {reasons:<12} {rows:>9,} {timing.cold:>7.2f} {timing.median:>7.2f} "
        f"{rate:>11,.0f} {base:>17,.0f} {rate / base:>6.2f}  {runs}",
        flush=True,
    )


def print_report(
    results: list[tuple[str, str, int, Timing, Timing]],
    args: argparse.Namespace,
    gold: Path,
    load_before: float,
    load_after: float,
) -> None:
    """What was measured, on what, and the summary line per engine."""
    print()
    print(
        f"inputs: {args.customers:,} sample customers -> gold {gold} "
        f"(latest snapshot scored); {args.repeats} warm runs per row, medians"
    )
    print(
        f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before and "
        f"{load_after:.1f} after (other work on the machine slows every column alike)"
    )
    for engine, reasons, rows, timing, baseline in results:
        ratio = baseline.median / timing.median
        base = "inplace_predict" if reasons == "none" else f"inplace_predict + {reasons} SHAP"
        print(
            f"summary: {engine} end to end, reasons={reasons}: {rows / timing.median:,.0f} rows/s "
            f"= {ratio:.0%} of in-memory {base} ({rows / baseline.median:,.0f} rows/s); "
            f"first run {rows / timing.cold:,.0f} rows/s"
        )


if __name__ == "__main__":
    main()
