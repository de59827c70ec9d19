"""Held-out evaluation of a model version: overall metrics, calibration, lift and segments.

The overall metrics (and their conventions: equal-frequency calibration bins, lift deciles,
``None`` for undefined metrics) live in :mod:`churn_core.evaluation`, shared with the accuracy
job; they are re-exported here. This module adds the per-segment metrics the report and the
segment gate use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from churn_core.contract import FeatureContract, ReportSpec
from churn_core.evaluation import (
    CALIBRATION_BINS,
    LIFT_BINS,
    MAX_CURVE_POINTS,
    CalibrationBin,
    Curve,
    EvaluationResult,
    LiftBin,
    ThresholdMetrics,
    calibration_bins,
    evaluate,
    evaluate_scores,
    json_safe,
    lift_table,
    threshold_metrics,
    validate_scores,
)
from churn_core.segments import segment_values

__all__ = [
    "CALIBRATION_BINS",
    "LIFT_BINS",
    "MAX_CURVE_POINTS",
    "CalibrationBin",
    "Curve",
    "EvaluationResult",
    "LiftBin",
    "SegmentMetrics",
    "ThresholdMetrics",
    "calibration_bins",
    "evaluate",
    "evaluate_scores",
    "evaluate_segments",
    "json_safe",
    "lift_table",
    "segment_values",
    "threshold_metrics",
]

# Counts ("n", "positives") are ints at run time; float here so the alias matches the
# registry's dict[str, float | None] (dicts are invariant in their value type).
SegmentMetrics = dict[str, float | None]


def _segment_metrics(y: np.ndarray, p: np.ndarray, spec: ReportSpec) -> SegmentMetrics:
    n, positives = len(y), int(y.sum())
    if n == 0:
        return {
            "n": 0,
            "positives": 0,
            "observed_rate": None,
            "mean_score": None,
            "roc_auc": None,
            "pr_auc": None,
            "brier": None,
        }
    # AUCs of a few rows or a handful of one class are noise: None, so a gate cannot trip on them.
    scorable = n >= spec.min_segment_rows and min(positives, n - positives) >= spec.min_class_rows
    return {
        "n": n,
        "positives": positives,
        "observed_rate": positives / n,
        "mean_score": float(p.mean()),
        "roc_auc": float(roc_auc_score(y, p)) if scorable else None,
        "pr_auc": float(average_precision_score(y, p)) if scorable else None,
        "brier": float(brier_score_loss(y, p, labels=[0, 1])),
    }


def evaluate_segments(
    frame: pd.DataFrame,
    labels: Any,
    scores: Any,
    contract: FeatureContract,
    report: ReportSpec | None = None,
) -> dict[str, SegmentMetrics]:
    """Metrics per segment value, keyed ``"<segment name>=<value>"``.

    Segments come from ``report`` or else the contract's ``report`` section (none declared: an
    empty dict). ``frame`` holds the segment columns, raw or encoded, aligned with ``labels`` and
    ``scores``. Every declared value has a key (``n`` 0 when absent) so champion and challenger
    share keys; ``roc_auc``/``pr_auc`` are None below the spec's row or class floor.
    """
    spec = report or contract.report
    if spec is None or not spec.segments:
        return {}
    y, p = validate_scores(labels, scores)
    if len(frame) != len(y):
        raise ValueError(f"{len(frame)} frame rows but {len(y)} labels")
    result: dict[str, SegmentMetrics] = {}
    for segment in spec.segments:
        if segment.column not in frame.columns:
            raise ValueError(f"segment column {segment.column!r} is not in the evaluated frame")
        values, declared = segment_values(
            segment, contract.feature(segment.column), frame[segment.column]
        )
        values_array = values.to_numpy(dtype=object)
        extra = sorted(set(values_array) - set(declared))
        for value in [*declared, *extra]:
            mask = values_array == value
            result[f"{segment.label}={value}"] = _segment_metrics(y[mask], p[mask], spec)
    return result
