"""The Serve application on a real Ray cluster behind HAProxy, with real Redis and PostgreSQL.

One deployment serves the whole module (deploying costs ~10 s). The registry is a copy of the
session pipeline's, so moving aliases here does not disturb other modules. Redis is a server
of this module's own, so stopping it mid-test leaves the shared one alone.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from deltalake import DeltaTable

from churn_core.registry import ARTIFACT_NAME, LocalRegistry
from churn_core.settings import Settings
from tests.conftest import PipelineRun
from tests.fixtures.redis import RedisServer

pytestmark = pytest.mark.integration

# Requests to the "shed" application wait this long for a PostgreSQL that never answers.
STUCK_S = 20
CLIENTS = ("viewer-client", "predictor-client", "admin-client", "scoped-client", "limited-client")


@dataclass
class Served:
    """The running application and what a test needs to talk to it."""

    url: str
    settings: Settings
    registry: LocalRegistry
    redis: RedisServer
    tokens: dict[str, dict[str, str]]
    example: dict[str, Any]  # a gold customer: {"customer_id": ..., "features": {...}}

    def post(self, path: str, body: Any, client: str = "predictor-client") -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=self.tokens[client], timeout=30)

    def get(self, path: str, client: str = "viewer-client") -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.tokens[client], timeout=30)


class Blackhole:
    """A TCP server that accepts connections and never says a word (a hung database)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def serve_config_with_shed_app(path: Path, blackhole: Blackhole) -> Path:
    """configs/serve/local.yaml plus a one-slot "shed" application whose lookups hang."""
    config = yaml.safe_load(Path("configs/serve/local.yaml").read_text())
    shed = copy.deepcopy(config["applications"][0])
    shed.update(name="shed", route_prefix="/shed")
    deployment = shed["deployments"][0]
    deployment.pop("autoscaling_config")
    deployment.update(num_replicas=1, max_ongoing_requests=1, max_queued_requests=1)
    shed["runtime_env"] = {
        "env_vars": {
            "CHURN_SERVE__ONLINE_STORE__POSTGRES_URL": f"postgresql://x@127.0.0.1:{blackhole.port}/x",
            "CHURN_SERVE__ONLINE_STORE__POSTGRES_TIMEOUT_S": str(STUCK_S),
            "CHURN_SERVE__ONLINE_STORE__KEY_PREFIX": "churn:nothing-here",
        }
    }
    config["applications"].append(shed)
    path.write_text(yaml.safe_dump(config))
    return path


