"""Held-out evaluation of a model version."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def evaluate_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Discrimination and calibration metrics of churn probabilities against 0/1 labels."""
    if len(np.unique(labels)) < 2:
        raise ValueError("evaluation needs both churners and non-churners in the test set")
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
        "log_loss": float(log_loss(labels, scores, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, scores)),
        "positive_rate": float(np.mean(labels)),
        "mean_score": float(np.mean(scores)),
        "rows": float(len(labels)),
    }
