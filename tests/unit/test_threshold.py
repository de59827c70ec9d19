"""The decision threshold is the F1-best cut on validation scores, or the fixed one."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from churn_core.settings import TrainingSettings
from training.threshold import choose_threshold
from training.train import positive_weight


def test_f1_threshold_beats_every_other_cut() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.1).astype(int)
    scores = np.clip(labels * 0.3 + rng.random(2000) * 0.7, 0, 1)
    chosen = choose_threshold(labels, scores, TrainingSettings())
    best = f1_score(labels, scores >= chosen)
    for cut in np.linspace(0.05, 0.95, 19):
        assert best >= f1_score(labels, scores >= cut) - 1e-12
    assert 0.05 < chosen < 0.95


def test_fixed_threshold_and_single_class_fall_back() -> None:
    settings = TrainingSettings(threshold_metric="fixed", fixed_threshold=0.3)
    assert choose_threshold(np.array([0, 1]), np.array([0.2, 0.9]), settings) == 0.3
    assert choose_threshold(np.zeros(5), np.linspace(0, 1, 5), TrainingSettings()) == 0.5


def test_balanced_weight_is_negatives_over_positives() -> None:
    assert positive_weight(TrainingSettings(imbalance="balanced"), 100, 1000) == 9.0
    assert positive_weight(TrainingSettings(), 100, 1000) is None
    assert positive_weight(TrainingSettings(imbalance=3.5), 100, 1000) == 3.5
