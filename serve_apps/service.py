"""The prediction service: one loaded model version, shared by every route of a replica."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churn_core.model import ChurnModel
from churn_core.registry import ModelVersion, open_registry
from churn_core.settings import RegistrySettings, ServeSettings
from serve_apps.schemas import FeatureImportance, ModelMetrics, Prediction, Reason

ModelLoader = Callable[[], tuple[ChurnModel, ModelVersion]]


@dataclass(frozen=True)
class RegistryLoader:
    """Loads the version an alias points to (injected into the deployment, swappable in tests)."""

    registry: RegistrySettings
    project_root: str
    model_name: str
    alias: str

    def _resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else Path(self.project_root) / path

    def __call__(self) -> tuple[ChurnModel, ModelVersion]:
        """Load the model and its metadata."""
        with open_registry(self.registry, self._resolve) as registry:
            meta = registry.resolve(self.model_name, self.alias)
            return registry.load_model(self.model_name, meta.version), meta


@dataclass
class PredictionService:
    """Scores records with one model version and keeps live counters."""

    model: ChurnModel
    meta: ModelVersion
    settings: ServeSettings
    counters: Counter[str] = field(default_factory=Counter)

    @property
    def version(self) -> int:
        """The serving model version."""
        return self.meta.version

    def predict(
        self, records: Sequence[Mapping[str, Any]], customer_ids: Sequence[str | None]
    ) -> list[Prediction]:
        """Probabilities, labels at the threshold and top reasons for ``records``."""
        matrix = self.model.encoder.encode_records(records)
        probabilities = self.model.predict_matrix(matrix)
        reasons = self.model.explain_matrix(matrix, self.settings.top_reasons)
        threshold = self.settings.threshold
        predictions = [
            Prediction(
                customer_id=customer_id,
                probability=float(probability),
                churn=bool(probability >= threshold),
                threshold=threshold,
                model_version=self.version,
                reasons=[Reason(feature=r.feature, contribution=r.contribution) for r in row],
            )
            for customer_id, probability, row in zip(
                customer_ids, probabilities, reasons, strict=True
            )
        ]
        self.counters["predictions"] += len(predictions)
        self.counters["predicted_churn"] += sum(p.churn for p in predictions)
        return predictions

    def model_metrics(self) -> ModelMetrics:
        """Evaluation metrics of the serving version plus live counters."""
        return ModelMetrics(
            model_name=self.meta.name,
            model_version=self.version,
            alias=self.settings.alias,
            metrics=self.meta.metrics,
            lineage=self.meta.lineage,
            served=dict(self.counters),
        )

    def feature_importance(self) -> FeatureImportance:
        """Global gain importance recorded with the version, largest first."""
        ranked = sorted(self.meta.feature_importance.items(), key=lambda kv: -kv[1])
        return FeatureImportance(
            model_version=self.version, importance_type="gain", importance=dict(ranked)
        )
