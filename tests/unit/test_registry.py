from __future__ import annotations

from pathlib import Path

import pytest

from churn_core.contract import FeatureContract
from churn_core.registry import LocalRegistry, RegistryError


def register(registry: LocalRegistry, model: bytes, contract: FeatureContract, auc: float) -> int:
    meta = registry.register(
        "m",
        model,
        contract,
        params={"max_depth": 3},
        metrics={"roc_auc": auc},
        lineage={"gold_delta_version": 4},
        feature_importance={"usage": 1.0},
    )
    return meta.version


def test_versions_are_numbered_and_loadable_by_alias(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    assert register(registry, tiny_model_bytes, tiny_contract, 0.7) == 1
    assert register(registry, tiny_model_bytes, tiny_contract, 0.8) == 2
    registry.set_alias("m", "champion", 2)
    model = registry.load_model("m", "champion")
    assert model.version == 2
    assert model.contract == tiny_contract
    assert registry.resolve("m", 1).metrics == {"roc_auc": 0.7}
    assert [v.version for v in registry.list("m")] == [1, 2]


def test_unknown_alias_and_version_explain_themselves(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    with pytest.raises(RegistryError, match=r"no alias 'champion'.*churn train"):
        registry.load_model("m", "champion")
    register(registry, tiny_model_bytes, tiny_contract, 0.7)
    with pytest.raises(RegistryError, match="no version 9"):
        registry.set_alias("m", "champion", 9)


def test_tampered_artifact_is_refused(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    register(registry, tiny_model_bytes, tiny_contract, 0.7)
    artifact = next(tmp_path.glob("m/versions/*/model.ubj"))
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RegistryError, match="checksum"):
        registry.load_model("m", 1)


def test_a_failed_write_leaves_no_half_version(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    with pytest.raises(ValueError, match="roc_auc"):
        registry.register(
            "m",
            tiny_model_bytes,
            tiny_contract,
            params={},
            metrics={"roc_auc": object()},
            lineage={},
            feature_importance={},
        )  # type: ignore[dict-item]
    assert registry.version_numbers("m") == []
    assert list((tmp_path / "m" / "versions").iterdir()) == []  # no staging debris
    assert register(registry, tiny_model_bytes, tiny_contract, 0.7) == 1
