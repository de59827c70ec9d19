"""Grafana dashboards: valid JSON, stable ids, known metric names, contract-driven, up to date."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from churn_core import business, job_metrics
from churn_core.contract import FeatureContract, load_contract
from churn_core.prediction_log import PredictionLogWriter
from churn_core.settings import PredictionLogSettings
from monitoring import dashboards
from monitoring.drift import detect_drift, load_thresholds
from serve_apps.metrics import ServeMetrics
from tests.unit.conftest import TINY_CONTRACT

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = REPO_ROOT / "monitoring" / "grafana"

# Metrics exported outside the API: drift and accuracy checks, pipeline jobs.
MONITORING_METRICS = (
    {
        "churn_drift_psi",
        "churn_drift_js_distance",
        "churn_drift_status",
        "churn_model_roc_auc",
    }
    | set(job_metrics.METRIC_NAMES)
    | {name for name, _ in business.METRICS.values()}
)
# Everything in a PromQL expression that is not a metric name.
PROMQL_WORDS = {
    "sum",
    "count",
    "min",
    "max",
    "avg",
    "by",
    "without",
    "rate",
    "increase",
    "histogram_quantile",
    "vector",
    "time",
    "or",
    "and",
    "unless",
}
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


@pytest.fixture(scope="module")
def contract() -> FeatureContract:
    """The contract the committed dashboards are generated from."""
    return load_contract(dashboards.DEFAULT_CONTRACT)


@pytest.fixture(scope="module")
def boards(contract: FeatureContract) -> list[dict[str, Any]]:
    """The three dashboards as generated now."""
    return dashboards.dashboards(contract)


def serve_metrics() -> ServeMetrics:
    """The API's metrics with a prediction log attached (as every deployed replica has)."""
    metrics = ServeMetrics()
    schema = pa.schema([pa.field("x", pa.float64())])
    metrics.watch_prediction_log(
        PredictionLogWriter("unused", schema, PredictionLogSettings(), Path("unused"))
    )
    return metrics


def serve_metric_names() -> set[str]:
    """Every series name the API's registry can expose (families plus sample suffixes)."""
    names = set()
    for family in serve_metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in ("_total", "_bucket", "_sum", "_count"))
    return names


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, rows and the panels nested in collapsed rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard."""
    return [t["expr"] for p in all_panels(board) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Identifiers in an expression outside label matchers, ranges, grouping and strings."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", stripped)
    return {name for name in _IDENTIFIER.findall(stripped) if name not in PROMQL_WORDS}


def test_dashboards_are_json_with_stable_unique_uids(boards: list[dict[str, Any]]) -> None:
    uids = [board["uid"] for board in boards]
    assert uids == ["churn-serving", "churn-model-quality", "churn-pipelines"]
    for board in boards:
        assert json.loads(json.dumps(board)) == board
        assert "id" not in board or board["id"] is None  # provisioning matches on uid


def test_panel_ids_are_unique_and_positive(boards: list[dict[str, Any]]) -> None:
    for board in boards:
        ids = [panel["id"] for panel in all_panels(board)]
        assert len(ids) == len(set(ids)), board["uid"]
        assert min(ids) >= 1


def test_queries_use_only_exported_metric_names(boards: list[dict[str, Any]]) -> None:
    known = serve_metric_names() | MONITORING_METRICS
    for board in boards:
        exprs = expressions(board)
        assert exprs, board["uid"]
        for expr in exprs:
            unknown = metric_names(expr) - known
            assert not unknown, f"{board['uid']}: {expr} uses unknown metrics {unknown}"


def test_serving_dashboard_covers_every_api_metric(boards: list[dict[str, Any]]) -> None:
    used = set().union(*(metric_names(e) for e in expressions(boards[0])))
    families = {family.name for family in serve_metrics().registry.collect()}
    uncovered = {f for f in families if not any(name.startswith(f) for name in used)}
    assert not uncovered


def test_latency_panel_uses_histogram_quantile_over_buckets(boards: list[dict[str, Any]]) -> None:
    latency = [e for e in expressions(boards[0]) if "histogram_quantile" in e]
    assert {e.split(",")[0] for e in latency} == {
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    }
    assert all("rate(churn_http_request_duration_seconds_bucket" in e for e in latency)
    assert all("by (le, route)" in e for e in latency)


@pytest.mark.parametrize("source", ["saas", "tiny"])
def test_every_contract_feature_has_a_psi_query(source: str, contract: FeatureContract) -> None:
    chosen = contract if source == "saas" else FeatureContract.model_validate(TINY_CONTRACT)
    board = dashboards.model_quality_dashboard(chosen)
    psi_features = {
        m.group(1)
        for expr in expressions(board)
        if (m := re.fullmatch(r'churn_drift_psi\{feature="([^"]+)"\}', expr))
    }
    assert set(chosen.feature_names) <= psi_features
    assert psi_features - set(chosen.feature_names) == {dashboards.SCORE_FEATURE}


def test_score_feature_matches_drift_detection() -> None:
    default = inspect.signature(detect_drift).parameters["score_column"].default
    assert default == dashboards.SCORE_FEATURE


def test_pipelines_dashboard_has_a_row_per_contract_source(contract: FeatureContract) -> None:
    board = dashboards.pipelines_dashboard(contract)
    rows = {p["title"] for p in board["panels"] if p["type"] == "row"}
    assert {f"Source: {name}" for name in contract.sources} <= rows


def test_provisioning_files(tmp_path: Path, contract: FeatureContract) -> None:
    paths = dashboards.write_dashboards(contract, tmp_path, prometheus_url="http://prom:9090")
    assert sorted(p.name for p in paths) == sorted(p.name for p in tmp_path.iterdir())
    providers = yaml.safe_load((tmp_path / "dashboards.yaml").read_text())
    assert providers["apiVersion"] == 1
    assert providers["providers"][0]["type"] == "file"
    assert providers["providers"][0]["options"]["path"] == dashboards.DEFAULT_DASHBOARDS_PATH
    sources = yaml.safe_load((tmp_path / "datasources.yaml").read_text())
    assert sources["apiVersion"] == 1
    (prometheus,) = sources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prom:9090"
    assert prometheus["uid"] == dashboards.DATASOURCE_UID


def test_committed_files_match_the_generator(contract: FeatureContract) -> None:
    expected = dashboards.render_files(
        contract, thresholds=load_thresholds(dashboards.DEFAULT_MONITORING_CONFIG)
    )
    committed = {p.name: p.read_text() for p in GRAFANA_DIR.iterdir() if p.is_file()}
    stale = sorted(
        name
        for name in expected.keys() | committed.keys()
        if expected.get(name) != committed.get(name)
    )
    assert not stale, (
        f"monitoring/grafana is out of date ({', '.join(stale)}); "
        f"regenerate with: {dashboards.REGENERATE_COMMAND}"
    )


def test_dashboards_decode_as_sdk_dashboard_models(boards: list[dict[str, Any]]) -> None:
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    for board in boards:
        decoded = Dashboard.from_json(board)
        assert decoded.uid == board["uid"]
        assert [p.title for p in decoded.panels or []] == [p["title"] for p in board["panels"]]
