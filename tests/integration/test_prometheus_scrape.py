"""A real Prometheus (Debian package) scrapes the API, a Pushgateway and Ray, and answers queries.

The API runs in plain uvicorn (the same app Serve runs) on the session's trained model, so the
test needs neither Ray Serve nor HAProxy. A real Pushgateway receives a batch job's metrics
through the CLI's own publishing path; Ray's metrics come from the session's cluster
(tests/conftest.py ``ray_cluster``), whose metrics port Ray picked and reports in ray.nodes().
Scrape settings mirror monitoring/prometheus/prometheus.yml (honor_labels for the Pushgateway).
`make services` installs Prometheus and the Pushgateway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def wait_until_ready(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``url`` until it answers 200; fail early if the server process exits."""
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"{what} exited with {process.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} did not become ready at {url}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def pushgateway() -> Iterator[str]:
    """A real Pushgateway on a free loopback port, in memory.

    Debian's build persists to /var/lib/prometheus/pushgateway.data by default: without an
    empty --persistence.file every test run would start with the previous runs' metrics.
    """
    binary = shutil.which("prometheus-pushgateway")
    assert binary, "no prometheus-pushgateway: run `make services` (installs the Debian package)"
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [binary, f"--web.listen-address={address}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{address}"
    wait_until_ready(f"{url}/-/ready", process, "the Pushgateway")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_metrics_target(ray_cluster: None) -> str:
    """host:port of the session cluster's metrics endpoint (one node: the head)."""
    from churn_core.ray_runtime import metrics_export_targets

    (target,) = metrics_export_targets()
    return target


@pytest.fixture(scope="module")
def prometheus(
    api_url: str,
    pushgateway: str,
    ray_metrics_target: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "no prometheus binary: run `make services` (installs the Debian package)"
    folder = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "churn-api", "static_configs": [{"targets": [api_url.split("//")[1]]}]},
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [pushgateway.split("//")[1]]}],
            },
            {"job_name": "ray", "static_configs": [{"targets": [ray_metrics_target]}]},
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
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{url}/-/ready", process, "Prometheus")
    yield url
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


def wait_for(prometheus: str, promql: str, seconds: float = 90) -> list[dict[str, Any]]:
    """Poll an instant query until it returns series (Prometheus scrapes every second)."""
    deadline = time.monotonic() + seconds
    while True:
        series = query(prometheus, promql)
        if series:
            return series  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"Prometheus returned nothing for {promql}"
        time.sleep(0.5)


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


def test_prometheus_reads_a_job_run_pushed_to_the_pushgateway(
    saas_run: PipelineRun, pushgateway: str, prometheus: str
) -> None:
    """The features job, run by the real `churn features` process, pushes its counts."""
    from churn_core.job_metrics import LAST_SUCCESS, ROWS
    from pipelines.delta import table_rows

    settings = saas_run.settings
    started = time.time()
    # Features only: the session's gold table is up to date, so it is read, not rewritten. A
    # process of its own: stopping its Spark session must not stop the test session's.
    subprocess.run(
        [sys.executable, "-m", "churn.cli", "features"],
        env={
            **os.environ,
            "CHURN_ENV": "test",
            "CHURN_RAW_DIR": str(settings.raw_dir),
            "CHURN_LAKE_DIR": str(settings.lake_dir),
            "CHURN_MONITORING__PUSHGATEWAY_URL": pushgateway,
        },
        cwd=settings.root,
        check=True,
        timeout=300,
    )

    gold = wait_for(prometheus, f'{ROWS}{{job="churn-features",stage="gold"}}')
    # honor_labels: the pushed job label survives (not renamed exported_job) and no
    # instance of the Pushgateway is attached.
    assert [s["metric"] for s in gold] == [
        {"__name__": ROWS, "job": "churn-features", "stage": "gold"}
    ]
    assert float(gold[0]["value"][1]) == table_rows(saas_run.tables.gold_features)
    (success,) = wait_for(prometheus, f'{LAST_SUCCESS}{{job="churn-features"}}')
    assert started <= float(success["value"][1]) <= time.time()


def test_prometheus_scrapes_rays_own_metrics(prometheus: str) -> None:
    """The metrics agent of the session's Ray node answers a static scrape target."""
    # The agent exports a few seconds after the node starts; Prometheus scrapes every second.
    series = wait_for(prometheus, 'ray_node_cpu_utilization{job="ray"}')
    assert all(float(s["value"][1]) >= 0 for s in series)
    up = query(prometheus, 'up{job="ray"}')
    assert [float(s["value"][1]) for s in up] == [1.0]
