"""The HTTP API around a tiny model in plain FastAPI (Serve runs the same app in integration).

No Redis here: the cache and the rate limits fall back to the replica's memory, which is also
what the API does when Redis goes down. Tokens come from the real token endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from churn_core.model import ChurnModel
from churn_core.registry import AliasEvent, ModelVersion, PromotionResult, RegistryError
from churn_core.settings import AuthSettings, RateLimitSettings, ServeSettings
from serve_apps.api import create_api
from serve_apps.runtime import ServingRuntime, build_runtime

PROJECT = Path(__file__).resolve().parents[2]
GOOD = {"usage": 3.0, "plan": "basic", "autopay": False, "fee": 20.0}


def meta(version: int, threshold: float = 0.5) -> ModelVersion:
    return ModelVersion(
        name="m",
        version=version,
        created_at=datetime.now(UTC),
        artifact_sha256="x",
        params={"threshold": threshold},
        metrics={"roc_auc": 0.8},
        feature_importance={"usage": 5.0, "plan": 1.0, "autopay": 2.0, "fee": float(version)},
    )


@dataclass
class MemorySource:
    """A model source in memory: versions and where the alias points (the registry's role)."""

    model: ChurnModel
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    alias: int = 1
    # Stored files by (version, name): what the registry's read_file answers.
    files: dict[tuple[int, str], bytes] = field(default_factory=dict)

    def current_version(self) -> int:
        return self.alias

    def load(self, version: int | None = None) -> tuple[ChurnModel, ModelVersion]:
        return self.model, self.versions[self.alias if version is None else version]

    def metadata(self, version: int) -> ModelVersion:
        if version not in self.versions:
            raise RegistryError(f"model m has no version {version}")
        return self.versions[version]

    def promote(self, version: int, actor: str, reason: str) -> PromotionResult:
        self.metadata(version)
        previous, self.alias = self.alias, version
        return PromotionResult(
            name="m",
            alias="champion",
            version=version,
            previous=previous,
            changed=True,
            forced=False,
            gates=[],
            event=None,
        )

    def list_versions(self) -> list[ModelVersion]:
        return [self.versions[n] for n in sorted(self.versions)]

    def aliases(self) -> dict[str, int]:
        return {"champion": self.alias}

    def alias_history(self) -> list[AliasEvent]:
        return []

    def read_file(self, version: int, filename: str) -> bytes:
        if (version, filename) not in self.files:
            raise RegistryError(f"model m version {version} has no file {filename!r}")
        return self.files[(version, filename)]


@pytest.fixture
def source(tiny_model: ChurnModel) -> MemorySource:
    return MemorySource(tiny_model, {1: meta(1, threshold=0.3), 2: meta(2, threshold=0.9)})


def serve_settings(tmp_path: Path, **changes: object) -> ServeSettings:
    auth = AuthSettings(
        keys_dir=tmp_path / "keys",
        create_missing_key=True,
        principals_path=PROJECT / "configs/auth/test.yaml",
    )
    base = ServeSettings(
        max_batch_records=5,
        top_reasons=2,
        reload_interval_s=0,
        auth=auth,
        rate_limit=RateLimitSettings(requests=1000, window_s=60),
    )
    return base.model_copy(update=changes)


@pytest.fixture
def runtime(source: MemorySource, tmp_path: Path) -> ServingRuntime:
    return build_runtime(serve_settings(tmp_path), source, lambda p: p)


@pytest.fixture
def client(runtime: ServingRuntime) -> Iterator[TestClient]:
    with TestClient(create_api(runtime)) as client:
        yield client


def token(client: TestClient, name: str) -> dict[str, str]:
    response = client.post(
        "/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": name,
            "client_secret": f"{name}-secret",
        },
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def predictor(client: TestClient) -> dict[str, str]:
    return token(client, "predictor-client")


def test_predict_returns_probability_label_version_and_reasons(
    client: TestClient, predictor: dict[str, str], tiny_model: ChurnModel
) -> None:
    response = client.post(
        "/v1/predict", json={"customer_id": "c1", "features": GOOD}, headers=predictor
    )
    assert response.status_code == 200
    body = response.json()
    expected = float(tiny_model.predict_records([GOOD])[0])
    assert body["probability"] == pytest.approx(expected)
    # The label uses the version's own threshold (0.3 for version 1), not the settings default.
    assert body["threshold"] == 0.3 and body["churn"] == (expected >= 0.3)
    assert body["customer_id"] == "c1" and body["model_version"] == 1
    assert body["features_from"] == "request"
    assert len(body["reasons"]) == 2


def test_the_same_features_are_answered_from_the_cache(
    client: TestClient, predictor: dict[str, str], runtime: ServingRuntime
) -> None:
    reordered = dict(reversed(list(GOOD.items())))
    first = client.post("/v1/predict", json={"features": GOOD}, headers=predictor).json()
    second = client.post("/v1/predict", json={"features": reordered}, headers=predictor).json()
    # Every answer is its own prediction (its own log row); the rest comes from the cache.
    assert first.pop("prediction_id") != second.pop("prediction_id")
    assert first == second
    hits = runtime.metrics.cache.labels("hit")._value.get()
    misses = runtime.metrics.cache.labels("miss")._value.get()
    assert (hits, misses) == (1, 1)


def test_optional_features_may_be_omitted_but_rejected_ones_may_not(
    client: TestClient, predictor: dict[str, str]
) -> None:
    ok = client.post("/v1/predict", json={"features": {"usage": 50.0}}, headers=predictor)
    assert ok.status_code == 200
    response = client.post("/v1/predict", json={"features": {"plan": "basic"}}, headers=predictor)
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_request",
        "detail": [{"field": "features.usage", "message": "Field required"}],
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"features": {**GOOD, "usage": 101.0}}, "features.usage"),  # out of the contract's range
        ({"features": {**GOOD, "usage": "lots"}}, "features.usage"),
        ({"features": {**GOOD, "plan": "gold"}}, "features.plan"),  # not a contract category
        ({"features": {**GOOD, "colour": "red"}}, "features.colour"),  # not a contract feature
        ({"features": GOOD, "customer_id": "x' OR 1=1"}, "customer_id"),
        ({"features": GOOD, "extra": 1}, "extra"),
        ({}, "body"),  # neither features nor a customer id
    ],
)
def test_invalid_requests_get_422_naming_the_field(
    client: TestClient, predictor: dict[str, str], body: dict[str, object], field: str
) -> None:
    response = client.post("/v1/predict", json=body, headers=predictor)
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == [field]


