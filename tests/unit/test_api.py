"""The FastAPI app around a tiny model, without Ray (Serve runs the same app in integration)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from churn_core.model import ChurnModel
from churn_core.registry import ModelVersion
from churn_core.settings import ServeSettings
from serve_apps.api import create_api
from serve_apps.service import PredictionService

GOOD = {"usage": 3.0, "plan": "basic", "autopay": False, "fee": 20.0}


@pytest.fixture
def client(tiny_model: ChurnModel) -> TestClient:
    meta = ModelVersion(
        name="m",
        version=1,
        created_at=datetime.now(UTC),
        artifact_sha256="x",
        metrics={"roc_auc": 0.8},
        feature_importance={"usage": 5.0, "plan": 1.0, "autopay": 2.0, "fee": 0.0},
    )
    settings = ServeSettings(max_batch_records=5, top_reasons=2, threshold=0.5)
    return TestClient(create_api(PredictionService(tiny_model, meta, settings)))


def test_predict_returns_probability_label_version_and_reasons(
    client: TestClient, tiny_model: ChurnModel
) -> None:
    response = client.post("/v1/predict", json={"customer_id": "c1", "features": GOOD})
    assert response.status_code == 200
    body = response.json()
    expected = float(tiny_model.predict_records([GOOD])[0])
    assert body["probability"] == pytest.approx(expected)
    assert body["churn"] == (expected >= 0.5)
    assert body["customer_id"] == "c1" and body["model_version"] == 1
    assert len(body["reasons"]) == 2


def test_optional_features_may_be_omitted_but_rejected_ones_may_not(client: TestClient) -> None:
    assert client.post("/v1/predict", json={"features": {"usage": 50.0}}).status_code == 200
    response = client.post("/v1/predict", json={"features": {"plan": "basic"}})
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_request",
        "detail": [{"field": "features.usage", "message": "Field required"}],
    }


@pytest.mark.parametrize(
    ("features", "field"),
    [
        ({**GOOD, "usage": 101.0}, "features.usage"),  # out of the contract's range
        ({**GOOD, "usage": "lots"}, "features.usage"),
        ({**GOOD, "plan": "gold"}, "features.plan"),  # not a contract category
        ({**GOOD, "colour": "red"}, "features.colour"),  # not a contract feature
    ],
)
def test_invalid_features_get_422_naming_the_field(
    client: TestClient, features: dict[str, object], field: str
) -> None:
    response = client.post("/v1/predict", json={"features": features})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == [field]


def test_non_json_body_is_a_422_not_a_500(client: TestClient) -> None:
    response = client.post(
        "/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_batch_keeps_order_and_limit_is_enforced(
    client: TestClient, tiny_model: ChurnModel
) -> None:
    records = [
        {"customer_id": str(u), "features": {**GOOD, "usage": float(u)}} for u in (1, 50, 99)
    ]
    body = client.post("/v1/batch_predict", json={"records": records}).json()
    assert [p["customer_id"] for p in body["predictions"]] == ["1", "50", "99"]
    expected = tiny_model.predict_records([r["features"] for r in records])
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(list(expected))
    too_many = client.post("/v1/batch_predict", json={"records": records * 2})
    assert too_many.status_code == 413
    assert "limit of 5" in too_many.json()["detail"][0]["message"]
    assert client.post("/v1/batch_predict", json={"records": []}).status_code == 422


def test_metrics_count_what_was_served(client: TestClient) -> None:
    client.post("/v1/predict", json={"features": GOOD})
    client.post("/v1/batch_predict", json={"records": [{"features": GOOD}] * 2})
    metrics = client.get("/v1/model_metrics").json()
    assert metrics["model_version"] == 1 and metrics["metrics"] == {"roc_auc": 0.8}
    assert metrics["served"]["predictions"] == 3


def test_feature_importance_is_ranked(client: TestClient) -> None:
    body = client.get("/v1/feature_importance").json()
    assert list(body["importance"]) == ["usage", "autopay", "plan", "fee"]


def test_unversioned_paths_and_openapi(client: TestClient) -> None:
    assert client.post("/predict", json={"features": GOOD}).status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"] and "/predict" not in schema["paths"]
    features = schema["components"]["schemas"]["TinyFeatures"]["properties"]
    assert features["plan"]["anyOf"][0]["enum"] == ["basic", "premium"]
