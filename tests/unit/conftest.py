"""A tiny contract and a model trained on it in milliseconds (no Ray, no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from churn_core.contract import FeatureContract
from churn_core.model import ChurnModel, FeatureEncoder
from churn_core.registry import ModelVersion, Registry

TINY_CONTRACT = {
    "name": "tiny",
    "entity_key": "id",
    "sources": {
        "people": {
            "format": "csv",
            "path": "p.csv",
            "role": "entity",
            "key": ["id"],
            "columns": {
                "id": "string",
                "usage": "double",
                "plan": "string",
                "autopay": "boolean",
                "fee": "double",
                "y": "string",
            },
        }
    },
    "label": {"kind": "column", "source": "people", "column": "y", "positive": ["yes"]},
    "features": [
        {
            "name": "usage",
            "type": "numeric",
            "range": [0, 100],
            "missing": "reject",
            "derive": {"column": "usage"},
        },
        {
            "name": "plan",
            "type": "categorical",
            "categories": ["basic", "premium"],
            "missing": "flag",
            "derive": {"column": "plan"},
        },
        {
            "name": "autopay",
            "type": "boolean",
            "missing": "impute",
            "impute_value": False,
            "derive": {"column": "autopay"},
        },
        {
            "name": "fee",
            "type": "numeric",
            "missing": "impute",
            "impute_value": 10.0,
            "derive": {"column": "fee"},
        },
    ],
}


@pytest.fixture(scope="session")
def tiny_contract() -> FeatureContract:
    return FeatureContract.model_validate(TINY_CONTRACT)


def tiny_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "usage": rng.uniform(0, 100, n),
            "plan": rng.choice(["basic", "premium"], n),
            "autopay": rng.random(n) < 0.5,
            "fee": rng.uniform(5, 50, n),
        }
    )
    # Low usage and no autopay drive churn.
    logit = 2.0 - 0.06 * frame["usage"] - 1.0 * frame["autopay"] + 0.5 * (frame["plan"] == "basic")
    frame["churned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


@pytest.fixture(scope="session")
def tiny_model_bytes(tiny_contract: FeatureContract) -> bytes:
    frame = tiny_frame(2000)
    encoder = FeatureEncoder(tiny_contract)
    dmatrix = encoder.dmatrix(encoder.encode_frame(frame), frame["churned"].to_numpy())
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1}, dmatrix, 40)
    return bytes(booster.save_raw("ubj"))


@pytest.fixture
def tiny_model(tiny_model_bytes: bytes, tiny_contract: FeatureContract) -> ChurnModel:
    return ChurnModel.from_bytes(tiny_model_bytes, tiny_contract, version=1)


def register_tiny(
    registry: Registry, model_bytes: bytes, contract: FeatureContract, name: str
) -> ModelVersion:
    """The tiny model registered as version 1 of ``name``, threshold 0.3, no metrics."""
    return registry.register(
        name,
        model_bytes,
        contract,
        params={"threshold": 0.3},
        metrics={},
        lineage={},
        feature_importance={},
    )
