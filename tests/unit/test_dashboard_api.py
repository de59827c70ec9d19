"""The dashboard's read-only API (``/v1/dashboard/...``) and the static ``/ui`` build, without Ray.

Scores, gold and drift are real Delta tables written here (delta-rs), read by the API through
DataFusion; the model report is a real ``report.json`` built by the training code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from argon2 import PasswordHasher
from deltalake import write_deltalake
from fastapi.testclient import TestClient

from churn_core.evaluation import evaluate
from churn_core.model import ChurnModel
from churn_core.registry import ArtifactFile
from churn_core.settings import AuthSettings
from churn_core.tables import Tables
from monitoring.drift_job import results_schema
from pipelines.scoring import PARTITION_COLUMNS, SCORES_SCHEMA
from serve_apps.api import create_api
from serve_apps.dashboard import ScoreFilters, drift_history, parse_reasons, scope_condition
from serve_apps.runtime import ServingRuntime, build_runtime
from tests.unit.test_api import GOOD, PROJECT, MemorySource, meta, serve_settings, token
from training.report import report_document

OLD, LATEST = date(2026, 1, 1), date(2026, 2, 1)
CUSTOMERS = [f"C{n:04d}" for n in range(12)] + ["X0001"]
FEATURES = ["usage", "plan", "autopay", "fee"]


def reasons(*features: str) -> str:
    """Reasons JSON as pipelines/scoring.py:reasons_json writes it."""
    return (
        "["
        + ",".join(
            f'{{"feature":{json.dumps(f)},"contribution":{0.5 - i / 10}}}'
            for i, f in enumerate(features)
        )
        + "]"
    )


def features_of(index: int) -> dict[str, Any]:
    return {
        "usage": float(5 * index),
        "plan": "basic" if index % 2 else "premium",
        "autopay": index % 3 == 0,
        "fee": 10.0 + index,
    }


def write_scores(tables: Tables) -> None:
    rows = []
    scored_at = datetime(2026, 2, 2, 3, 0, tzinfo=UTC)
    for snapshot, shift in ((OLD, 0.05), (LATEST, 0.0)):
        for index, customer in enumerate(CUSTOMERS):
            probability = round(0.9 - index * 0.07 + shift, 4)
            top = ("usage", "fee") if index % 2 else ("autopay", "plan")
            rows.append(
                {
                    "customer_id": customer,
                    "probability": probability,
                    "churn": probability >= 0.5,
                    "reasons": reasons(*top),
                    "threshold": 0.5,
                    "model_name": "m",
                    "gold_version": 3,
                    "scored_at": scored_at
                    - (timedelta(days=31) if snapshot == OLD else timedelta()),
                    "snapshot_date": snapshot,
                    "model_version": 1,
                }
            )
    write_deltalake(
        str(tables.scores),
        pa.Table.from_pylist(rows, schema=SCORES_SCHEMA),
        partition_by=PARTITION_COLUMNS,
    )


def write_gold(tables: Tables) -> None:
    rows = [
        {"id": customer, "snapshot_date": snapshot, **features_of(index)}
        for snapshot in (OLD, LATEST)
        for index, customer in enumerate(CUSTOMERS)
    ]
    write_deltalake(str(tables.gold_features), pa.Table.from_pylist(rows))


def write_drift(tables: Tables) -> None:
    rows = []
    for run in range(3):
        run_at = datetime(2026, 2, 1, run, tzinfo=UTC)
        for feature, kind in (("usage", "numeric"), ("plan", "categorical"), ("score", "score")):
            drifted = feature == "usage" and run == 2
            rows.append(
                {
                    "run_id": f"run-{run}",
                    "run_at": run_at,
                    "model_name": "m",
                    "model_version": 1,
                    "alias": "champion",
                    "window_start": run_at - timedelta(hours=24),
                    "window_end": run_at,
                    "feature": feature,
                    "kind": kind,
                    "n_reference": 2000,
                    "n_current": 900 if kind == "score" else 1000,
                    "psi": 0.3 if drifted else 0.01 * (run + 1),
                    "js_distance": 0.2 if drifted else 0.01,
                    "ks_statistic": None,
                    "ks_pvalue": 1e-6 if drifted else (0.5 if kind == "numeric" else None),
                    "chi2_statistic": None,
                    "chi2_pvalue": 0.4 if kind == "categorical" else None,
                    "status": "drift" if drifted else "ok",
                    "reasons": ["psi 0.300 >= 0.2"] if drifted else [],
                }
            )
    write_deltalake(str(tables.drift_results), pa.Table.from_pylist(rows, schema=results_schema()))


def report_bytes(version: int) -> bytes:
    rng = np.random.default_rng(version)
    labels = rng.random(400) < 0.3
    scores = np.clip(labels * 0.3 + rng.random(400) * 0.7, 0, 1)
    document = report_document(
        evaluate(labels.astype(int), scores, 0.5),
        {},
        {"gain": {"usage": 5.0, "fee": 1.0}, "shap": {"usage": 0.4, "fee": 0.1}},
        "m",
        version,
        [],
    )
    return json.dumps(document).encode()


@pytest.fixture
def tables(tmp_path: Path) -> Tables:
    found = Tables(tmp_path / "lake" / "tiny")
    write_scores(found)
    write_gold(found)
    write_drift(found)
    return found


@pytest.fixture
def ui_dir(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>dashboard</title>")
    (dist / "assets" / "app-1234.js").write_text("console.log('hi')")
    (tmp_path / "secret.txt").write_text("not for you")
    return dist


@pytest.fixture
def principals(tmp_path: Path) -> Path:
    """The test principals plus a viewer limited to customers starting with C000."""
    data = (PROJECT / "configs/auth/test.yaml").read_text()
    cheap = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    scoped = (
        "\n  scoped-viewer:\n"
        f'    secret_hash: "{cheap.hash("scoped-viewer-secret")}"\n'
        "    roles: [viewer]\n"
        '    customer_scope: ["C000"]\n'
    )
    data = data.replace("\nusers:", scoped + "users:")
    path = tmp_path / "principals.yaml"
    path.write_text(data)
    return path


@pytest.fixture
def source(tiny_model: ChurnModel) -> MemorySource:
    versions = {1: meta(1, threshold=0.5), 2: meta(2, threshold=0.4)}
    versions[1] = versions[1].model_copy(
        update={"files": [ArtifactFile(name="report.json", sha256="x", size=1)]}
    )
    return MemorySource(tiny_model, versions, files={(1, "report.json"): report_bytes(1)})


def make_runtime(
    source: MemorySource, tmp_path: Path, tables: Tables | None, ui_dir: Path, principals: Path
) -> ServingRuntime:
    auth = AuthSettings(
        keys_dir=tmp_path / "keys", create_missing_key=True, principals_path=principals
    )
    settings = serve_settings(tmp_path, ui_dir=ui_dir, auth=auth)
    return build_runtime(settings, source, lambda p: p, tables=tables)


@pytest.fixture
def runtime(
    source: MemorySource, tmp_path: Path, tables: Tables, ui_dir: Path, principals: Path
) -> ServingRuntime:
    return make_runtime(source, tmp_path, tables, ui_dir, principals)


@pytest.fixture
def client(runtime: ServingRuntime) -> Iterator[TestClient]:
    with TestClient(create_api(runtime)) as client:
        yield client


@pytest.fixture
def viewer(client: TestClient) -> dict[str, str]:
    return token(client, "viewer-client")


# --- scores -----------------------------------------------------------------------------------


def test_scores_page_is_the_latest_slice_highest_risk_first(
    client: TestClient, viewer: dict[str, str]
) -> None:
    response = client.get("/v1/dashboard/scores", params={"limit": 5}, headers=viewer)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["snapshot_date"] == LATEST.isoformat() and page["model_version"] == 1
    assert page["customers"] == page["matching"] == len(CUSTOMERS)
    expected_risk = sum(1 for i in range(len(CUSTOMERS)) if 0.9 - i * 0.07 >= 0.5)
    assert page["at_risk"] == expected_risk and page["threshold"] == 0.5
    probabilities = [item["probability"] for item in page["items"]]
    assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 5
    first = page["items"][0]
    assert first["customer_id"] == "C0000" and first["probability"] == pytest.approx(0.9)
    assert [r["feature"] for r in first["reasons"]] == ["autopay", "plan"]
    assert page["features"] == FEATURES
    # The next page continues where this one stopped.
    second = client.get(
        "/v1/dashboard/scores", params={"limit": 5, "offset": 5}, headers=viewer
    ).json()
    assert second["items"][0]["customer_id"] == "C0005"


def test_scores_sort_by_customer_id_both_ways(client: TestClient, viewer: dict[str, str]) -> None:
    ascending = client.get(
        "/v1/dashboard/scores", params={"sort": "customer_id", "order": "asc"}, headers=viewer
    ).json()
    ids = [item["customer_id"] for item in ascending["items"]]
    assert ids == sorted(CUSTOMERS)
    descending = client.get(
        "/v1/dashboard/scores", params={"sort": "customer_id", "order": "desc"}, headers=viewer
    ).json()
    assert [item["customer_id"] for item in descending["items"]] == sorted(CUSTOMERS)[::-1]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"search": "X0"}, ["X0001"]),
        ({"search": "C001"}, ["C0010", "C0011"]),
        ({"min_probability": 0.7}, ["C0000", "C0001", "C0002"]),
        ({"churn_only": "true"}, [f"C{n:04d}" for n in range(6)]),
        ({"reason": "fee", "min_probability": 0.5}, ["C0001", "C0003", "C0005"]),
    ],
)
def test_scores_filters(
    client: TestClient, viewer: dict[str, str], params: dict[str, Any], expected: list[str]
) -> None:
    page = client.get("/v1/dashboard/scores", params=params, headers=viewer).json()
    assert sorted(item["customer_id"] for item in page["items"]) == expected
    assert page["matching"] == len(expected) and page["customers"] == len(CUSTOMERS)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"reason": "colour"}, "reason"),  # not a contract feature
        ({"search": "x' OR 1=1"}, "search"),
        ({"min_probability": 2}, "min_probability"),
        ({"limit": 0}, "limit"),
        ({"sort": "reasons"}, "sort"),
    ],
)
def test_bad_score_queries_get_422_naming_the_field(
    client: TestClient, viewer: dict[str, str], params: dict[str, Any], field: str
) -> None:
    response = client.get("/v1/dashboard/scores", params=params, headers=viewer)
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == [f"query.{field}"]


def test_dashboard_needs_the_viewer_role(client: TestClient) -> None:
    assert client.get("/v1/dashboard/scores").status_code == 401
    predictor = token(client, "predictor-client")
    for path in ("scores", "customers/C0001", "models", "models/1/report", "drift", "live"):
        response = client.get(f"/v1/dashboard/{path}", headers=predictor)
        assert response.status_code == 403, path
        assert response.json()["error"] == "insufficient_role"
    admin = token(client, "admin-client")  # admin holds every role
    assert client.get("/v1/dashboard/scores", headers=admin).status_code == 200


def test_a_scoped_viewer_sees_only_its_customers(client: TestClient) -> None:
    scoped = token(client, "scoped-viewer")
    page = client.get("/v1/dashboard/scores", headers=scoped).json()
    ids = {item["customer_id"] for item in page["items"]}
    assert ids == {f"C{n:04d}" for n in range(10)} and page["customers"] == 10
    assert client.get("/v1/dashboard/customers/C0003", headers=scoped).status_code == 200
    refused = client.get("/v1/dashboard/customers/C0011", headers=scoped)
    assert refused.status_code == 403 and refused.json()["error"] == "customer_out_of_scope"


def test_nothing_scored_yet_is_an_empty_page(
    source: MemorySource, tmp_path: Path, ui_dir: Path, principals: Path
) -> None:
    runtime = make_runtime(source, tmp_path, Tables(tmp_path / "empty"), ui_dir, principals)
    with TestClient(create_api(runtime)) as client:
        viewer = token(client, "viewer-client")
        page = client.get("/v1/dashboard/scores", headers=viewer).json()
        assert page["snapshot_date"] is None and page["items"] == [] and page["customers"] == 0
        drift = client.get("/v1/dashboard/drift", headers=viewer).json()
        assert drift == {"runs": [], "features": [], "alerts": []}
        missing = client.get("/v1/dashboard/customers/C0001", headers=viewer)
        assert missing.status_code == 404 and missing.json()["error"] == "unknown_customer"


# --- one customer -----------------------------------------------------------------------------


def test_customer_detail_explains_every_feature(
    client: TestClient, viewer: dict[str, str], tiny_model: ChurnModel
) -> None:
    response = client.get("/v1/dashboard/customers/C0003", headers=viewer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["score"]["snapshot_date"] == LATEST.isoformat()
    assert body["score"]["probability"] == pytest.approx(0.9 - 3 * 0.07)
    assert [p["snapshot_date"] for p in body["history"]] == [OLD.isoformat(), LATEST.isoformat()]
    assert body["features"] == features_of(3)
    assert sorted(c["feature"] for c in body["contributions"]) == sorted(FEATURES)
    pushes = [abs(c["contribution"]) for c in body["contributions"]]
    assert pushes == sorted(pushes, reverse=True)
    # SHAP: the bias plus every contribution is the log-odds of the model's probability.
    expected = float(tiny_model.predict_records([features_of(3)])[0])
    assert body["explained_probability"] == pytest.approx(expected)
    log_odds = body["base_value"] + sum(c["contribution"] for c in body["contributions"])
    assert 1 / (1 + math.exp(-log_odds)) == pytest.approx(expected, rel=1e-4)
    assert body["explained_by"] == 1


def test_unknown_and_malformed_customers(client: TestClient, viewer: dict[str, str]) -> None:
    unknown = client.get("/v1/dashboard/customers/NOBODY", headers=viewer)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_customer"
    bad = client.get("/v1/dashboard/customers/a'b", headers=viewer)
    assert bad.status_code == 422


# --- models -----------------------------------------------------------------------------------


def test_models_lists_versions_aliases_and_metrics(
    client: TestClient, viewer: dict[str, str], source: MemorySource
) -> None:
    body = client.get("/v1/dashboard/models", headers=viewer).json()
    assert body["serving_version"] == 1 and body["aliases"] == {"champion": 1}
    assert [v["version"] for v in body["versions"]] == [2, 1]  # newest first
    first = body["versions"][1]
    assert first["aliases"] == ["champion"] and first["has_report"] is True
    assert first["metrics"] == {"roc_auc": 0.8} and first["threshold"] == 0.5
    assert body["versions"][0]["has_report"] is False


def test_model_report_carries_roc_calibration_and_lift(
    client: TestClient, viewer: dict[str, str]
) -> None:
    response = client.get("/v1/dashboard/models/1/report", headers=viewer)
    assert response.status_code == 200, response.text
    report = response.json()
    roc = report["roc"]
    assert len(roc["x"]) == len(roc["y"]) > 2 and roc["x"][0] == 0 and roc["y"][-1] == 1
    assert len(report["calibration"]) == 10 and len(report["lift"]) == 10
    assert report["lift"][0]["decile"] == 1 and report["n"] == 400
    assert 0.5 < report["metrics"]["roc_auc"] <= 1
    assert report["importance"]["shap"] == {"usage": 0.4, "fee": 0.1}
    assert report["at_threshold"]["threshold"] == 0.5
    missing = client.get("/v1/dashboard/models/2/report", headers=viewer)
    assert missing.status_code == 404 and missing.json()["error"] == "no_report"
    unknown = client.get("/v1/dashboard/models/9/report", headers=viewer)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_version"


# --- drift and live ---------------------------------------------------------------------------


def test_drift_history_runs_series_and_alerts(client: TestClient, viewer: dict[str, str]) -> None:
    body = client.get("/v1/dashboard/drift", headers=viewer).json()
    assert [r["run_id"] for r in body["runs"]] == ["run-2", "run-1", "run-0"]
    assert body["runs"][0]["drifted"] == ["usage"] and body["runs"][1]["drifted"] == []
    assert body["runs"][0]["n_current"] == 1000
    assert [s["feature"] for s in body["features"]] == ["plan", "usage", "score"]
    usage = body["features"][1]
    assert [p["psi"] for p in usage["points"]] == pytest.approx([0.01, 0.02, 0.3])
    assert [a["feature"] for a in body["alerts"]] == ["usage"]
    assert body["alerts"][0]["reasons"] == ["psi 0.300 >= 0.2"]
    latest = client.get("/v1/dashboard/drift", params={"runs": 1}, headers=viewer).json()
    assert [r["run_id"] for r in latest["runs"]] == ["run-2"]


def test_live_stats_count_this_replicas_requests_and_cache(
    client: TestClient, viewer: dict[str, str], runtime: ServingRuntime
) -> None:
    predictor = token(client, "predictor-client")
    for _ in range(3):
        client.post("/v1/predict", json={"features": GOOD}, headers=predictor)
    body = client.get("/v1/dashboard/live", headers=viewer).json()
    assert body["replica"] == runtime.replica_id and body["model_version"] == 1
    routes = {r["route"]: r for r in body["routes"]}
    predict = routes["/v1/predict"]
    assert predict["requests"] == {"200": 3.0} and predict["latency_count"] == 3
    assert predict["buckets"][-1] == {"le": None, "count": 3.0}  # +Inf
    assert body["cache"] == {"hit": 2.0, "miss": 1.0}
    assert sum(body["predictions"].values()) == 3


# --- the static build -------------------------------------------------------------------------


def test_ui_serves_the_build_with_spa_fallback(client: TestClient) -> None:
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "ui/"
    index = client.get("/ui/")
    assert index.status_code == 200 and "<title>dashboard</title>" in index.text
    assert "script-src 'self'" in index.headers["content-security-policy"]
    assert index.headers["cache-control"] == "no-cache"
    page = client.get("/ui/customers/C0001")  # a client-side route
    assert page.status_code == 200 and page.text == index.text
    asset = client.get("/ui/assets/app-1234.js")
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
    assert client.get("/ui/assets/gone.js").status_code == 404
    assert client.get("/ui/favicon.ico").status_code == 404
    assert client.get("/ui/..%2Fsecret.txt").status_code == 404
    assert "not for you" not in client.get("/ui/../secret.txt").text


def test_api_starts_without_a_build_and_says_so(
    source: MemorySource, tmp_path: Path, tables: Tables, principals: Path
) -> None:
    runtime = make_runtime(source, tmp_path, tables, tmp_path / "no-build", principals)
    with TestClient(create_api(runtime)) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["checks"]["dashboard"].startswith("not built")
        missing = client.get("/ui/")
        assert missing.status_code == 404 and missing.json()["error"] == "dashboard_not_built"
        viewer = token(client, "viewer-client")
        assert client.get("/v1/dashboard/scores", headers=viewer).status_code == 200


# --- helpers ----------------------------------------------------------------------------------


def test_filters_and_scope_quote_what_reaches_sql() -> None:
    assert scope_condition(["*"]) is None and scope_condition([]) is None
    assert scope_condition(["C0", "o'x"]) == (
        "(starts_with(customer_id, 'C0') OR starts_with(customer_id, 'o''x'))"
    )
    conditions = ScoreFilters(search="a'b", reason='fe"e').conditions()
    assert conditions[0] == "strpos(customer_id, 'a''b') > 0"
    assert conditions[1] == 'strpos(reasons, \'{"feature":"fe\\"e",\') > 0'


def test_parse_reasons_tolerates_bad_text() -> None:
    assert parse_reasons(None) == [] and parse_reasons("not json") == []
    assert parse_reasons('{"feature": "x"}') == []
    parsed = parse_reasons(reasons("usage"))
    assert [(r.feature, r.contribution) for r in parsed] == [("usage", 0.5)]


def test_drift_history_of_no_rows_is_empty() -> None:
    assert drift_history([]).model_dump() == {"runs": [], "features": [], "alerts": []}
