"""Realistic traffic on the churn API for benchmarks/load_test.py (locust, headless).

A user is one client application: it gets a token (client credentials) and renews it every
TOKEN_REFRESH_S, scores single customers (a few hot customers whose answers come from the cache,
and fresh feature vectors that miss it), sends a batch now and then, and reads the model's
metrics and feature importance. Status codes are counted per endpoint, whatever locust calls
a failure, and written as JSON at the end (LOAD_TEST_CODES).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from typing import Any

from locust import FastHttpUser, events, task
from locust.env import Environment

EXAMPLE: dict[str, Any] = json.loads(os.environ["LOAD_TEST_EXAMPLE"])
CLIENT = tuple(os.environ["LOAD_TEST_CLIENT"].split(":", 1))
# Requests per second per user; 0 means as fast as answers come (the overload phase).
RATE = float(os.environ.get("LOAD_TEST_USER_RATE", "0"))
HOT_CUSTOMERS = 20
BATCH_SIZE = 100
# Clients renew their token well before it expires (serve.auth.token_ttl_s, 900 s); a short
# period here keeps token requests (argon2-verified client secrets: deliberately costly) in the mix.
TOKEN_REFRESH_S = 60.0
CODES: Counter[tuple[str, int]] = Counter()


def features(tenure: float) -> dict[str, Any]:
    """The example customer with another tenure: a different vector, so a cache miss."""
    return {**EXAMPLE, "features": {**EXAMPLE["features"], "tenure_days": round(tenure, 4)}}


@events.request.add_listener
def _count(name: str, response: Any, exception: Exception | None, **_: Any) -> None:
    # 0: no HTTP answer at all (timeout, connection refused or reset).
    status = getattr(response, "status_code", 0) or 0
    CODES[(name, int(status))] += 1


@events.quitting.add_listener
def _write_codes(environment: Environment, **_: Any) -> None:
    path = os.environ.get("LOAD_TEST_CODES")
    if path:
        rows = [{"name": n, "status": s, "count": c} for (n, s), c in sorted(CODES.items())]
        with open(path, "w") as handle:
            json.dump(rows, handle)


class ApiClient(FastHttpUser):
    """One client application of the API."""

    # 10 s: a request still waiting then is a timeout, which must not happen (shed instead).
    network_timeout = 10.0
    connection_timeout = 10.0
    _retry_after = 1.0
    _token_at = 0.0

    def wait_time(self) -> float:
        return random.expovariate(RATE) if RATE > 0 else 0.0

    def on_start(self) -> None:
        # A client without a token cannot do anything: it retries (honouring Retry-After when
        # the API sheds load) instead of sending requests that can only be refused with 401.
        self.headers: dict[str, str] = {}
        while not self.refresh_token():
            time.sleep(self._retry_after)

    def refresh_token(self) -> bool:
        with self.client.post(
            "/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=CLIENT,
            name="token",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                self.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
                self._token_at = time.monotonic()
                response.success()
                return True
            # Keep the current token (still valid) and try again later.
            self._retry_after = float(response.headers.get("Retry-After") or 1)
            if response.status_code == 503:
                response.success()
            else:
                response.failure(f"token: {response.status_code}")
            return False

    def _post(self, path: str, body: dict[str, Any], name: str) -> None:
        if time.monotonic() - self._token_at > TOKEN_REFRESH_S:
            self.refresh_token()
        with self.client.post(
            path, json=body, headers=self.headers, name=name, catch_response=True
        ) as response:
            # 503 with Retry-After is the API shedding load as designed: counted, not a failure.
            if response.status_code in (200, 503):
                response.success()

    @task(8)
    def predict_cached(self) -> None:
        self._post(
            "/v1/predict", features(100.0 * random.randrange(HOT_CUSTOMERS)), "predict (cached)"
        )

    @task(8)
    def predict_uncached(self) -> None:
        self._post("/v1/predict", features(random.uniform(0, 3000)), "predict (uncached)")

    @task(1)
    def batch_predict(self) -> None:
        records = [features(random.uniform(0, 3000)) for _ in range(BATCH_SIZE)]
        self._post(
            "/v1/batch_predict", {"records": records, "reasons": "approximate"}, "batch_predict"
        )

    @task(2)
    def read_metrics(self) -> None:
        self.client.get("/v1/model_metrics", headers=self.headers, name="model_metrics")
        self.client.get("/v1/feature_importance", headers=self.headers, name="feature_importance")
