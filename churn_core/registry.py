"""Model registry: immutable versions (artifact + contract + params + metrics + lineage) and aliases.

This is the file-backed registry used on embedded defaults: each version is a folder written
under a temporary name and renamed into place, so a version either exists whole or not at all,
and an existing version is never overwritten. Aliases (``champion``, ``challenger``) live in one
JSON file replaced atomically. Serving and scoring resolve an alias, never a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from churn_core.contract import FeatureContract, parse_contract
from churn_core.model import ChurnModel

ARTIFACT_NAME = "model.ubj"
CONTRACT_NAME = "contract.yaml"
METADATA_NAME = "metadata.json"


class RegistryError(RuntimeError):
    """A registry lookup or write that cannot be satisfied."""


class ModelVersion(BaseModel):
    """Metadata of one registered version (never changes once written)."""

    name: str
    version: int
    created_at: datetime
    artifact_sha256: str
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    feature_importance: dict[str, float] = Field(default_factory=dict)


class LocalRegistry:
    """A registry on a local (or mounted) file system."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _model_dir(self, name: str) -> Path:
        return self.root / name

    def _version_dir(self, name: str, version: int) -> Path:
        return self._model_dir(name) / "versions" / f"{version:06d}"

    def _aliases_path(self, name: str) -> Path:
        return self._model_dir(name) / "aliases.json"

    def register(
        self,
        name: str,
        artifact: bytes,
        contract: FeatureContract,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        lineage: dict[str, Any],
        feature_importance: dict[str, float],
    ) -> ModelVersion:
        """Write a new immutable version and return its metadata."""
        versions_dir = self._model_dir(name) / "versions"
        versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions_dir))
        try:
            (staging / ARTIFACT_NAME).write_bytes(artifact)
            (staging / CONTRACT_NAME).write_text(contract.to_yaml())
            while True:
                number = max(self.version_numbers(name), default=0) + 1
                meta = ModelVersion(
                    name=name,
                    version=number,
                    created_at=datetime.now(UTC),
                    artifact_sha256=hashlib.sha256(artifact).hexdigest(),
                    params=params,
                    metrics=metrics,
                    lineage=lineage,
                    feature_importance=feature_importance,
                )
                (staging / METADATA_NAME).write_text(meta.model_dump_json(indent=2))
                try:
                    # rename() of a directory fails if the target exists: two writers never
                    # share a version number, and a version is never overwritten.
                    staging.rename(self._version_dir(name, number))
                    return meta
                except OSError:
                    if not self._version_dir(name, number).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def version_numbers(self, name: str) -> list[int]:
        """All registered version numbers of ``name``, ascending."""
        versions_dir = self._model_dir(name) / "versions"
        if not versions_dir.exists():
            return []
        return sorted(int(p.name) for p in versions_dir.iterdir() if p.name.isdigit())

    def get(self, name: str, version: int) -> ModelVersion:
        """Metadata of one version."""
        path = self._version_dir(name, version) / METADATA_NAME
        if not path.exists():
            raise RegistryError(f"model {name!r} has no version {version}")
        return ModelVersion.model_validate_json(path.read_text())

    def list(self, name: str) -> list[ModelVersion]:
        """Metadata of every version, oldest first."""
        return [self.get(name, v) for v in self.version_numbers(name)]

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version number."""
        path = self._aliases_path(name)
        if not path.exists():
            return {}
        loaded: dict[str, int] = json.loads(path.read_text())
        return loaded

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at an existing ``version`` (atomic replace of the alias file)."""
        self.get(name, version)  # refuse aliases to versions that do not exist
        aliases = {**self.aliases(name), alias: version}
        path = self._aliases_path(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(aliases, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def resolve(self, name: str, ref: str | int) -> ModelVersion:
        """Metadata for an alias or a version number."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return self.get(name, int(ref))
        aliases = self.aliases(name)
        if ref not in aliases:
            raise RegistryError(
                f"model {name!r} has no alias {ref!r} (aliases: {sorted(aliases)}); "
                "train and register a model first (`churn train`)"
            )
        return self.get(name, aliases[ref])

    def load_model(self, name: str, ref: str | int = "champion") -> ChurnModel:
        """Load the model an alias or version points to, checking the artifact's checksum."""
        meta = self.resolve(name, ref)
        directory = self._version_dir(name, meta.version)
        artifact = (directory / ARTIFACT_NAME).read_bytes()
        if hashlib.sha256(artifact).hexdigest() != meta.artifact_sha256:
            raise RegistryError(
                f"model {name!r} version {meta.version}: artifact checksum mismatch"
            )
        contract = parse_contract((directory / CONTRACT_NAME).read_text())
        return ChurnModel.from_bytes(artifact, contract, version=meta.version)
