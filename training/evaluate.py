"""Held-out evaluation of a model version: overall metrics, calibration, lift and segments.

The overall metrics (and their conventions: equal-frequency calibration bins, lift deciles,
``None`` for undefined metrics) live in :mod:`churn_core.evaluation`, shared with the accuracy
job; they are re-exported here. This module adds the per-segment metrics the report and the
segment gate use.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from churn_core.contract import FeatureContract, FeatureSpec, ReportSpec, SegmentSpec
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


# --- segments ---------------------------------------------------------------------------------


def _format_edge(edge: float) -> str:
    return str(int(edge)) if float(edge).is_integer() else repr(float(edge))


def _bin_labels(bins: Sequence[float]) -> list[str]:
    return [f"[{_format_edge(a)}, {_format_edge(b)})" for a, b in itertools.pairwise(bins)]


def segment_values(
    spec: SegmentSpec, feature: FeatureSpec, column: pd.Series
) -> tuple[pd.Series, list[str]]:
    """Each row's segment value (a string) and the declared values in report order.

    Accepts the raw column (category strings, booleans) or the encoded one the trainer holds
    (category codes and 0/1 as floats). Rows without a value are ``missing``; numeric values
    outside the bins are ``out_of_bins``. Both show up only when present.
    """
    if spec.bins:
        numbers = pd.to_numeric(column, errors="coerce").astype(np.float64)
        declared = _bin_labels(spec.bins)
        # right=False: [lo, hi), so a value equal to an edge falls in the bin the edge starts.
        binned = pd.cut(numbers, bins=list(spec.bins), right=False, labels=declared)
        values = binned.astype(object).where(binned.notna(), "out_of_bins")
        values = values.where(numbers.notna(), "missing")
        return values, declared
    if feature.type == "categorical":
        declared = list(feature.categories or [])
        if pd.api.types.is_numeric_dtype(column):
            # Encoded: the value is the index in the contract's category list.
            codes = column.to_numpy(dtype=np.float64, na_value=np.nan)
            lookup = np.array([*declared, "missing"], dtype=object)
            valid = np.isfinite(codes) & (codes >= 0) & (codes < len(declared))
            index = np.where(valid, np.nan_to_num(codes, nan=len(declared)), len(declared))
            return pd.Series(lookup[index.astype(int)], index=column.index), declared
        values = column.astype(object).where(column.notna(), "missing")
        values = values.where(values.isin([*declared, "missing"]), "other")
        return values.astype(str), declared
    # Boolean: raw True/False or encoded 1.0/0.0.
    declared = ["false", "true"]
    numbers = pd.to_numeric(column.astype(object), errors="coerce").astype(np.float64)
    values = pd.Series(np.where(numbers > 0.5, "true", "false"), index=column.index, dtype=object)
    return values.where(numbers.notna(), "missing"), declared


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
