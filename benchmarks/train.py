"""Ray Train XGBoost (2 workers) versus single-process ``xgboost.train``, same data, same run.

Usage: ``python -m benchmarks.train [--customers 400000]``. Builds (once, cached under
``var/bench/train``) the sample business's gold table through the project's own pipeline, sized
so the train split holds about 1M rows, then fits the same parameters both ways and prints wall
times, test ROC-AUCs and the ratio. Ray Train reads the splits through Ray Data, as
``churn train`` does; the single-process fit starts from the same rows already in memory.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from churn_core.contract import load_contract
from churn_core.model import ChurnModel, FeatureEncoder
from churn_core.ray_runtime import ray_session
from churn_core.settings import RaySettings, Settings, load_settings
from churn_core.tables import Tables
from pipelines.delta import table_exists
from training.data import LABEL_COLUMN, read_gold, split_gold
from training.train import booster_params, fit_xgboost


def build_gold(settings: Settings) -> Path:
    """Generate, ingest and build gold once per size (cached)."""
    from churn import cli

    target = Tables(settings.dataset_lake).gold_features
    if table_exists(target):
        return target
    cli.run_generate(settings)
    cli.run_spark_stages(settings)
    return target


def main() -> None:
    """Fit both ways once each and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=400_000)
    parser.add_argument(
        "--rounds", type=int, default=None, help="boosting rounds (default: settings)"
    )
    args = parser.parse_args()

    base = Path("var/bench/train") / f"c{args.customers}"
    settings = load_settings("local")
    settings = settings.model_copy(
        update={
            "raw_dir": base / "raw",
            "lake_dir": base / "lake",
            "sample": settings.sample.model_copy(update={"customers": args.customers}),
        }
    )
    training = settings.training
    if args.rounds:
        training = training.model_copy(update={"num_boost_round": args.rounds})
    contract = load_contract(settings.contract_path)
    gold_path = build_gold(settings)

    with ray_session(RaySettings(num_cpus=2)):
        splits = split_gold(read_gold(gold_path), contract, training)
        frames = {name: ds.to_pandas() for name, ds in splits.items()}
        rows = {name: len(frame) for name, frame in frames.items()}
        encoder = FeatureEncoder(contract)

        def matrix(name: str) -> xgb.DMatrix:
            frame = frames[name]
            features = frame[contract.feature_names].to_numpy(np.float32, na_value=np.nan)
            return encoder.dmatrix(features, frame[LABEL_COLUMN].to_numpy(np.float32))

        test = frames["test"]
        test_x = test[contract.feature_names].to_numpy(np.float32, na_value=np.nan)

        started = time.perf_counter()
        plain = xgb.train(
            booster_params(training, threads=2),
            matrix("train"),
            num_boost_round=training.num_boost_round,
            evals=[(matrix("valid"), "valid")],
            early_stopping_rounds=training.early_stopping_rounds,
            verbose_eval=False,
        )
        plain_s = time.perf_counter() - started
        plain_model = ChurnModel(plain[: plain.best_iteration + 1], contract)
        plain_auc = roc_auc_score(test[LABEL_COLUMN], plain_model.predict_matrix(test_x))

        started = time.perf_counter()
        fit = fit_xgboost(splits, contract, training, Path("var/bench/train/ray_results").resolve())
        ray_s = time.perf_counter() - started
        ray_model = ChurnModel.from_bytes(fit.model, contract, nthread=2)
        ray_auc = roc_auc_score(test[LABEL_COLUMN], ray_model.predict_matrix(test_x))

    features = len(contract.feature_names)
    print(
        f"data: train {rows['train']:,} x {features} features, valid {rows['valid']:,}, "
        f"test {rows['test']:,}; {training.num_boost_round} rounds max, params {training.params}"
    )
    print(f"{'fit':<44}{'seconds':>9}{'rounds':>8}{'test ROC-AUC':>14}")
    print(
        f"{'single-process xgboost.train (2 threads)':<44}{plain_s:>9.2f}"
        f"{plain.best_iteration + 1:>8}{plain_auc:>14.4f}"
    )
    print(
        f"{'Ray Train XGBoostTrainer (2 workers x 1 CPU)':<44}{ray_s:>9.2f}"
        f"{fit.best_iteration + 1:>8}{ray_auc:>14.4f}"
    )
    print(
        f"  of which inside xgboost.train on rank 0: {fit.boosting_seconds:.2f} s; Ray Train "
        f"and Ray Data around it: {ray_s - fit.boosting_seconds:.2f} s"
    )
    print(
        f"summary: train {rows['train']:,} rows: Ray Train {ray_s:.2f} s, single process "
        f"{plain_s:.2f} s, ratio {ray_s / plain_s:.2f}x; AUC {ray_auc:.4f} vs {plain_auc:.4f}"
    )


if __name__ == "__main__":
    main()
