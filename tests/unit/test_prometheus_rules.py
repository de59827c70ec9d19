"""The Prometheus configuration in monitoring/prometheus: valid, unit-tested, and in step with the
metric names the code exports (a renamed metric must not silently disarm an alert).

promtool comes from the Debian package ``prometheus``, which ``make services`` installs; without
it these tests fail rather than skip, so a machine that cannot check the rules does not pass.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from churn_core.job_metrics import METRIC_NAMES as JOB_METRICS
from serve_apps.metrics import ServeMetrics

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"

# Exported by the drift and evaluation jobs from monitoring/drift.py's statistics; not in the
# API's registry, so listed here. Rename one there and here together.
MODEL_METRICS = frozenset(
    {"churn_drift_psi", "churn_drift_js_distance", "churn_drift_status", "churn_model_roc_auc"}
)
# Series Prometheus itself attaches to every target.
STANDARD_METRICS = frozenset({"up"})
# The sample suffixes prometheus_client adds to a family's name (counters, histograms).
SAMPLE_SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")

PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
# An identifier not glued to a digit or dot, so the "m" of "15m" or "e" of "1e-3" is not one.
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
# A metric looked up from an annotation: {{ with printf "name{...}" ... | query }}.
_TEMPLATE_QUERY = re.compile(r'printf\s+"((?:[^"\\]|\\.)*)"[^|}]*\|\s*query')


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels left out)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call is None and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> the rules (alert or record names) whose expression or template uses it."""
    used: dict[str, set[str]] = {}
    for rule in _rules():
        owner = rule.get("alert") or rule["record"]
        names = promql_metric_names(rule["expr"])
        for template in (rule.get("annotations") or {}).values():
            for query in _TEMPLATE_QUERY.findall(template):
                names |= promql_metric_names(query)
        for name in names:
            used.setdefault(name, set()).add(owner)
    return used


def serve_metric_names() -> set[str]:
    """Every sample name the API's registry can export."""
    families = ServeMetrics().registry.collect()
    return {family.name + suffix for family in families for suffix in SAMPLE_SUFFIXES}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not on PATH: run `make services` (as root it installs the Debian "
            "package prometheus), or apt-get install -y --no-install-recommends prometheus",
            pytrace=False,
        )
    # From the folder itself: rules_test.yml and prometheus.yml name rules.yml relatively.
    return subprocess.run(
        [promtool, *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "rules.yml"),
        ("test", "rules", "rules_test.yml"),
        ("check", "config", "prometheus.yml"),
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool(args: tuple[str, ...]) -> None:
    done = _promtool(*args)
    assert done.returncode == 0, (
        f"promtool {' '.join(args)} exited {done.returncode}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )


def test_every_metric_in_the_rules_exists() -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    known = serve_metric_names() | MODEL_METRICS | JOB_METRICS | STANDARD_METRICS | recorded
    unknown = {name: sorted(rules) for name, rules in used_metric_names().items()}
    unknown = {name: rules for name, rules in unknown.items() if name not in known}
    assert not unknown, (
        f"rules.yml uses metrics nobody exports (metric: rules using it): {unknown}; "
        "serve_apps/metrics.py defines the API's names, churn_core/job_metrics.py the jobs'"
    )


def test_the_rules_use_the_api_and_model_metrics() -> None:
    """Guards the check above against a parser that finds nothing (and so passes vacuously)."""
    used = used_metric_names()
    for name in (
        "churn_http_requests_total",
        "churn_http_request_duration_seconds_bucket",
        "churn_redis_up",
        "churn_model_reloads_total",
        "churn_drift_status",
        "churn_drift_psi",  # only in the drift alert's description template
        "churn_model_roc_auc",
        "churn_job_last_success_timestamp_seconds",
        "churn:http_requests:rate5m",
    ):
        assert name in used, f"{name} not found in rules.yml (parsed: {sorted(used)})"


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route="/v1/x",le=~"0.1"}'
        "[5m]))) > 1e-3 and on (instance) (b:rec:5m offset 15m) or vector(0) "
        "unless ignoring(job) c_total / 1/60"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b:rec:5m", "c_total"}


def test_serve_metric_names_follow_the_registry() -> None:
    names = serve_metric_names()
    assert "churn_http_requests_total" in names
    assert "churn_http_request_duration_seconds_bucket" in names
    assert "churn_redis_up" in names
