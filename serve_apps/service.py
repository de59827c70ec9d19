"""The model side of serving: where versions come from, and scoring with one loaded version."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from churn_core.model import ChurnModel
from churn_core.prediction_log import new_prediction_id
from churn_core.registry import (
    AliasEvent,
    ModelVersion,
    PromotionResult,
    Registry,
    open_registry,
)
from churn_core.settings import EncryptionSettings, RegistrySettings

# How a batch explains its predictions: exact TreeSHAP, Saabas approximation, or not at all.
ReasonsMode = Literal["exact", "approximate", "none"]


class ModelSource(Protocol):
    """Where a replica gets its model (injected through ``bind``; tests pass their own)."""

    def current_version(self) -> int:
        """The version the serving alias points to now (cheap: polled by every replica)."""
        ...

    def load(self, version: int | None = None) -> tuple[ChurnModel, ModelVersion]:
        """A model and its metadata: ``version``, or the alias's version when ``None``."""
        ...

    def metadata(self, version: int) -> ModelVersion:
        """Metadata of a registered version (no artifact is loaded)."""
        ...

    def promote(self, version: int, actor: str, reason: str) -> PromotionResult:
        """Move the serving alias to ``version`` through the promotion gates."""
        ...

    def list_versions(self) -> list[ModelVersion]:
        """Metadata of every registered version, oldest first (the dashboard's model page)."""
        ...

    def aliases(self) -> dict[str, int]:
        """Every alias of the model and the version it points to."""
        ...

    def alias_history(self) -> list[AliasEvent]:
        """Every recorded alias move, oldest first."""
        ...

    def read_file(self, version: int, filename: str) -> bytes:
        """A stored file of ``version`` (its evaluation report, say), checksum-verified."""
        ...


@dataclass
class RegistryLoader:
    """Loads the version an alias points to from the model registry.

    ``encryption`` (``Settings.encryption``) decrypts encrypted artifacts; it travels with the
    loader to the replicas like ``registry.mongodb_url`` does (``keys_file`` keeps the keys
    themselves out of it: each replica reads the mounted file).
    """

    registry: RegistrySettings
    project_root: str
    model_name: str
    alias: str
    encryption: EncryptionSettings | None = None
    _open: Registry | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # The open registry (a MongoDB client, perhaps) stays behind when Ray ships the loader.
        return {**self.__dict__, "_open": None}

    def _resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else Path(self.project_root) / path

    def _registry(self) -> Registry:
        if self._open is None:
            self._open = open_registry(self.registry, self._resolve, encryption=self.encryption)
        return self._open

    def current_version(self) -> int:
        """The version the alias points to."""
        return self._registry().resolve(self.model_name, self.alias).version

    def load(self, version: int | None = None) -> tuple[ChurnModel, ModelVersion]:
        """The model and metadata of ``version`` (default: the alias's version)."""
        registry = self._registry()
        meta = registry.resolve(self.model_name, self.alias if version is None else version)
        return registry.load_model(self.model_name, meta.version), meta

    def metadata(self, version: int) -> ModelVersion:
        """Metadata of ``version``."""
        return self._registry().resolve(self.model_name, version)

    def promote(self, version: int, actor: str, reason: str) -> PromotionResult:
        """Move the alias to ``version`` if it passes the configured gates."""
        return self._registry().promote(
            self.model_name, version, self.alias, reason=reason, actor=actor
        )

    def list_versions(self) -> list[ModelVersion]:
        """Metadata of every version, oldest first."""
        return self._registry().list(self.model_name)

    def aliases(self) -> dict[str, int]:
        """Alias -> version number."""
        return self._registry().aliases(self.model_name)

    def alias_history(self) -> list[AliasEvent]:
        """Every recorded move of every alias, oldest first."""
        return self._registry().alias_history(self.model_name)

    def read_file(self, version: int, filename: str) -> bytes:
        """A stored file of ``version``, checksum-verified."""
        return self._registry().read_file(self.model_name, version, filename)


@dataclass(frozen=True)
class PredictionService:
    """Scores records with one model version (immutable: a reload builds a new one)."""

    model: ChurnModel
    meta: ModelVersion
    default_threshold: float
    top_reasons: int

    @property
    def version(self) -> int:
        """The model version."""
        return self.meta.version

    @property
    def threshold(self) -> float:
        """The version's own decision threshold (chosen on validation when it was trained)."""
        value = self.meta.params.get("threshold")
        return float(value) if isinstance(value, int | float) else self.default_threshold

    def score(
        self, records: Sequence[Mapping[str, Any]], reasons_mode: ReasonsMode = "exact"
    ) -> list[dict[str, Any]]:
        """Probability and top SHAP reasons of each record (the cacheable part of an answer)."""
        matrix = self.model.encoder.encode_records(records)
        probabilities = self.model.predict_matrix(matrix)
        top = 0 if reasons_mode == "none" else self.top_reasons
        reasons = self.model.explain_matrix(matrix, top, approximate=reasons_mode == "approximate")
        return [
            {
                "probability": float(p),
                "reasons": [{"feature": r.feature, "contribution": r.contribution} for r in row],
            }
            for p, row in zip(probabilities, reasons, strict=True)
        ]

    def answer(
        self, scored: Mapping[str, Any], customer_id: str | None, features_from: str
    ) -> dict[str, Any]:
        """A full prediction: the scored part plus label, threshold and version."""
        probability = float(scored["probability"])
        return {
            "prediction_id": new_prediction_id(),
            "customer_id": customer_id,
            "probability": probability,
            "churn": probability >= self.threshold,
            "threshold": self.threshold,
            "model_version": self.version,
            "reasons": scored["reasons"],
            "features_from": features_from,
        }

    def feature_importance(self) -> dict[str, float]:
        """Global gain importance recorded with the version, largest first."""
        ranked = sorted(self.meta.feature_importance.items(), key=lambda kv: -kv[1])
        return dict(ranked)


def score_grouped(
    items: Sequence[tuple[PredictionService, Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """Score requests gathered into one batch, one model call per model version among them.

    A batch can straddle a model switch: each request is scored by the version it started with
    (its cache key names that version).
    """
    scored: list[dict[str, Any]] = [{} for _ in items]
    groups: dict[int, list[int]] = {}
    for index, (service, _) in enumerate(items):
        groups.setdefault(id(service), []).append(index)
    for indices in groups.values():
        service = items[indices[0]][0]
        for index, result in zip(
            indices, service.score([items[i][1] for i in indices]), strict=True
        ):
            scored[index] = result
    return scored
