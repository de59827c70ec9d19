"""Train, evaluate and register one model version from the gold table."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from churn_core.contract import FeatureContract
from churn_core.logging import get_logger
from churn_core.model import ChurnModel
from churn_core.registry import LocalRegistry, ModelVersion, RegistryError
from churn_core.settings import Settings
from churn_core.tables import Tables
from training.data import LABEL_COLUMN, read_gold, split_gold
from training.evaluate import evaluate_scores
from training.train import fit_xgboost

log = get_logger(__name__)


@dataclass(frozen=True)
class TrainSummary:
    """The outcome of one training run."""

    version: ModelVersion
    aliases: list[str]
    rows: dict[str, int]
    phases: dict[str, float]
    seconds: float


def code_version(root: Path) -> str:
    """The git commit of the code (``unknown`` outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def choose_aliases(
    registry: LocalRegistry, name: str, metrics: dict[str, float], min_auc: float
) -> list[str]:
    """``champion`` if the model clears the floor and beats (or ties) the current champion."""
    if metrics["roc_auc"] < min_auc:
        return []
    try:
        current = registry.resolve(name, "champion")
    except RegistryError:
        return ["champion"]
    return (
        ["champion"]
        if metrics["roc_auc"] >= current.metrics.get("roc_auc", 0.0)
        else ["challenger"]
    )


def train_and_register(
    settings: Settings, contract: FeatureContract, tables: Tables, registry: LocalRegistry
) -> TrainSummary:
    """Read gold, fit with Ray Train, evaluate on the held-out split, register, set aliases."""
    started = time.perf_counter()
    gold = read_gold(tables.gold_features)
    splits = split_gold(gold, contract, settings.training)
    rows = {name: int(ds.count()) for name, ds in splits.items()}
    log.info("gold split", **rows, delta_version=gold.delta_version)
    loaded = time.perf_counter()
    fit = fit_xgboost(
        splits, contract, settings.training, settings.resolve(settings.training.storage_path)
    )
    fitted = time.perf_counter()
    model = ChurnModel.from_bytes(fit.model, contract, nthread=0)
    test = splits["test"].to_pandas()
    scores = model.predict_matrix(
        test[contract.feature_names].to_numpy(dtype=np.float32, na_value=np.nan)
    )
    metrics = evaluate_scores(test[LABEL_COLUMN].to_numpy(), scores)
    metrics.update(valid_auc=fit.valid_auc, best_iteration=float(fit.best_iteration))
    version = registry.register(
        settings.model_name,
        fit.model,
        contract,
        params=fit.params,
        metrics=metrics,
        lineage={
            "dataset": contract.name,
            "gold_table": str(gold.path),
            "gold_delta_version": gold.delta_version,
            "code_version": code_version(settings.resolve(Path("."))),
            "rows": rows,
        },
        feature_importance=model.feature_importance(),
    )
    aliases = choose_aliases(
        registry, settings.model_name, metrics, settings.training.min_champion_auc
    )
    for alias in aliases:
        registry.set_alias(settings.model_name, alias, version.version)
    done = time.perf_counter()
    phases = {
        "load_s": loaded - started,
        "fit_s": fitted - loaded,
        "evaluate_register_s": done - fitted,
    }
    return TrainSummary(version, aliases, rows, phases, done - started)
