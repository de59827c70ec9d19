"""Prometheus metrics of batch jobs (ingest, silver, features, train, drift, accuracy, scoring).

A batch job ends before any scrape could reach it, so its metrics are pushed: to a Prometheus
Pushgateway when ``monitoring.pushgateway_url`` is set (grouped by job, so each run replaces the
previous run's values), otherwise written to ``<metrics_dir>/<job>.prom`` in the text format
node_exporter's textfile collector reads. One registry per job run: a job's metrics never mix
with another's.

Every value describes the job's latest run, so row counts are gauges named without ``_total``:
that suffix marks a counter that only grows, and ``rate()``/``increase()`` over a value that each
run replaces would read a smaller run as a counter reset and an identical run as zero. Query them
as they are (``churn_job_rows{job="churn-silver"}``); the history of runs is the series itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from churn_core.logging import get_logger
from churn_core.settings import MonitoringSettings

log = get_logger(__name__)

# The names rules.yml and monitoring/dashboards.py query; tests compare them with these.
ROWS = "churn_job_rows"
QUARANTINED_ROWS = "churn_job_quarantined_rows"
DURATION = "churn_job_duration_seconds"
LAST_SUCCESS = "churn_job_last_success_timestamp_seconds"
METRIC_NAMES = frozenset({ROWS, QUARANTINED_ROWS, DURATION, LAST_SUCCESS})


class JobMetrics:
    """Metrics of one run of one batch job; call :meth:`publish` at the end."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.registry = CollectorRegistry()
        self._started = time.monotonic()
        self.duration = Gauge(
            DURATION, "Wall time of the job's last run.", ["job"], registry=self.registry
        )
        self.last_success = Gauge(
            LAST_SUCCESS,
            "Unix time the job last finished without error.",
            ["job"],
            registry=self.registry,
        )
        # The job label is also the Pushgateway's grouping key; it is kept on the samples so a
        # textfile scraped under node_exporter's own job still says which job wrote it.
        self._rows = Gauge(
            ROWS,
            "Rows the job's last run handled, by stage and source (per run, not a running total).",
            ["job", "stage", "source"],
            registry=self.registry,
        )
        self._quarantined = Gauge(
            QUARANTINED_ROWS,
            "Rows the job's last run set aside in quarantine, by source and reason code.",
            ["job", "source", "reason"],
            registry=self.registry,
        )

    def gauge(self, name: str, documentation: str, labels: list[str]) -> Gauge:
        """A gauge in this run's registry (values of this run; pushed whole at the end)."""
        return Gauge(name, documentation, labels, registry=self.registry)

    def rows(self, stage: str, count: int, source: str = "") -> None:
        """Rows of this run at ``stage``; ``source`` empty (no label) when rows mix sources."""
        self._rows.labels(self.job, stage, source).set(count)

    def quarantined(self, source: str, reason: str, count: int) -> None:
        """Rows of ``source`` this run quarantined with reason code ``reason``."""
        self._quarantined.labels(self.job, source, reason).set(count)

    def mark_success(self) -> None:
        """Record the run's duration and success time (call once the job's work is done)."""
        self.duration.labels(self.job).set(time.monotonic() - self._started)
        self.last_success.labels(self.job).set(time.time())

    def publish(self, settings: MonitoringSettings, root: Path) -> str:
        """Push to the Pushgateway or write the text file; returns where they went.

        Failing to publish only warns: the job's own result (tables, alerts) already stands.
        """
        target = settings.pushgateway_url
        try:
            if target:
                push_to_gateway(target, job=self.job, registry=self.registry, timeout=5)
                return target
            directory = (
                settings.metrics_dir
                if settings.metrics_dir.is_absolute()
                else root / settings.metrics_dir
            )
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{self.job}.prom"
            write_to_textfile(str(path), self.registry)
            return str(path)
        except Exception as error:
            log.warning("job_metrics_not_published", job=self.job, error=str(error)[:300])
            return "not published"
