"""A real Prometheus (Debian package) scrapes the API's /metrics and answers a query about it.

The API runs in plain uvicorn (the same app Serve runs) on the session's trained model, so the
test needs neither Ray Serve nor HAProxy; `make services` installs Prometheus.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml

from churn_core.settings import AuthSettings
from serve_apps.api import create_api
from serve_apps.runtime import build_runtime
from serve_apps.service import RegistryLoader
from tests.conftest import PipelineRun, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_url(saas_run: PipelineRun) -> Iterator[str]:
    settings = saas_run.settings
    serve = settings.serve.model_copy(
        update={"reload_interval_s": 0, "auth": AuthSettings(enabled=False)}
    )
    source = RegistryLoader(
        registry=settings.registry,
        project_root=str(settings.resolve(Path("."))),
        model_name=settings.model_name,
        alias="1",  # other modules move the session registry's champion; version 1 stays
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_api(build_runtime(serve, source, settings.resolve)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def prometheus(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "no prometheus binary: run `make services` (installs the Debian package)"
    folder = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "churn-api", "static_configs": [{"targets": [api_url.split("//")[1]]}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def query(prometheus: str, promql: str) -> list[dict[str, object]]:
    try:
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    except httpx.TransportError:
        return []  # not listening yet
    if response.status_code != 200:
        return []
    result: list[dict[str, object]] = response.json()["data"]["result"]
    return result


def test_prometheus_scrapes_the_served_predictions(
    api_url: str, prometheus: str, saas_run: PipelineRun
) -> None:
    from deltalake import DeltaTable

    gold = DeltaTable(str(saas_run.tables.gold_features)).to_pandas().head(7)
    names = saas_run.contract.feature_names
    records = [
        {"features": {n: (None if row[n] != row[n] else row[n]) for n in names}}
        for _, row in gold.iterrows()
    ]
    response = httpx.post(
        f"{api_url}/v1/batch_predict", json={"records": records, "reasons": "none"}, timeout=30
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 90
    while True:  # Prometheus scrapes every second; wait for a scrape after the batch
        series = query(prometheus, "sum(churn_predictions_total)")
        if series and float(series[0]["value"][1]) == len(records):  # type: ignore[index]
            break
        assert time.monotonic() < deadline, f"Prometheus never saw {len(records)}: {series}"
        time.sleep(0.5)
    up = query(prometheus, 'up{job="churn-api"}')
    assert [float(s["value"][1]) for s in up] == [1.0]  # type: ignore[index]
    routes = query(prometheus, "churn_http_requests_total")
    assert any(s["metric"]["route"] == "/v1/batch_predict" for s in routes)  # type: ignore[index]
