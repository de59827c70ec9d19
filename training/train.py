"""Distributed XGBoost with Ray Train's ``XGBoostTrainer`` (train-function API).

Each worker builds a DMatrix from its shard; XGBoost's collective (set up by Ray Train) makes the
workers grow one model. Metrics are reported once, at the end: reporting every round cost ~2 s a
round on these machines.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from churn_core.contract import FeatureContract
from churn_core.model import FeatureEncoder
from churn_core.settings import TrainingSettings
from training.data import LABEL_COLUMN

if TYPE_CHECKING:
    import ray.data

MODEL_FILE = "model.ubj"


@dataclass(frozen=True)
class FitResult:
    """A fitted booster's bytes and what training reported."""

    model: bytes
    params: dict[str, Any]
    best_iteration: int
    valid_auc: float
    seconds: float
    # Time inside xgboost.train on rank 0; the rest of ``seconds`` is Ray Train and Ray Data.
    boosting_seconds: float = 0.0


def unique_run_name(prefix: str = "churn-xgboost") -> str:
    """A run name that no earlier run used."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def booster_params(
    settings: TrainingSettings, threads: int, scale_pos_weight: float | None = None
) -> dict[str, Any]:
    """XGBoost parameters: the configured ones plus the fixed objective, metrics and seed."""
    params: dict[str, Any] = {
        "objective": "binary:logistic",
        "eval_metric": ["logloss", "auc"],
        "tree_method": "hist",
        "nthread": threads,
        "seed": settings.seed,
        **settings.params,
    }
    if scale_pos_weight is not None:
        params["scale_pos_weight"] = scale_pos_weight
    return params


def positive_weight(settings: TrainingSettings, positives: int, rows: int) -> float | None:
    """``scale_pos_weight`` for the configured imbalance handling (None: unweighted)."""
    if settings.imbalance == "none":
        return None
    if settings.imbalance == "balanced":
        if positives == 0:
            raise ValueError("the train split has no positive labels")
        return (rows - positives) / positives
    return float(settings.imbalance)


class _PeriodicCheckpoint:
    """An XGBoost callback reporting a checkpoint to Ray Train every N rounds.

    Every worker must call ``ray.train.report`` (it is a collective); only rank 0 attaches the
    model. Reporting is not free here (~1-2 s), hence every N rounds rather than every round.
    """

    def __init__(self, every: int, rank: int, first_round: int) -> None:
        import xgboost as xgb

        class Callback(xgb.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
                done = first_round + epoch + 1
                if done % every == 0:
                    _report_progress(model, done, rank)
                return False

        self.callback = Callback()


def _report_progress(model: Any, rounds_done: int, rank: int) -> None:
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            model.save_model(os.path.join(directory, MODEL_FILE))
            checkpoint = Checkpoint.from_directory(directory)
        ray.train.report({"rounds_done": rounds_done, "final": False}, checkpoint=checkpoint)


def _resumed_booster() -> Any:
    """The booster of the last checkpoint if this run is resuming after a failure."""
    import ray.train
    import xgboost as xgb

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        booster = xgb.Booster()
        booster.load_model(os.path.join(directory, MODEL_FILE))
        return booster


def train_worker(config: dict[str, Any]) -> None:
    """Per-worker training loop (runs inside a Ray Train worker).

    Resumes from the last periodic checkpoint when Ray Train restarts a failed worker group
    (early stopping then restarts its patience count from the resumed round).
    """
    import ray.train
    import xgboost as xgb
    from ray.train import Checkpoint

    contract: FeatureContract = config["contract"]
    settings: TrainingSettings = config["settings"]
    rank = ray.train.get_context().get_world_rank()
    encoder = FeatureEncoder(contract)
    matrices = {}
    for split in ("train", "valid"):
        frame = ray.train.get_dataset_shard(split).materialize().to_pandas()
        matrices[split] = encoder.dmatrix(
            frame[contract.feature_names].to_numpy(dtype=np.float32, na_value=np.nan),
            frame[LABEL_COLUMN].to_numpy(dtype=np.float32),
        )
    loaded = time.perf_counter()
    resumed = _resumed_booster()
    first_round = resumed.num_boosted_rounds() if resumed is not None else 0
    booster = xgb.train(
        config["params"],
        matrices["train"],
        num_boost_round=max(0, settings.num_boost_round - first_round),
        # Validation only: an AUC over the train split every round (a sort of every row) was
        # a large share of the fit here, and nothing reads it.
        evals=[(matrices["valid"], "valid")],
        early_stopping_rounds=settings.early_stopping_rounds,
        verbose_eval=False,
        xgb_model=resumed,
        callbacks=[
            _PeriodicCheckpoint(settings.checkpoint_every_rounds, rank, first_round).callback
        ],
    )
    best = int(booster.best_iteration)
    metrics = {
        "boosting_s": time.perf_counter() - loaded,
        "best_iteration": best,
        # Early stopping watches the last metric of the last eval set: validation AUC.
        "valid_auc": float(booster.best_score),
        "resumed_from_round": first_round,
        "final": True,
    }
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            # Keep only the trees up to the best round: that is the model early stopping chose.
            booster[: best + 1].save_model(os.path.join(directory, MODEL_FILE))
            checkpoint = Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def _fit_keeping_signal_handler(trainer: Any) -> Any:
    """``trainer.fit()``, then put back the SIGINT handler that fit() replaces and never restores.

    Ray Train installs its own handler (abort the run) for the duration of a fit; left in place,
    it swallowed the Ctrl-C meant to stop a later ``churn serve``.
    """
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)


def fit_xgboost(
    datasets: dict[str, ray.data.Dataset],
    contract: FeatureContract,
    settings: TrainingSettings,
    storage_path: Path,
    name: str | None = None,
    scale_pos_weight: float | None = None,
) -> FitResult:
    """Fit on ``datasets['train']`` with early stopping on ``datasets['valid']``."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.xgboost import XGBoostTrainer

    started = time.perf_counter()
    params = booster_params(
        settings, threads=max(1, int(settings.cpus_per_worker)), scale_pos_weight=scale_pos_weight
    )
    trainer = XGBoostTrainer(
        train_worker,
        train_loop_config={"contract": contract, "settings": settings, "params": params},
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers,
            resources_per_worker={"CPU": settings.cpus_per_worker},
        ),
        datasets={"train": datasets["train"], "valid": datasets["valid"]},
        # A fresh name per run: Ray Train treats a reused name as a resumed run and restores it.
        run_config=RunConfig(
            storage_path=str(storage_path),
            name=name or unique_run_name(),
            failure_config=FailureConfig(max_failures=settings.max_failures),
        ),
    )
    result = _fit_keeping_signal_handler(trainer)
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        model = Path(directory, MODEL_FILE).read_bytes()
    return FitResult(
        model=model,
        params=params,
        best_iteration=int(result.metrics["best_iteration"]),
        valid_auc=float(result.metrics["valid_auc"]),
        boosting_seconds=float(result.metrics.get("boosting_s", 0.0)),
        seconds=time.perf_counter() - started,
    )