def test_non_json_body_is_a_422_not_a_500(client: TestClient, predictor: dict[str, str]) -> None:
    response = client.post(
        "/v1/predict",
        content=b"{not json",
        headers={**predictor, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_batch_keeps_order_and_limit_is_enforced(
    client: TestClient, predictor: dict[str, str], tiny_model: ChurnModel
) -> None:
    records = [
        {"customer_id": str(u), "features": {**GOOD, "usage": float(u)}} for u in (1, 50, 99)
    ]
    response = client.post("/v1/batch_predict", json={"records": records}, headers=predictor)
    body = response.json()
    assert [p["customer_id"] for p in body["predictions"]] == ["1", "50", "99"]
    expected = tiny_model.predict_records([r["features"] for r in records])
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(list(expected))
    too_many = client.post("/v1/batch_predict", json={"records": records * 2}, headers=predictor)
    assert too_many.status_code == 413
    message = too_many.json()["detail"][0]["message"]
    assert "limit of 5" in message and "batch scoring" in message
    empty = client.post("/v1/batch_predict", json={"records": []}, headers=predictor)
    assert empty.status_code == 422


def test_a_body_over_the_byte_limit_is_a_413(
    client: TestClient, predictor: dict[str, str], runtime: ServingRuntime
) -> None:
    padding = "x" * (runtime.settings.max_body_bytes + 10)
    response = client.post(
        "/v1/predict",
        content=b'{"customer_id": "' + padding.encode() + b'"}',
        headers={**predictor, "content-type": "application/json"},
    )
    assert response.status_code == 413


def test_each_route_needs_its_role(client: TestClient) -> None:
    viewer, predictor, admin = (
        token(client, n) for n in ("viewer-client", "predictor-client", "admin-client")
    )
    predict = {"features": GOOD}
    assert client.post("/v1/predict", json=predict, headers=viewer).status_code == 403
    assert client.post("/v1/predict", json=predict, headers=predictor).status_code == 200
    assert client.post("/v1/predict", json=predict, headers=admin).status_code == 200
    for route in ("/v1/model_metrics", "/v1/feature_importance"):
        assert client.get(route, headers=viewer).status_code == 200
        assert client.get(route, headers=predictor).status_code == 403
    assert client.post("/v1/admin/reload", headers=predictor).status_code == 403
    assert client.post("/v1/admin/reload", headers=viewer).status_code == 403
    assert client.post("/v1/admin/reload", headers=admin).status_code == 200
    refused = client.get("/v1/model_metrics", headers=predictor).json()
    assert refused["error"] == "insufficient_role"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwdw=="])
def test_missing_or_malformed_tokens_get_401(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.post("/v1/predict", json={"features": GOOD}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    # Authentication comes before validation: a stranger learns nothing of the schema.
    bad_body = client.post("/v1/predict", json={"nonsense": 1}, headers=headers)
    assert bad_body.status_code == 401


def test_wrong_client_secret_gets_401(client: TestClient) -> None:
    response = client.post(
        "/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "admin-client",
            "client_secret": "guess",
        },
    )
    assert response.status_code == 401
    assert "guess" not in response.text


def test_password_grant(client: TestClient) -> None:
    response = client.post(
        "/v1/oauth/token",
        data={"grant_type": "password", "username": "analyst", "password": "analyst-password"},
    )
    assert response.status_code == 200
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert client.get("/v1/model_metrics", headers=headers).status_code == 200


def test_scoped_client_may_not_score_other_customers(client: TestClient) -> None:
    scoped = token(client, "scoped-client")
    mine = client.post(
        "/v1/predict", json={"customer_id": "C0000123", "features": GOOD}, headers=scoped
    )
    assert mine.status_code == 200
    other = client.post(
        "/v1/predict", json={"customer_id": "C9999999", "features": GOOD}, headers=scoped
    )
    assert other.status_code == 403 and other.json()["error"] == "customer_out_of_scope"


def test_rate_limit_returns_429_with_retry_after(client: TestClient) -> None:
    limited = token(client, "limited-client")  # 3 requests per window
    codes = [
        client.post("/v1/predict", json={"features": GOOD}, headers=limited).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    refused = client.post("/v1/predict", json={"features": GOOD}, headers=limited)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"] == "rate_limited"
    # Another client is not affected.
    other = token(client, "predictor-client")
    assert client.post("/v1/predict", json={"features": GOOD}, headers=other).status_code == 200


def test_reload_switches_version_and_never_reuses_the_old_cache(
    client: TestClient, source: MemorySource
) -> None:
    predictor, admin = token(client, "predictor-client"), token(client, "admin-client")
    before = client.post("/v1/predict", json={"features": GOOD}, headers=predictor).json()
    source.alias = 2
    result = client.post("/v1/admin/reload", headers=admin).json()
    assert result == {"model_version": 2, "changed": True, "error": None}
    after = client.post("/v1/predict", json={"features": GOOD}, headers=predictor).json()
    assert (before["model_version"], after["model_version"]) == (1, 2)
    assert (before["threshold"], after["threshold"]) == (0.3, 0.9)


def test_promote_through_the_api(client: TestClient, source: MemorySource) -> None:
    admin = token(client, "admin-client")
    response = client.post("/v1/admin/promote", json={"version": 2}, headers=admin)
    assert response.status_code == 200 and response.json()["model_version"] == 2
    assert source.alias == 2
    unknown = client.post("/v1/admin/promote", json={"version": 9}, headers=admin)
    assert unknown.status_code == 404


def test_metrics_count_what_was_served(client: TestClient, predictor: dict[str, str]) -> None:
    client.post("/v1/predict", json={"features": GOOD}, headers=predictor)
    client.post("/v1/batch_predict", json={"records": [{"features": GOOD}] * 2}, headers=predictor)
    viewer = token(client, "viewer-client")
    metrics = client.get("/v1/model_metrics", headers=viewer).json()
    assert metrics["model_version"] == 1 and metrics["metrics"] == {"roc_auc": 0.8}
    assert metrics["served"]["predictions"] == 3
    exposition = client.get("/metrics").text
    assert 'churn_http_requests_total{route="/v1/predict",status="200"} 1.0' in exposition
    assert "churn_model_version 1.0" in exposition


def test_feature_importance_is_ranked_per_version(client: TestClient) -> None:
    viewer = token(client, "viewer-client")
    body = client.get("/v1/feature_importance", headers=viewer).json()
    assert list(body["importance"]) == ["usage", "autopay", "plan", "fee"]
    other = client.get("/v1/feature_importance?version=2", headers=viewer).json()
    assert other["model_version"] == 2 and other["importance"]["fee"] == 2.0
    missing = client.get("/v1/feature_importance?version=7", headers=viewer)
    assert missing.status_code == 404


def test_probes_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json()["model_version"] == 1
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["redis"] == "not configured"
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/batch_predict", "/v1/oauth/token"} <= set(schema["paths"])
    assert "/predict" not in schema["paths"]
    features = schema["components"]["schemas"]["TinyFeatures"]["properties"]
    assert features["plan"]["anyOf"][0]["enum"] == ["basic", "premium"]


def test_cors_allows_only_listed_origins(source: MemorySource, tmp_path: Path) -> None:
    settings = serve_settings(tmp_path, cors_origins=["https://app.example.com"])
    with TestClient(create_api(build_runtime(settings, source, lambda p: p))) as client:
        preflight = {"Access-Control-Request-Method": "POST"}
        allowed = client.options(
            "/v1/predict", headers={**preflight, "Origin": "https://app.example.com"}
        )
        refused = client.options(
            "/v1/predict", headers={**preflight, "Origin": "https://evil.example"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in refused.headers


def test_admin_routes_are_closed_when_auth_is_off(source: MemorySource, tmp_path: Path) -> None:
    settings = serve_settings(tmp_path)
    settings = settings.model_copy(
        update={"auth": settings.auth.model_copy(update={"enabled": False})}
    )
    with TestClient(create_api(build_runtime(settings, source, lambda p: p))) as client:
        assert client.post("/v1/predict", json={"features": GOOD}).status_code == 200
        assert client.post("/v1/admin/reload").status_code == 403
        assert client.post("/v1/admin/promote", json={"version": 2}).status_code == 403


def test_batch_reasons_can_be_approximate_or_left_out(
    client: TestClient, predictor: dict[str, str]
) -> None:
    records = [{"features": {**GOOD, "usage": float(u)}} for u in (5, 60, 95)]
    answers = {
        mode: client.post(
            "/v1/batch_predict", json={"records": records, "reasons": mode}, headers=predictor
        ).json()["predictions"]
        for mode in ("exact", "approximate", "none")
    }
    single = [
        client.post("/v1/predict", json=r, headers=predictor).json()["reasons"] for r in records
    ]
    assert [p["reasons"] for p in answers["exact"]] == single  # the batch explains like /predict
    assert all(len(p["reasons"]) == 2 for p in answers["approximate"])
    assert all(p["reasons"] == [] for p in answers["none"])
    probabilities = {m: [p["probability"] for p in a] for m, a in answers.items()}
    assert probabilities["exact"] == probabilities["approximate"] == probabilities["none"]
    bad = client.post(
        "/v1/batch_predict", json={"records": records, "reasons": "vague"}, headers=predictor
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "reasons"


def test_a_gathered_batch_scores_each_request_with_its_own_version(
    tiny_model: ChurnModel,
) -> None:
    from serve_apps.service import PredictionService, score_grouped

    old = PredictionService(tiny_model, meta(1), 0.5, top_reasons=1)
    new = PredictionService(tiny_model, meta(2), 0.5, top_reasons=3)
    rows = [{**GOOD, "usage": float(u)} for u in (1, 40, 80, 99)]
    items = [(old, rows[0]), (new, rows[1]), (old, rows[2]), (new, rows[3])]
    scored = score_grouped(items)
    assert [len(s["reasons"]) for s in scored] == [1, 3, 1, 3]
    expected = tiny_model.predict_records(rows)
    assert [s["probability"] for s in scored] == pytest.approx(list(expected))
