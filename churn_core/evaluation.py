"""Metrics of churn probabilities against 0/1 labels: discrimination, calibration, lift.

Pure functions (NumPy and scikit-learn, no engines), shared by the trainer's held-out
evaluation (``training/evaluate.py`` adds segments and the report) and the accuracy job
(``monitoring/accuracy.py``), so a version's metrics at registration and on labels that
arrive later are computed the same way.

Conventions (the report and the registry's promotion gate rely on them):

* A row is predicted to churn when ``score >= threshold``.
* Calibration uses 10 **equal-frequency** bins: rows sorted by score (ascending, ties in input
  order) and split into 10 chunks whose sizes differ by at most one. Churn scores pile up near 0,
  so equal-width bins would leave the upper bins nearly empty and their points pure noise;
  equal-frequency bins give every point the same weight. ECE is the row-weighted mean of
  ``|mean score - observed rate|`` over those bins.
* Lift uses deciles of the same kind, rows sorted by score descending: decile 1 is the 10 % of
  rows the model ranks as most likely to churn (the first ``n % 10`` deciles get one extra row).
  Lift is the decile's churn rate over the base rate; capture is the share of all churners found
  in deciles 1..k.
* Metrics that are undefined for the data (an AUC with one class, a lift without churners) are
  ``None`` and ``notes`` says why; nothing is NaN, so everything serialises to JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

CALIBRATION_BINS = 10
LIFT_BINS = 10
# Curves kept for the report and its plots: enough points to draw, few enough for a small JSON.
MAX_CURVE_POINTS = 200


@dataclass(frozen=True)
class CalibrationBin:
    """One equal-frequency bin of the reliability diagram."""

    n: int
    score_min: float
    score_max: float
    mean_score: float
    observed_rate: float


@dataclass(frozen=True)
class LiftBin:
    """One decile of rows ranked by score, most likely churners first."""

    decile: int
    n: int
    positives: int
    score_min: float
    rate: float
    lift: float | None
    cumulative_capture: float | None
    cumulative_lift: float | None


@dataclass(frozen=True)
class ThresholdMetrics:
    """Confusion matrix and the rates derived from it at one decision threshold."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class Curve:
    """An x/y curve (ROC: false/true positive rate; PR: recall/precision), subsampled."""

    x: list[float]
    y: list[float]


@dataclass(frozen=True)
class EvaluationResult:
    """Everything measured on one held-out set."""

    n: int
    positives: int
    base_rate: float
    mean_score: float
    roc_auc: float | None
    pr_auc: float | None
    log_loss: float
    brier: float
    ece: float
    calibration: list[CalibrationBin]
    lift: list[LiftBin]
    top_decile_lift: float | None
    top_decile_capture: float | None
    at_threshold: ThresholdMetrics
    roc_curve: Curve | None
    pr_curve: Curve | None
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics for the registry (undefined ones are left out, never NaN).

        Keeps the keys of :func:`evaluate_scores` (``positive_rate``, ``rows`` ...) so existing
        readers of a version's metrics keep working.
        """
        values: dict[str, float | None] = {
            "roc_auc": self.roc_auc,
            "pr_auc": self.pr_auc,
            "log_loss": self.log_loss,
            "brier": self.brier,
            "ece": self.ece,
            "top_decile_lift": self.top_decile_lift,
            "top_decile_capture": self.top_decile_capture,
            "threshold": self.at_threshold.threshold,
            "precision": self.at_threshold.precision,
            "recall": self.at_threshold.recall,
            "f1": self.at_threshold.f1,
            "positive_rate": self.base_rate,
            "mean_score": self.mean_score,
            "rows": float(self.n),
        }
        return {k: float(v) for k, v in values.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe data (lists and dicts of numbers, strings and None)."""
        data: dict[str, Any] = json_safe(asdict(self))
        return data


def json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars made Python numbers and NaN/inf made ``None``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def validate_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 ints and scores as float64, or a ValueError saying what is wrong."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} scores")
    if len(y) == 0:
        raise ValueError("cannot evaluate an empty test set")
    missing = int(np.isnan(p).sum())
    if missing:
        # A NaN score is a bug upstream (the model never returns NaN for NaN features); dropping
        # the rows would quietly evaluate on a different population.
        raise ValueError(f"{missing} of {len(p)} scores are NaN; refusing to evaluate")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (NaN or other values found)")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("scores must be probabilities in [0, 1]")
    return y.astype(np.int64), p


