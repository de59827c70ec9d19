"""5-fold stratified cross-validated ROC-AUC of the system's own tune + train procedure on IBM Telco.

Usage::

    python -m benchmarks.telco_cv                      # tune + Ray Train re-fit in every fold
    python -m benchmarks.telco_cv --refit local        # same, re-fit in-process (quicker)
    python -m benchmarks.telco_cv --refit both         # both re-fits of the same tuned params
    python -m benchmarks.telco_cv --compare-modes 4    # also: per-trial cost, local vs ray_train

What runs, per outer fold (the test fold is never seen by tuning or early stopping):

1. Gold is built once by the system's own stages (CSV -> bronze -> silver -> gold on Sail/Delta,
   ``configs/contracts/telco.yaml``) and encoded by ``FeatureEncoder`` (``training.data.encode_batch``),
   exactly as training does.
2. The outer training fold is split into fit / early-stopping-valid by the system's stable hash of
   ``customerID`` (valid = the same share training uses: 0.1 / (1 - 0.2) = 12.5 %).
3. ``training.tune.tune_model`` (Ray Tune, ASHA, ``configs/tune.yaml`` with its ``telco`` layer)
   searches on fit / valid.
4. The best configuration is re-fitted as training does (``fit_xgboost``: Ray Train, 2 workers,
   early stopping on valid), or in-process with the same parameters (``--refit local``), and the
   outer test fold is scored.

Reference (data README): logistic regression 0.844, tuned XGBoost 0.846 (5-fold CV).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from churn_core.contract import FeatureContract, load_contract
from churn_core.model import ChurnModel, FeatureEncoder
from churn_core.ray_runtime import ray_session
from churn_core.settings import RaySettings, Settings, TrainingSettings, load_settings
from churn_core.tables import Tables
from training.data import LABEL_COLUMN, encode_batch, hash_fraction
from training.train import booster_params, fit_xgboost
from training.tune import TuneSettings, load_tune_settings, tune_model

REPO_ROOT = Path(__file__).resolve().parents[1]
TELCO_DIR = REPO_ROOT.parent / "shared" / "data" / "telco"
TARGET_AUC = 0.845


def telco_settings(base: Path, raw_dir: Path) -> Settings:
    """Settings for a scratch run of the Telco data set under ``base``."""
    settings = load_settings("local")
    return settings.model_copy(
        update={
            "root": REPO_ROOT,
            "dataset": "telco",
            "raw_dir": raw_dir,
            "lake_dir": base / "lake",
            "training": settings.training.model_copy(update={"storage_path": base / "ray_results"}),
        }
    )


def build_gold(settings: Settings, contract: FeatureContract) -> pd.DataFrame:
    """CSV -> bronze -> silver -> gold with the system's own Spark (Sail) stages; gold as pandas."""
    from deltalake import DeltaTable

    from pipelines.features import build_gold as build_gold_table
    from pipelines.ingest import ingest_sources
    from pipelines.session import spark_session
    from pipelines.silver import build_silver

    tables = Tables(settings.dataset_lake)
    with spark_session(settings.spark) as spark:
        ingest_sources(spark, contract, settings, tables)
        build_silver(spark, contract, tables)
        build_gold_table(spark, contract, tables)
    return DeltaTable(str(tables.gold_features)).to_pandas()


def encode(
    gold: pd.DataFrame, contract: FeatureContract, training: TrainingSettings
) -> pd.DataFrame:
    """Encoded features + label (training's own encoding), plus the entity key for hash splits."""
    encoded = encode_batch(gold, contract, training).drop(columns="_split")
    encoded[contract.entity_key] = gold[contract.entity_key].astype(str).to_numpy()
    return encoded


def inner_split(
    fold: pd.DataFrame, contract: FeatureContract, training: TrainingSettings
) -> dict[str, pd.DataFrame]:
    """Fit / valid inside an outer training fold, by the system's stable hash of the entity key."""
    share = training.hash_split_valid_fraction / (1 - training.hash_split_test_fraction)
    valid = fold[contract.entity_key].map(hash_fraction) < share
    columns = [*contract.feature_names, LABEL_COLUMN]
    return {"train": fold.loc[~valid, columns], "valid": fold.loc[valid, columns]}


