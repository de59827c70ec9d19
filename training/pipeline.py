"""Train, evaluate and register one model version from the gold table."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from churn_core.contract import FeatureContract
from churn_core.importance import feature_importance
from churn_core.logging import get_logger
from churn_core.model import ChurnModel
from churn_core.registry import ModelVersion, Registry, code_version
from churn_core.settings import Settings
from churn_core.tables import Tables
from training.data import LABEL_COLUMN, read_gold, split_gold
from training.evaluate import evaluate, evaluate_segments
from training.reference import REFERENCE_FILE, build_reference
from training.report import write_report
from training.threshold import choose_threshold
from training.train import fit_xgboost, positive_weight

log = get_logger(__name__)


@dataclass(frozen=True)
class TrainSummary:
    """The outcome of one training run."""

    version: ModelVersion
    aliases: list[str]
    rows: dict[str, int]
    phases: dict[str, float]
    seconds: float


def _features_and_labels(frame: Any, contract: FeatureContract) -> tuple[np.ndarray, np.ndarray]:
    features = frame[contract.feature_names].to_numpy(dtype=np.float32, na_value=np.nan)
    return features, frame[LABEL_COLUMN].to_numpy()


def train_and_register(
    settings: Settings,
    contract: FeatureContract,
    tables: Tables,
    registry: Registry,
    extra_lineage: dict[str, Any] | None = None,
) -> TrainSummary:
    """Read gold, fit with Ray Train, evaluate on the held-out split, register, set aliases.

    The decision threshold is chosen on the validation split; every number of the report comes
    from the test split (the latest snapshot), which neither fitting nor the threshold saw. The
    version also stores ``reference.parquet``, a sample of its training rows and their scores,
    which the drift job compares the prediction log against.
    """
    started = time.perf_counter()
    gold = read_gold(tables.gold_features)
    splits = split_gold(gold, contract, settings.training)
    rows = {name: int(ds.count()) for name, ds in splits.items()}
    log.info("gold split", **rows, delta_version=gold.delta_version)
    positives = int(splits["train"].sum(LABEL_COLUMN) or 0)
    weight = positive_weight(settings.training, positives, rows["train"])
    loaded = time.perf_counter()
    fit = fit_xgboost(
        splits,
        contract,
        settings.training,
        settings.resolve(settings.training.storage_path),
        scale_pos_weight=weight,
    )
    fitted = time.perf_counter()
    model = ChurnModel.from_bytes(fit.model, contract, nthread=0)
    valid_x, valid_y = _features_and_labels(splits["valid"].to_pandas(), contract)
    threshold = choose_threshold(valid_y, model.predict_matrix(valid_x), settings.training)
    test = splits["test"].to_pandas()
    test_x, test_y = _features_and_labels(test, contract)
    scores = model.predict_matrix(test_x)
    result = evaluate(test_y, scores, threshold)
    if result.roc_auc is None:
        raise ValueError(f"cannot evaluate on the test split: {'; '.join(result.notes)}")
    metrics = result.metrics()
    metrics.update(valid_auc=fit.valid_auc, best_iteration=float(fit.best_iteration))
    segments = evaluate_segments(test, test_y, scores, contract)
    importance = feature_importance(model, test)
    # Drift checks compare the prediction log with this sample of the training rows.
    reference = build_reference(
        gold.path,
        gold.delta_version,
        contract,
        settings.training,
        model,
        train_rows=rows["train"],
        max_rows=settings.monitoring.reference_max_rows,
    )
    with tempfile.TemporaryDirectory() as directory:
        paths = write_report(
            Path(directory), result, segments, importance, settings.model_name, None
        )
        version = registry.register(
            settings.model_name,
            fit.model,
            contract,
            params={**fit.params, "threshold": threshold},
            metrics=metrics,
            lineage={
                "dataset": contract.name,
                "gold_table": str(gold.path),
                "gold_delta_version": gold.delta_version,
                "gold_inputs": gold.inputs,
                "code_version": code_version(settings.resolve(Path("."))),
                "rows": rows,
                **(extra_lineage or {}),
            },
            feature_importance=importance["gain"],
            segments=segments,
            files={
                **{path.name: path.read_bytes() for path in paths},
                REFERENCE_FILE: reference,
            },
        )
    aliases = registry.promote_or_challenge(
        settings.model_name,
        version.version,
        reason=f"churn train (gold v{gold.delta_version})",
    )
    done = time.perf_counter()
    phases = {
        "load_s": loaded - started,
        "fit_s": fitted - loaded,
        "evaluate_register_s": done - fitted,
    }
    return TrainSummary(version, aliases, rows, phases, done - started)
