from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from churn_core.contract import FeatureContract, load_contract
from tests.conftest import REPO_ROOT

CONTRACTS = REPO_ROOT / "configs" / "contracts"


def minimal() -> dict[str, Any]:
    return {
        "name": "mini",
        "entity_key": "id",
        "sources": {
            "people": {
                "format": "csv",
                "path": "p.csv",
                "role": "entity",
                "key": ["id"],
                "columns": {"id": "string", "x": "double", "y": "string"},
            }
        },
        "label": {"kind": "column", "source": "people", "column": "y", "positive": ["yes"]},
        "features": [{"name": "x", "type": "numeric", "range": [0, 1], "derive": {"column": "x"}}],
    }


def test_minimal_contract_derives_types() -> None:
    contract = FeatureContract.model_validate(minimal())
    assert contract.feature_names == ["x"]
    assert contract.xgboost_feature_types == ["float"]
    assert contract.gold_columns() == [("id", "string"), ("x", "double"), ("churned", "int")]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["features"].append(
                {"name": "x", "type": "numeric", "derive": {"column": "x"}}
            ),
            "duplicate feature",
        ),
        (
            lambda c: c["features"].append(
                {"name": "c", "type": "categorical", "derive": {"column": "y"}}
            ),
            "needs categories",
        ),
        (
            lambda c: c["features"].append(
                {"name": "r", "type": "numeric", "range": [2, 1], "derive": {"column": "x"}}
            ),
            "range min",
        ),
        (
            lambda c: c["features"].append(
                {"name": "i", "type": "numeric", "missing": "impute", "derive": {"column": "x"}}
            ),
            "impute_value",
        ),
        (
            lambda c: c["features"].append(
                {"name": "a", "type": "numeric", "derive": {"column": "x", "sql": "x"}}
            ),
            "exactly one",
        ),
        (
            lambda c: c["features"].append(
                {
                    "name": "a",
                    "type": "numeric",
                    "derive": {"aggregate": {"source": "nope", "fn": "count"}},
                }
            ),
            "unknown source",
        ),
        (lambda c: c["label"].update(positive=[]), "positive"),
        (lambda c: c["sources"]["people"].update(key=["missing_col"]), "not declared"),
        (
            lambda c: c["features"].append(
                {"name": "id", "type": "numeric", "derive": {"column": "x"}}
            ),
            "clash",
        ),
    ],
)
def test_inconsistent_contracts_are_rejected(mutate: Any, message: str) -> None:
    data = minimal()
    mutate(data)
    with pytest.raises(ValueError, match=message):
        FeatureContract.model_validate(data)


def test_load_contract_names_the_file(tmp_path: Path) -> None:
    data = minimal()
    data["features"][0]["type"] = "text"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        load_contract(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_contract(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["saas", "telco"])
def test_project_contracts_round_trip(name: str) -> None:
    contract = load_contract(CONTRACTS / f"{name}.yaml")
    again = FeatureContract.model_validate(yaml.safe_load(contract.to_yaml()))
    assert again == contract
