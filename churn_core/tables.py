"""Where each Delta table of a data set lives (one place, so no job spells a path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tables:
    """Delta table locations under one data set's lake folder."""

    root: Path

    def bronze(self, source: str) -> Path:
        """Raw records of ``source`` as ingested, with ingestion metadata."""
        return self.root / "bronze" / source

    def silver(self, source: str) -> Path:
        """Typed, de-duplicated records of ``source``."""
        return self.root / "silver" / source

    def quarantine(self, source: str) -> Path:
        """Records of ``source`` rejected by validation, each with a reason."""
        return self.root / "quarantine" / source

    def staging(self, source: str) -> Path:
        """The batch being ingested for ``source``: read from the source once, then merged."""
        return self.root / "_staging" / source

    @property
    def reconciliation(self) -> Path:
        """Per source and bronze batch: records read, accepted into silver and quarantined."""
        return self.root / "audit" / "reconciliation"

    @property
    def gold_features(self) -> Path:
        """Per-customer features and labels, one row per (customer, snapshot)."""
        return self.root / "gold" / "features"

    @property
    def prediction_log(self) -> Path:
        """Every online and batch prediction: features, score, model version and time."""
        return self.root / "monitoring" / "predictions"

    @property
    def drift_results(self) -> Path:
        """One row per feature (and the score) per drift run."""
        return self.root / "monitoring" / "drift"

    @property
    def accuracy(self) -> Path:
        """Accuracy of each model version per period, once the labels of its predictions are known."""
        return self.root / "monitoring" / "accuracy"

    @property
    def scores(self) -> Path:
        """Batch scores: one row per (customer, snapshot, model version)."""
        return self.root / "scores" / "customer_scores"