def fetch_token(url: str, client: str) -> dict[str, str]:
    response = httpx.post(
        f"{url}/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client, f"{client}-secret"),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def latest_gold_customer(run: PipelineRun) -> dict[str, Any]:
    gold = DeltaTable(str(run.tables.gold_features)).to_pandas()
    row = gold.sort_values("snapshot_date").iloc[-1]
    features = {n: (None if row[n] != row[n] else row[n]) for n in run.contract.feature_names}
    features = json.loads(json.dumps(features, default=str))
    return {"customer_id": str(row[run.contract.entity_key]), "features": features}


def serving_environment(settings: Settings) -> dict[str, str]:
    """The replicas' view of the settings this module changed (they load ``test`` + these)."""
    serve = settings.serve
    store = serve.online_store
    assert serve.redis_url and store.redis_url and store.postgres_url
    return {
        "CHURN_SERVE__REDIS_URL": serve.redis_url.get_secret_value(),
        "CHURN_SERVE__ONLINE_STORE__REDIS_URL": store.redis_url.get_secret_value(),
        "CHURN_SERVE__ONLINE_STORE__POSTGRES_URL": store.postgres_url.get_secret_value(),
        "CHURN_SERVE__AUTH__KEYS_DIR": str(serve.auth.keys_dir),
        "CHURN_SERVE__RATE_LIMIT__WINDOW_S": str(serve.rate_limit.window_s),
        "CHURN_SERVE__RELOAD_INTERVAL_S": str(serve.reload_interval_s),
    }


@pytest.fixture(scope="module")
def served(
    saas_run: PipelineRun,
    spark: Any,
    redis_server: RedisServer,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    from pydantic import SecretStr
    from ray import serve

    from pipelines.online_store import materialize_online_features
    from serve_apps.launcher import deploy

    base = tmp_path_factory.mktemp("serving")
    blackhole = Blackhole()
    shutil.copytree(saas_run.settings.resolve(saas_run.settings.registry.root), base / "registry")
    original = saas_run.settings
    serve_settings = original.serve.model_copy(
        update={
            "redis_url": SecretStr(redis_server.url),
            "reload_interval_s": 0.5,
            "rate_limit": original.serve.rate_limit.model_copy(update={"window_s": 2}),
            "online_store": original.serve.online_store.model_copy(
                update={
                    "redis_url": SecretStr(redis_server.url),
                    "postgres_url": SecretStr(postgres_url),
                }
            ),
            "auth": original.serve.auth.model_copy(update={"keys_dir": base / "keys"}),
            "config_path": serve_config_with_shed_app(base / "serve.yaml", blackhole),
        }
    )
    settings = original.model_copy(
        update={
            "serve": serve_settings,
            "registry": original.registry.model_copy(update={"root": base / "registry"}),
        }
    )
    materialize_online_features(spark, settings, saas_run.contract, saas_run.tables)
    url = deploy(settings, environment=serving_environment(settings))
    try:
        tokens = {c: fetch_token(url, c) for c in CLIENTS}
        yield Served(
            url=url,
            settings=settings,
            registry=LocalRegistry(base / "registry"),
            redis=redis_server,
            tokens=tokens,
            example=latest_gold_customer(saas_run),
        )
    finally:
        serve.shutdown()
        blackhole.close()


def test_printed_curl_commands_answer(served: Served) -> None:
    from churn.cli import curl_examples

    lines = curl_examples(
        served.url, served.settings, client=("admin-client", "admin-client-secret")
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    predict, batch, metrics, importance, by_id = answers
    assert 0.0 <= predict["probability"] <= 1.0 and predict["model_version"] == 1
    assert len(predict["reasons"]) == served.settings.serve.top_reasons
    assert [p["probability"] for p in batch["predictions"]] == [predict["probability"]] * 2
    assert metrics["model_version"] == 1 and metrics["metrics"]["roc_auc"] > 0.7
    assert set(importance["importance"]) >= {r["feature"] for r in predict["reasons"]}
    assert by_id["features_from"] == "redis"


def test_served_probability_equals_offline_model(served: Served, saas_run: PipelineRun) -> None:
    gold = DeltaTable(str(saas_run.tables.gold_features)).to_pandas().head(20)
    model = served.registry.load_model(served.settings.model_name, "champion")
    offline = model.predict_frame(gold)
    records = []
    for _, row in gold.iterrows():
        features = {
            n: (None if row[n] != row[n] else row[n]) for n in saas_run.contract.feature_names
        }
        records.append({"features": json.loads(json.dumps(features, default=str))})
    response = served.post("/v1/batch_predict", {"records": records})
    assert response.status_code == 200
    online = [p["probability"] for p in response.json()["predictions"]]
    assert online == pytest.approx(list(offline), rel=1e-6)


def test_predict_by_customer_id_uses_the_online_store(served: Served) -> None:
    customer = served.example
    by_features = served.post("/v1/predict", customer).json()
    by_id = served.post("/v1/predict", {"customer_id": customer["customer_id"]}).json()
    assert by_id["features_from"] == "redis"
    assert by_id["probability"] == pytest.approx(by_features["probability"], rel=1e-6)
    # The key gone from Redis: PostgreSQL answers the same.
    client = served.redis.client()
    keys = client.keys(f"*:{customer['customer_id']}")
    assert client.delete(*[k for k in keys if b":features:" in k]) == 1
    fallback = served.post("/v1/predict", {"customer_id": customer["customer_id"]}).json()
    assert fallback["features_from"] == "postgres"
    assert fallback["probability"] == pytest.approx(by_features["probability"], rel=1e-6)
    unknown = served.post("/v1/predict", {"customer_id": "NOBODY"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_customer"


def test_roles_are_enforced_through_serve(served: Served) -> None:
    body = {"features": served.example["features"]}
    assert served.post("/v1/predict", body, client="viewer-client").status_code == 403
    assert served.get("/v1/model_metrics", client="predictor-client").status_code == 403
    assert served.get("/v1/feature_importance", client="viewer-client").status_code == 200
    assert served.post("/v1/admin/reload", {}, client="predictor-client").status_code == 403
    assert httpx.post(f"{served.url}/v1/admin/reload", timeout=30).status_code == 401
    features = served.example["features"]
    other = {"customer_id": "X0000001", "features": features}
    scoped = served.post("/v1/predict", other, client="scoped-client")
    assert scoped.status_code == 403 and scoped.json()["error"] == "customer_out_of_scope"
    own = {"customer_id": "C00001", "features": features}  # its scope is the prefix C0000
    assert served.post("/v1/predict", own, client="scoped-client").status_code == 200


def forged(served: Served, **changes: Any) -> dict[str, str]:
    """A token like the real ones, with ``changes`` to its claims or signing key."""
    auth = served.settings.serve.auth
    secret = (auth.keys_dir / f"{auth.active_kid}.secret").read_text().strip()
    now = int(time.time())
    claims = {
        "iss": auth.issuer,
        "aud": auth.audience,
        "sub": "admin-client",
        "cid": "admin-client",
        "roles": ["admin"],
        "cst": ["*"],
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "t",
    }
    key = changes.pop("key", secret)
    claims.update(changes)
    token = jwt.encode(claims, key, algorithm="HS256", headers={"kid": auth.active_kid})
    return {"Authorization": f"Bearer {token}"}


def test_expired_forged_and_foreign_tokens_are_refused(served: Served) -> None:
    url = f"{served.url}/v1/model_metrics"
    assert httpx.get(url, headers=forged(served), timeout=30).status_code == 200  # control
    for headers in (
        forged(served, exp=int(time.time()) - 60),
        forged(served, key="an-attacker's-own-secret-of-enough-length-0123456789"),
        forged(served, aud="some-other-api"),
        forged(served, iss="someone-else"),
    ):
        response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 401, response.text
        assert response.json()["error"] in {"invalid_token", "token_expired"}


def test_rate_limit_answers_429_then_recovers(served: Served) -> None:
    body = {"features": served.example["features"]}
    codes = []
    while 429 not in codes:  # the limited client has 3 requests per window
        codes.append(served.post("/v1/predict", body, client="limited-client").status_code)
        assert len(codes) <= 7, codes  # at most two windows' worth before a refusal
    refused = served.post("/v1/predict", body, client="limited-client")
    assert refused.status_code == 429
    time.sleep(int(refused.headers["retry-after"]))
    assert served.post("/v1/predict", body, client="limited-client").status_code == 200


def test_bad_requests_get_413_and_422(served: Served) -> None:
    features = served.example["features"]
    limit = served.settings.serve.max_batch_records
    too_many = served.post("/v1/batch_predict", {"records": [{"features": features}] * (limit + 1)})
    assert too_many.status_code == 413 and str(limit) in too_many.json()["detail"][0]["message"]
    wrong = served.post("/v1/predict", {"features": {**features, "plan": "platinum-ultra"}})
    assert wrong.status_code == 422
    assert [d["field"] for d in wrong.json()["detail"]] == ["features.plan"]


def test_batch_of_a_thousand_equals_single_predictions(served: Served) -> None:
    records = [served.example] * 1000
    response = served.post("/v1/batch_predict", {"records": records})
    assert response.status_code == 200
    body = response.json()
    single = served.post("/v1/predict", served.example).json()
    assert len(body["predictions"]) == 1000
    assert {p["probability"] for p in body["predictions"]} == {single["probability"]}


def test_cache_hits_and_is_keyed_by_version(served: Served) -> None:
    body = {"features": {**served.example["features"], "tenure_days": 4321.0}}
    client = served.redis.client()
    before = set(client.keys("churn:pred:*"))
    first = served.post("/v1/predict", body).json()
    added = set(client.keys("churn:pred:*")) - before
    assert len(added) == 1 and f":v{first['model_version']}:".encode() in next(iter(added))
    again = served.post("/v1/predict", body).json()
    # Each answer is its own prediction (its own log row); the rest is the cached answer.
    assert again.pop("prediction_id") != first.pop("prediction_id")
    assert again == first
    assert set(client.keys("churn:pred:*")) - before == added  # answered from the cache


def test_redis_down_the_api_keeps_answering_and_says_so(served: Served) -> None:
    body = {"features": {**served.example["features"], "tenure_days": 1234.0}}
    served.redis.stop()
    try:
        answers = [served.post("/v1/predict", body) for _ in range(5)]
        assert {a.status_code for a in answers} == {200}
        ready = httpx.get(f"{served.url}/readyz", timeout=30).json()
        assert ready["status"] == "degraded" and ready["checks"]["redis"].startswith("down")
        assert "churn_redis_up 0.0" in httpx.get(f"{served.url}/metrics", timeout=30).text
    finally:
        served.redis.start()
    ready = httpx.get(f"{served.url}/readyz", timeout=30).json()
    assert ready["status"] == "ready"
    assert served.post("/v1/predict", body).status_code == 200


def test_model_switch_under_load_fails_no_request(served: Served) -> None:
    """Register version 2 (another threshold), move champion, keep hammering meanwhile."""
    name = served.settings.model_name
    registry = served.registry
    v1 = registry.resolve(name, "champion")
    registry.register(
        name,
        registry.read_file(name, v1.version, ARTIFACT_NAME),
        registry.load_model(name, v1.version).contract,
        params={**v1.params, "threshold": 0.999},
        metrics=v1.metrics,
        lineage=v1.lineage,
        feature_importance=v1.feature_importance,
    )
    statuses: Counter[int] = Counter()
    versions: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(headers=served.tokens["predictor-client"], timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{served.url}/v1/predict", json=served.example)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions.append(response.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        while len(versions) < 50:  # load is flowing on version 1
            time.sleep(0.05)
        registry.set_alias(name, "champion", v1.version + 1, reason="test switch")
        deadline = time.monotonic() + 60
        while versions[-20:].count(v1.version + 1) < 20:  # load is flowing on version 2
            assert time.monotonic() < deadline, "the replica never switched"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) == {200}, statuses
    assert versions[0] == v1.version and versions[-1] == v1.version + 1
    answer = served.post("/v1/predict", served.example).json()
    assert answer["threshold"] == 0.999 and answer["model_version"] == v1.version + 1


def test_promotion_through_the_api_goes_through_the_gates(served: Served) -> None:
    name = served.settings.model_name
    registry = served.registry
    champion = registry.resolve(name, "champion")
    weak = registry.register(
        name,
        registry.read_file(name, champion.version, ARTIFACT_NAME),
        registry.load_model(name, champion.version).contract,
        params=champion.params,
        metrics={**champion.metrics, "roc_auc": 0.51, "pr_auc": 0.01},
        lineage=champion.lineage,
        feature_importance=champion.feature_importance,
    )
    refused = served.post("/v1/admin/promote", {"version": weak.version}, client="admin-client")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "promotion_refused"
    assert "roc_auc" in refused.json()["detail"][0]["message"]
    assert registry.resolve(name, "champion").version == champion.version
    unknown = served.post("/v1/admin/promote", {"version": 99}, client="admin-client")
    assert unknown.status_code == 404


def test_generated_requests_never_get_a_5xx(served: Served) -> None:
    """Schemathesis sends schema-driven valid and malformed requests to every route: no 5xx.

    Admin routes are left out (they promote and reload; the tests above exercise them).
    """
    st = Path(sys.executable).parent / "st"
    token = served.tokens["admin-client"]["Authorization"]
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{served.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: {token}",
            "--exclude-path-regex",
            "^/v1/admin",
            "--max-examples",
            "25",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-deterministic",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = [int(n) for n in re.findall(r"(\d+) passed", result.stdout)]
    assert passed and max(passed) > 0, result.stdout[-4000:]


def test_overload_is_shed_with_503_and_retry_after(served: Served) -> None:
    """One request runs, one waits, every other one is refused at once (not left to time out).

    The "shed" application has one slot and a queue of one, and its customer lookups hang on
    a database that never answers: six concurrent requests, two stuck, four refused.
    """
    url = f"{served.url}/shed/v1/predict"
    body = {"customer_id": served.example["customer_id"]}
    headers = served.tokens["predictor-client"]
    with ThreadPoolExecutor(6) as pool:
        futures = [
            pool.submit(httpx.post, url, json=body, headers=headers, timeout=STUCK_S * 3)
            for _ in range(6)
        ]
        answers = [f.result() for f in futures]
    shed = [a for a in answers if "backpressure" in a.text]
    assert len(shed) >= 4, [(a.status_code, a.text[:80]) for a in answers]
    assert {a.status_code for a in shed} == {503}
    assert {a.headers.get("retry-after") for a in shed} == {"1"}
    # The admitted ones end with a clear 503 of their own once the lookup gives up.
    admitted = [a for a in answers if a not in shed]
    assert {a.json()["error"] for a in admitted} == {"online_store_unavailable"}
