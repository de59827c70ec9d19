"""The decision threshold of a model version, chosen on the validation split.

Probabilities stay calibrated (no class weights by default); the imbalance of churn is handled
where it matters for a retention team, in which customers get labelled "will churn".
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve

from churn_core.settings import TrainingSettings


def choose_threshold(labels: np.ndarray, scores: np.ndarray, settings: TrainingSettings) -> float:
    """The threshold maximising F1 on (validation) labels, or the configured fixed one."""
    if settings.threshold_metric == "fixed" or labels.min() == labels.max():
        return settings.fixed_threshold
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last precision/recall pair has no threshold (recall 0): leave it out.
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])
