from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from churn_core.contract import FeatureContract
from churn_core.model import ChurnModel, FeatureEncoder
from tests.unit.conftest import tiny_frame


def test_encoding_follows_the_contract(tiny_contract: FeatureContract) -> None:
    encoder = FeatureEncoder(tiny_contract)
    rows = encoder.encode_records(
        [
            {"usage": 5.0, "plan": "premium", "autopay": True, "fee": 20.0},
            {
                "usage": 7.0,
                "plan": "gold",
                "autopay": None,
                "fee": None,
            },  # unknown category, missing values
        ]
    )
    assert rows.dtype == np.float32
    assert rows[0].tolist() == [5.0, 1.0, 1.0, 20.0]
    assert rows[1][0] == 7.0 and math.isnan(rows[1][1])
    assert rows[1][2] == 0.0  # imputed False
    assert rows[1][3] == 10.0  # imputed 10.0


def test_record_and_frame_encoding_agree(tiny_contract: FeatureContract) -> None:
    frame = tiny_frame(50, seed=3)
    frame.loc[0, "plan"] = None
    frame.loc[1, "fee"] = None
    encoder = FeatureEncoder(tiny_contract)
    by_frame = encoder.encode_frame(frame)
    by_record = encoder.encode_records(frame[tiny_contract.feature_names].to_dict("records"))
    np.testing.assert_array_equal(by_frame, by_record)


def test_model_learns_the_planted_drivers(tiny_model: ChurnModel) -> None:
    holdout = tiny_frame(1000, seed=1)
    scores = tiny_model.predict_frame(holdout)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(holdout["churned"], scores) > 0.75
    low, high = tiny_model.predict_records(
        [
            {"usage": 1.0, "plan": "basic", "autopay": False},
            {"usage": 99.0, "plan": "premium", "autopay": True},
        ]
    )
    assert low > high


def test_reasons_are_sorted_and_sum_to_the_margin(tiny_model: ChurnModel) -> None:
    record = {"usage": 2.0, "plan": "basic", "autopay": False, "fee": 30.0}
    matrix = tiny_model.encoder.encode_records([record])
    reasons = tiny_model.explain_matrix(matrix, top_k=4)[0]
    sizes = [abs(r.contribution) for r in reasons]
    assert sizes == sorted(sizes, reverse=True)
    assert reasons[0].feature == "usage" and reasons[0].contribution > 0
    margin = float(tiny_model.booster.inplace_predict(matrix, predict_type="margin")[0])
    bias = margin - sum(r.contribution for r in reasons)
    probability = 1 / (1 + math.exp(-(bias + sum(r.contribution for r in reasons))))
    assert probability == pytest.approx(float(tiny_model.predict_matrix(matrix)[0]), rel=1e-5)


def test_model_refuses_a_contract_it_was_not_trained_on(
    tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    other = tiny_contract.model_copy(update={"features": list(reversed(tiny_contract.features))})
    with pytest.raises(ValueError, match="do not match"):
        ChurnModel.from_bytes(tiny_model_bytes, other)


def test_importance_covers_every_feature(tiny_model: ChurnModel) -> None:
    importance = tiny_model.feature_importance()
    assert list(importance) == ["usage", "plan", "autopay", "fee"]
    assert max(importance, key=importance.__getitem__) == "usage"
