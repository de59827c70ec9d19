"""The Serve app loses no prediction-log rows when it is shut down under load.

The replicas are configured never to flush on their own (a one-hour interval, a huge row
threshold), so every row in the table was written by a replica closing. Clients keep sending
/predict and /batch_predict while the application is deleted; every prediction a client got
back must be in the Delta log exactly once.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from churn_core.prediction_log import query_delta, table_exists
from churn_core.settings import Settings
from churn_core.tables import Tables
from tests.conftest import PipelineRun
from tests.integration.test_serving import fetch_token, latest_gold_customer

pytestmark = pytest.mark.integration

CLIENT_THREADS = 6
# Answers gathered before the shutdown starts: enough that replicas hold many rows.
ANSWERS_BEFORE_SHUTDOWN = 400
BATCH_ROWS = 5


@dataclass
class Answers:
    """Prediction ids the clients got back in 200 responses (thread-safe)."""

    ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    enough: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def add(self, ids: list[str]) -> None:
        with self.lock:
            self.ids.extend(ids)
            if len(self.ids) >= ANSWERS_BEFORE_SHUTDOWN:
                self.enough.set()


@dataclass
class Deployed:
    url: str
    settings: Settings
    headers: dict[str, str]


@pytest.fixture(scope="module")
def deployed(saas_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    from ray import serve

    from serve_apps.launcher import deploy

    base = tmp_path_factory.mktemp("log-shutdown")
    shutil.copytree(saas_run.settings.resolve(saas_run.settings.registry.root), base / "registry")
    original = saas_run.settings
    monitoring = original.monitoring
    settings = original.model_copy(
        update={
            "lake_dir": base / "lake",
            "registry": original.registry.model_copy(update={"root": base / "registry"}),
            "serve": original.serve.model_copy(
                update={
                    "reload_interval_s": 0,
                    "auth": original.serve.auth.model_copy(update={"keys_dir": base / "keys"}),
                }
            ),
            "monitoring": monitoring.model_copy(
                update={
                    "prediction_log": monitoring.prediction_log.model_copy(
                        update={"spool_dir": base / "spool"}
                    )
                }
            ),
        }
    )
    environment = {
        "CHURN_SERVE__AUTH__KEYS_DIR": str(base / "keys"),
        "CHURN_SERVE__RELOAD_INTERVAL_S": "0",
        # Only closing a replica writes: what is in the table was saved by the shutdown.
        "CHURN_MONITORING__PREDICTION_LOG__FLUSH_INTERVAL_S": "3600",
        "CHURN_MONITORING__PREDICTION_LOG__FLUSH_ROWS": "10000000",
    }
    url = deploy(settings, environment=environment)
    try:
        yield Deployed(url, settings, fetch_token(url, "predictor-client"))
    finally:
        serve.shutdown()


def keep_predicting(deployed: Deployed, body: dict[str, Any], answers: Answers) -> None:
    """Post until told to stop or the app is gone; keep the ids of every 200 answer."""
    single = {"features": body["features"]}
    batch = {"records": [single] * BATCH_ROWS, "reasons": "none"}
    with httpx.Client(base_url=deployed.url, headers=deployed.headers, timeout=30) as client:
        turn = 0
        while not answers.stop.is_set():
            turn += 1
            path, payload = (
                ("/v1/batch_predict", batch) if turn % 3 == 0 else ("/v1/predict", single)
            )
            try:
                response = client.post(path, json=payload)
            except httpx.TransportError:
                if answers.enough.is_set():
                    return  # the app is going away: connections are refused
                continue
            if response.status_code != 200:
                if answers.enough.is_set():
                    return
                continue
            data = response.json()
            predictions = data.get("predictions", [data])
            answers.add([p["prediction_id"] for p in predictions])


def logged_ids(settings: Settings) -> list[str]:
    table = Tables(settings.dataset_lake).prediction_log
    if not table_exists(table):
        return []
    rows = query_delta({"log": table}, "SELECT prediction_id FROM log")
    return [str(v) for v in rows.column("prediction_id").to_pylist()]


def test_no_prediction_is_lost_when_the_app_shuts_down_under_load(
    deployed: Deployed, saas_run: PipelineRun
) -> None:
    from ray import serve

    customer = latest_gold_customer(saas_run)
    answers = Answers()
    clients = [
        threading.Thread(target=keep_predicting, args=(deployed, customer, answers))
        for _ in range(CLIENT_THREADS)
    ]
    for thread in clients:
        thread.start()
    assert answers.enough.wait(timeout=300), "the app never answered enough requests"
    table = Tables(deployed.settings.dataset_lake).prediction_log
    assert not Path(table).exists(), "a replica flushed before shutdown: the test proves nothing"

    serve.delete("churn", _blocking=True)  # while the clients keep sending
    answers.stop.set()
    for thread in clients:
        thread.join(timeout=60)

    logged = logged_ids(deployed.settings)
    assert len(logged) == len(set(logged)), "a prediction was logged twice"
    missing = set(answers.ids) - set(logged)
    assert not missing, f"{len(missing)} of {len(answers.ids)} answered predictions not logged"
    assert len(answers.ids) >= ANSWERS_BEFORE_SHUTDOWN
