"""Ray Train XGBoost versus plain in-process xgboost.train on the same gold splits, same run.

Usage: ``python -m benchmarks.train_overhead`` after ``make run`` (reads the local gold table).
Prints both wall times, their ratio and both test ROC-AUCs (the models must agree in quality).
"""

from __future__ import annotations

import time

import numpy as np
import xgboost as xgb

from churn_core.contract import load_contract
from churn_core.model import ChurnModel, FeatureEncoder
from churn_core.ray_runtime import ray_session
from churn_core.settings import load_settings
from churn_core.tables import Tables
from training.data import LABEL_COLUMN, read_gold, split_gold
from training.evaluate import evaluate_scores
from training.train import booster_params, fit_xgboost


def main() -> None:
    """Run both fits once each and print the comparison."""
    settings = load_settings()
    contract = load_contract(settings.contract_path)
    with ray_session(settings.ray):
        splits = split_gold(
            read_gold(Tables(settings.dataset_lake).gold_features), contract, settings.training
        )
        frames = {name: ds.to_pandas() for name, ds in splits.items()}
        encoder = FeatureEncoder(contract)

        def matrix(name: str) -> xgb.DMatrix:
            frame = frames[name]
            features = frame[contract.feature_names].to_numpy(np.float32, na_value=np.nan)
            return encoder.dmatrix(features, frame[LABEL_COLUMN].to_numpy(np.float32))

        started = time.perf_counter()
        plain = xgb.train(
            booster_params(settings.training, threads=2),
            matrix("train"),
            num_boost_round=settings.training.num_boost_round,
            evals=[(matrix("valid"), "valid")],
            early_stopping_rounds=settings.training.early_stopping_rounds,
            verbose_eval=False,
        )
        plain_s = time.perf_counter() - started
        plain_model = plain[: plain.best_iteration + 1]

        started = time.perf_counter()
        fit = fit_xgboost(
            splits,
            contract,
            settings.training,
            settings.resolve(settings.training.storage_path),
            name="bench",
        )
        ray_s = time.perf_counter() - started

    test = frames["test"]
    features = test[contract.feature_names].to_numpy(np.float32, na_value=np.nan)
    labels = test[LABEL_COLUMN].to_numpy()
    plain_auc = evaluate_scores(labels, plain_model.inplace_predict(features))["roc_auc"]
    ray_auc = evaluate_scores(
        labels, ChurnModel.from_bytes(fit.model, contract).predict_matrix(features)
    )["roc_auc"]
    rows = len(frames["train"])
    print(f"train rows: {rows:,}  features: {len(contract.feature_names)}")
    print(f"plain xgboost.train (2 threads): {plain_s:6.2f} s  test ROC-AUC {plain_auc:.4f}")
    print(f"Ray Train XGBoostTrainer (2 workers): {ray_s:6.2f} s  test ROC-AUC {ray_auc:.4f}")
    print(f"ratio Ray Train / plain: {ray_s / plain_s:.1f}x")


if __name__ == "__main__":
    main()