def _subsample(x: np.ndarray, y: np.ndarray) -> Curve:
    """At most MAX_CURVE_POINTS points, evenly spaced along the curve, ends always kept."""
    if len(x) > MAX_CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(x) - 1, MAX_CURVE_POINTS).round().astype(int))
        x, y = x[keep], y[keep]
    return Curve([float(v) for v in x], [float(v) for v in y])


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def calibration_bins(labels: np.ndarray, scores: np.ndarray) -> tuple[list[CalibrationBin], float]:
    """Equal-frequency reliability bins and the expected calibration error over them."""
    order = np.argsort(scores, kind="stable")
    bins = []
    error = 0.0
    for chunk in np.array_split(order, min(CALIBRATION_BINS, len(order))):
        s, y = scores[chunk], labels[chunk]
        mean_score, observed = float(s.mean()), float(y.mean())
        bins.append(
            CalibrationBin(len(chunk), float(s.min()), float(s.max()), mean_score, observed)
        )
        error += len(chunk) * abs(mean_score - observed)
    return bins, error / len(scores)


def lift_table(labels: np.ndarray, scores: np.ndarray) -> list[LiftBin]:
    """Deciles of rows by descending score with lift and cumulative capture."""
    order = np.argsort(-scores, kind="stable")
    total_positives = int(labels.sum())
    base_rate = total_positives / len(labels)
    rows: list[LiftBin] = []
    seen = found = 0
    for decile, chunk in enumerate(np.array_split(order, min(LIFT_BINS, len(order))), start=1):
        positives = int(labels[chunk].sum())
        seen += len(chunk)
        found += positives
        rate = positives / len(chunk)
        rows.append(
            LiftBin(
                decile=decile,
                n=len(chunk),
                positives=positives,
                score_min=float(scores[chunk].min()),
                rate=rate,
                lift=_ratio(rate, base_rate),
                cumulative_capture=_ratio(found, total_positives),
                cumulative_lift=_ratio(found / seen, base_rate),
            )
        )
    return rows


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> ThresholdMetrics:
    """Confusion matrix at ``score >= threshold``; a rate with a zero denominator is None."""
    predicted = scores >= threshold
    actual = labels == 1
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    tn = int((~predicted & ~actual).sum())
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return ThresholdMetrics(threshold, tp, fp, tn, fn, precision, recall, f1)


def evaluate(labels: Any, scores: Any, threshold: float = 0.5) -> EvaluationResult:
    """All held-out metrics of churn probabilities ``scores`` against 0/1 ``labels``.

    Raises ValueError for NaN scores, non-0/1 labels, mismatched lengths or an empty set. A
    single-class set is evaluated: the AUCs (and lift, without churners) are None with a note.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not in [0, 1]")
    y, p = validate_scores(labels, scores)
    n, positives = len(y), int(y.sum())
    notes: list[str] = []
    both_classes = 0 < positives < n
    roc_auc = pr_auc = None
    roc = pr = None
    if both_classes:
        roc_auc = float(roc_auc_score(y, p))
        pr_auc = float(average_precision_score(y, p))
        fpr, tpr, _ = roc_curve(y, p)
        roc = _subsample(fpr, tpr)
        precision, recall, _ = precision_recall_curve(y, p)
        # sklearn returns recall descending; the plot and JSON read better ascending.
        pr = _subsample(recall[::-1], precision[::-1])
    else:
        only = "churners" if positives else "non-churners"
        notes.append(f"labels hold only {only}: roc_auc and pr_auc are undefined")
    if positives == 0:
        notes.append("no churners: lift and capture are undefined")
    calibration, ece = calibration_bins(y, p)
    lift = lift_table(y, p)
    return EvaluationResult(
        n=n,
        positives=positives,
        base_rate=positives / n,
        mean_score=float(p.mean()),
        roc_auc=roc_auc,
        pr_auc=pr_auc,
        log_loss=float(log_loss(y, p, labels=[0, 1])),
        brier=float(brier_score_loss(y, p, labels=[0, 1])),
        ece=ece,
        calibration=calibration,
        lift=lift,
        top_decile_lift=lift[0].lift,
        top_decile_capture=lift[0].cumulative_capture,
        at_threshold=threshold_metrics(y, p, threshold),
        roc_curve=roc,
        pr_curve=pr,
        notes=notes,
    )


def evaluate_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Discrimination and calibration metrics of churn probabilities against 0/1 labels.

    The original flat API (the trainer's champion rule needs a number): still refuses a test set
    with one class. :func:`evaluate` gives the full result and tolerates one class.
    """
    result = evaluate(labels, scores)
    if result.roc_auc is None or result.pr_auc is None:
        raise ValueError("evaluation needs both churners and non-churners in the test set")
    return {
        "roc_auc": result.roc_auc,
        "pr_auc": result.pr_auc,
        "log_loss": result.log_loss,
        "brier": result.brier,
        "positive_rate": result.base_rate,
        "mean_score": result.mean_score,
        "rows": float(result.n),
    }