def arrays(frame: pd.DataFrame, contract: FeatureContract) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix and labels of an encoded frame."""
    features = frame[contract.feature_names].to_numpy(dtype=np.float32, na_value=np.nan)
    return features, frame[LABEL_COLUMN].to_numpy(dtype=np.float32)


def fit_local(
    split: dict[str, pd.DataFrame], contract: FeatureContract, training: TrainingSettings
) -> bytes:
    """``fit_xgboost``'s procedure in-process: same parameters, rounds and early stopping."""
    encoder = FeatureEncoder(contract)
    train, valid = (encoder.dmatrix(*arrays(split[k], contract)) for k in ("train", "valid"))
    booster = xgb.train(
        booster_params(training, threads=2),
        train,
        num_boost_round=training.num_boost_round,
        evals=[(valid, "valid")],
        early_stopping_rounds=training.early_stopping_rounds,
        verbose_eval=False,
    )
    return bytes(booster[: booster.best_iteration + 1].save_raw("ubj"))


def fit_ray_train(
    split: dict[str, pd.DataFrame],
    contract: FeatureContract,
    training: TrainingSettings,
    storage: Path,
) -> bytes:
    """The system's training step: Ray Train ``XGBoostTrainer`` on Ray Datasets of the split."""
    import ray.data

    datasets = {k: ray.data.from_pandas(v).materialize() for k, v in split.items()}
    return fit_xgboost(datasets, contract, training, storage).model


def score(model: bytes, test: pd.DataFrame, contract: FeatureContract) -> float:
    """ROC-AUC of a saved model on an encoded frame."""
    features, labels = arrays(test, contract)
    return float(
        roc_auc_score(
            labels, ChurnModel.from_bytes(model, contract, nthread=2).predict_matrix(features)
        )
    )


