"""Shared fixtures: one Spark Connect (Sail) session and one Ray cluster per test session."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from churn_core.contract import FeatureContract, load_contract
from churn_core.registry import LocalRegistry
from churn_core.settings import Settings, load_settings
from churn_core.tables import Tables

# Real servers on loopback, one per test session, for whichever tests ask for them.
pytest_plugins = (
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
    "tests.fixtures.jvm_spark",
    "tests.fixtures.mongo",
    "tests.fixtures.redis",
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# Below Linux's ephemeral range (32768-60999): a port asked of the kernel (bind to 0) comes from
# that range, where the many connections and listeners Ray opens during a session can take it
# before the server it was meant for binds it (seen: HAProxy's metrics port, minutes later).
_PORTS = range(20000, 32000)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now, outside the ephemeral range."""
    for port in random.sample(_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000-32000")


def make_settings(base: Path, **updates: object) -> Settings:
    """Test settings with every writable location under ``base``."""
    settings = load_settings("test")
    settings = settings.model_copy(
        update={
            "root": REPO_ROOT,
            "raw_dir": base / "raw",
            "lake_dir": base / "lake",
            "registry": settings.registry.model_copy(update={"root": base / "registry"}),
            "training": settings.training.model_copy(update={"storage_path": base / "ray_results"}),
            "monitoring": settings.monitoring.model_copy(
                update={
                    "metrics_dir": base / "metrics",
                    "prediction_log": settings.monitoring.prediction_log.model_copy(
                        update={"spool_dir": base / "prediction_spool"}
                    ),
                    "alerts": settings.monitoring.alerts.model_copy(
                        update={"state_path": base / "alert_state.json"}
                    ),
                }
            ),
            "serve": settings.serve.model_copy(
                update={
                    "port": free_port(),
                    "auth": settings.serve.auth.model_copy(update={"keys_dir": base / "keys"}),
                }
            ),
        }
    )
    return settings.model_copy(update=updates) if updates else settings


@dataclass(frozen=True)
class PipelineRun:
    """Everything one end-to-end run produced."""

    settings: Settings
    contract: FeatureContract
    tables: Tables
    registry: LocalRegistry


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One embedded Sail Spark Connect session for the whole test run."""
    from churn_core.settings import SparkSettings
    from pipelines.session import spark_session

    with spark_session(SparkSettings()) as session:
        yield session


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray cluster (2 CPUs, loopback) for the whole test run, Serve behind HAProxy."""
    from churn_core.ray_runtime import ray_session
    from churn_core.settings import RaySettings, ServeSettings
    from serve_apps.launcher import serve_environment

    serve = ServeSettings(haproxy_stats_port=free_port(), haproxy_metrics_port=free_port())
    environment = serve_environment(serve, tmp_path_factory.mktemp("ray-serve"))
    with ray_session(RaySettings(num_cpus=2), environment):
        yield


def run_pipeline(settings: Settings, generate: bool) -> PipelineRun:
    """Generate (optionally), ingest, build features and train through the CLI's stage functions."""
    from churn import cli

    if generate:
        cli.run_generate(settings)
    # The CLI's own stage functions: what `make run` executes is what the tests check.
    # (Each starts its own embedded Sail server: 0.02 s, unlike a JVM session.)
    cli.run_spark_stages(settings)
    cli.run_train(settings)
    return PipelineRun(
        settings=settings,
        contract=load_contract(settings.contract_path),
        tables=Tables(settings.dataset_lake),
        registry=LocalRegistry(settings.resolve(settings.registry.root)),
    )


@pytest.fixture(scope="session")
def saas_run(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The sample business, end to end on a tiny data set (shared by e2e and contract tests)."""
    return run_pipeline(make_settings(tmp_path_factory.mktemp("saas")), generate=True)


@pytest.fixture(scope="session")
def telco_run(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The IBM Telco data through the same path, with its own contract file."""
    base = tmp_path_factory.mktemp("telco")
    settings = make_settings(base, dataset="telco", raw_dir=SHARED_DATA / "telco")
    return run_pipeline(settings, generate=False)
