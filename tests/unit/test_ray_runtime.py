"""The fixed Ray metrics port: a taken one stops the start with a clear error, not a timeout."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from churn_core.ray_runtime import RayPortInUseError, ensure_port_free
from churn_core.settings import RaySettings, load_settings
from tests.conftest import free_port

PROMETHEUS_CONFIG = Path(__file__).resolve().parents[2] / "monitoring/prometheus/prometheus.yml"


def test_a_taken_metrics_port_is_refused_by_name() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(RayPortInUseError, match=rf"metrics_export_port {port} .*in use"):
            ensure_port_free("127.0.0.1", port)


def test_a_free_port_passes() -> None:
    ensure_port_free("127.0.0.1", free_port())


def test_local_runs_fix_the_port_that_prometheus_scrapes_and_tests_let_ray_pick() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (ray_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "ray"]
    local = load_settings("local").ray
    assert ray_job["static_configs"][0]["targets"] == [
        f"{local.node_ip_address}:{local.metrics_export_port}"
    ]
    assert load_settings("test").ray.metrics_export_port is None
    assert RaySettings().metrics_export_port is None
