"""Job metrics: what a batch job run publishes, under the names the rules and dashboards query.

The Pushgateway path runs against a real Pushgateway in tests/integration/test_prometheus_scrape.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from churn import cli
from churn_core.job_metrics import (
    DURATION,
    LAST_SUCCESS,
    METRIC_NAMES,
    QUARANTINED_ROWS,
    ROWS,
    JobMetrics,
)
from churn_core.settings import MonitoringSettings
from monitoring import dashboards
from pipelines.features import GoldSummary
from pipelines.silver import SilverSummary
from tests.conftest import free_port

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "rules.yml"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def published(metrics: JobMetrics, folder: Path) -> Samples:
    """Publish as a text file under ``folder`` and read every sample back."""
    where = metrics.publish(MonitoringSettings(metrics_dir=folder), root=Path("/unused"))
    assert where == str(folder / f"{metrics.job}.prom")
    text = Path(where).read_text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_registry_exports_the_declared_names() -> None:
    families = {family.name for family in JobMetrics("churn-x").registry.collect()}
    assert families == METRIC_NAMES
    # Per-run values are gauges; a _total name would invite rate()/increase() over them.
    assert not any(name.endswith("_total") for name in METRIC_NAMES)


def test_a_run_publishes_rows_quarantine_duration_and_success(tmp_path: Path) -> None:
    metrics = JobMetrics("churn-silver")
    metrics.rows("accepted", 97, "customers")
    metrics.quarantined("customers", "out_of_range", 3)
    before = time.time()
    metrics.mark_success()
    samples = published(metrics, tmp_path)
    assert (
        samples[(ROWS, (("job", "churn-silver"), ("source", "customers"), ("stage", "accepted")))]
        == 97
    )
    reason = (("job", "churn-silver"), ("reason", "out_of_range"), ("source", "customers"))
    assert samples[(QUARANTINED_ROWS, reason)] == 3
    assert samples[(DURATION, (("job", "churn-silver"),))] >= 0
    assert before <= samples[(LAST_SUCCESS, (("job", "churn-silver"),))] <= time.time()


def test_silver_summary_becomes_rows_per_stage_and_quarantine_per_reason(tmp_path: Path) -> None:
    metrics = JobMetrics("churn-silver")
    part = SilverSummary(
        source="transactions",
        batches=1,
        read=10,
        accepted=7,
        quarantined=3,
        reasons={"missing_required": 2, "duplicate": 1},
    )
    cli._record_silver(metrics, part)
    samples = published(metrics, tmp_path)
    rows = {
        dict(labels)["stage"]: value
        for (name, labels), value in samples.items()
        if name == ROWS and dict(labels)["source"] == "transactions"
    }
    assert rows == {"read": 10, "accepted": 7, "quarantined": 3}
    reasons = {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == QUARANTINED_ROWS
    }
    assert reasons == {"missing_required": 2, "duplicate": 1}
    assert sum(reasons.values()) == rows["quarantined"]


def test_gold_rows_carry_no_source_and_an_unchanged_table_writes_nothing(tmp_path: Path) -> None:
    metrics = JobMetrics("churn-features")
    cli._record_gold(
        metrics, GoldSummary(rows=500, snapshots=2, positives=60, seconds=1.0, written=False)
    )
    samples = published(metrics, tmp_path)
    rows = {
        dict(labels)["stage"]: (dict(labels)["source"], value)
        for (name, labels), value in samples.items()
        if name == ROWS
    }
    assert rows == {"gold": ("", 500), "written": ("", 0), "positives": ("", 60)}


def test_an_unreachable_pushgateway_only_warns() -> None:
    metrics = JobMetrics("churn-train")
    metrics.mark_success()
    settings = MonitoringSettings(pushgateway_url=f"http://127.0.0.1:{free_port()}")
    assert metrics.publish(settings, root=Path(".")) == "not published"


def test_the_stale_job_threshold_is_the_same_in_rules_and_dashboard() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == "ChurnJobNotSucceeding"]
    match = re.fullmatch(rf"time\(\) - {LAST_SUCCESS} > (\d+) \* (\d+)", rule["expr"].strip())
    assert match, rule["expr"]
    days, day = (int(group) for group in match.groups())
    assert days * day == dashboards.JOB_STALE_AFTER_S