def cross_validate(
    settings: Settings,
    contract: FeatureContract,
    encoded: pd.DataFrame,
    tune: TuneSettings | None,
    refits: list[str],
    folds: int,
    seed: int,
) -> dict[str, Any]:
    """Per-fold AUCs of tune (if ``tune``) + each re-fit; tuning sees only the outer training fold."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = encoded[LABEL_COLUMN].to_numpy()
    aucs: dict[str, list[float]] = {refit: [] for refit in refits}
    params, seconds = [], []
    for index, (train_rows, test_rows) in enumerate(splitter.split(encoded, labels)):
        started = time.perf_counter()
        outer_train, outer_test = encoded.iloc[train_rows], encoded.iloc[test_rows]
        split = inner_split(outer_train, contract, settings.training)
        training = settings.training
        line = f"  fold {index}:"
        if tune is not None:
            result = tune_model(
                settings, contract, split, tune, name=f"telco-cv-fold{index}-{seed}", show=False
            )
            training = result.training_settings(settings.training)
            params.append(result.best_params)
            line += f" tune {result.seconds:5.1f} s (valid AUC {result.best_metric:.4f});"
        for refit in refits:
            fit_started = time.perf_counter()
            if refit == "ray-train":
                storage = settings.resolve(settings.training.storage_path)
                model = fit_ray_train(split, contract, training, storage)
            else:
                model = fit_local(split, contract, training)
            aucs[refit].append(score(model, outer_test, contract))
            line += (
                f" {refit} re-fit {time.perf_counter() - fit_started:5.1f} s,"
                f" test AUC {aucs[refit][-1]:.4f};"
            )
        seconds.append(time.perf_counter() - started)
        print(line + (f" best {fmt_params(params[-1])}" if params else ""), flush=True)
    return {"aucs": aucs, "params": params, "seconds": seconds}


def fmt_params(params: dict[str, Any]) -> str:
    """Short, stable rendering of a parameter set."""
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def summary(label: str, aucs: list[float]) -> str:
    """``mean ± sd`` and the per-fold figures."""
    mean, sd = statistics.fmean(aucs), statistics.stdev(aucs)
    return f"{label}: 5-fold ROC-AUC {mean:.4f} ± {sd:.4f}  folds [{', '.join(f'{a:.4f}' for a in aucs)}]"


def compare_modes(
    settings: Settings,
    contract: FeatureContract,
    encoded: pd.DataFrame,
    tune: TuneSettings,
    trials: int,
) -> None:
    """Per-trial wall time of the two trial modes on the same split and the same sampled configs."""
    split = inner_split(encoded, contract, settings.training)
    storage = settings.resolve(settings.training.storage_path)
    for label, fit in (("local", fit_local), ("ray-train", None)):
        started = time.perf_counter()
        if fit is None:
            fit_ray_train(split, contract, settings.training, storage)
        else:
            fit(split, contract, settings.training)
        print(
            f"  one {label} fit outside Tune (untuned params): {time.perf_counter() - started:5.1f} s"
        )
    for mode in ("local", "ray_train"):
        ts = tune.model_copy(update={"trial_mode": mode, "num_samples": trials})
        started = time.perf_counter()
        result = tune_model(settings, contract, split, ts, name=f"telco-modes-{mode}", show=False)
        wall = time.perf_counter() - started
        done = result.trials
        print(
            f"  {mode:9s}: {trials} trials in {wall:6.1f} s = {wall / trials:5.1f} s a trial "
            f"(trial bodies {done['seconds'].median():.1f} s median, {result.plan.max_concurrent} at once); "
            f"best valid AUC {result.best_metric:.4f}; statuses {done['status'].value_counts().to_dict()}",
            flush=True,
        )


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TELCO_DIR)
    parser.add_argument("--refit", choices=["ray-train", "local", "both"], default="ray-train")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=None, help="trials per fold")
    parser.add_argument("--no-baseline", action="store_true", help="skip the untuned baseline")
    parser.add_argument("--compare-modes", type=int, default=0, metavar="TRIALS")
    parser.add_argument("--skip-cv", action="store_true", help="only --compare-modes")
    args = parser.parse_args()
    refits = ["ray-train", "local"] if args.refit == "both" else [args.refit]

    started = time.perf_counter()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="telco-cv-") as scratch:
        settings = telco_settings(Path(scratch), args.data)
        contract = load_contract(settings.contract_path)
        gold = build_gold(settings, contract)
        encoded = encode(gold, contract, settings.training)
        print(
            f"gold: {len(gold):,} rows, {len(contract.feature_names)} features, "
            f"churn rate {encoded[LABEL_COLUMN].mean():.3f} ({time.perf_counter() - started:.1f} s)"
        )
        tune = load_tune_settings("telco", None)
        if args.num_samples:
            tune = tune.model_copy(update={"num_samples": args.num_samples})
        with ray_session(RaySettings(num_cpus=2)):
            if not args.skip_cv and not args.no_baseline:
                print("untuned (configs/base.yaml training.params), local re-fit:")
                base = cross_validate(
                    settings, contract, encoded, None, ["local"], args.folds, args.seed
                )
                results["untuned, local re-fit"] = base["aucs"]["local"]
            if not args.skip_cv:
                print(
                    f"tuned ({tune.num_samples} trials a fold, {tune.trial_mode} trials, "
                    f"ASHA) in every fold:"
                )
                tuned = cross_validate(
                    settings, contract, encoded, tune, refits, args.folds, args.seed
                )
                for refit in refits:
                    results[f"tuned, {refit} re-fit"] = tuned["aucs"][refit]
            if args.compare_modes:
                print("trial modes on one split:")
                compare_modes(settings, contract, encoded, tune, args.compare_modes)
    print()
    for label, aucs in results.items():
        print(summary(f"{label:24s}", aucs))
    for label, aucs in results.items():
        if label.startswith("tuned"):
            verdict = "meets" if statistics.fmean(aucs) >= TARGET_AUC else "MISSES"
            print(f"{label}: {verdict} the {TARGET_AUC} target")
    if results:
        print("reference (data README): tuned XGBoost 0.846, logistic regression 0.844")
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
