"""Prometheus metrics of one replica (``GET /metrics``), in a registry of its own.

A registry per runtime keeps tests that build several apps in one process independent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from churn_core.prediction_log import PredictionLogWriter

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Deciles of the churn probability: enough to see the score distribution move on a dashboard
# (the drift job tests it properly against the training scores).
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class ServeMetrics:
    """Every metric the API exports."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "churn_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "churn_http_request_duration_seconds",
            "Request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "churn_predictions", "Predictions by label.", ["label"], registry=r
        )
        self.cache = Counter(
            "churn_prediction_cache", "Prediction cache lookups by result.", ["result"], registry=r
        )
        self.rate_limited = Counter(
            "churn_rate_limited_requests", "Requests refused by the rate limit.", registry=r
        )
        self.auth_failures = Counter(
            "churn_auth_failures",
            "Refused credentials and tokens by reason.",
            ["error"],
            registry=r,
        )
        self.model_version = Gauge(
            "churn_model_version", "The model version this replica serves.", registry=r
        )
        self.reloads = Counter(
            "churn_model_reloads", "Model reloads by outcome.", ["outcome"], registry=r
        )
        self.redis_up = Gauge(
            "churn_redis_up", "1 when the last Redis call succeeded (0 when down).", registry=r
        )
        # Without it a replica configured without Redis (churn_redis_up 0 by design) would
        # look like one whose Redis is down.
        self.redis_configured = Gauge(
            "churn_redis_configured", "1 when the replica is configured to use Redis.", registry=r
        )
        self.probability = Histogram(
            "churn_prediction_probability",
            "Predicted churn probabilities (the score distribution).",
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.online_lookups = Counter(
            "churn_online_feature_lookups",
            "Online-store lookups by source.",
            ["source"],
            registry=r,
        )

    def watch_prediction_log(self, writer: PredictionLogWriter) -> None:
        """Export the prediction-log writer's counters (read at scrape time)."""
        self.registry.register(_PredictionLogCollector(writer))

    def exposition(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _PredictionLogCollector(Collector):
    """The writer's own counters, so nothing on the request path updates a second set."""

    OUTCOMES = ("appended", "written", "spooled", "replayed")

    def __init__(self, writer: PredictionLogWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        rows = CounterMetricFamily(
            "churn_prediction_log_rows",
            "Prediction-log rows by outcome: appended (queued), written (in Delta), spooled "
            "(to local disk while Delta failed), replayed (from the spool into Delta).",
            labels=["outcome"],
        )
        for outcome in self.OUTCOMES:
            rows.add_metric([outcome], self.writer.stats[outcome])
        yield rows
        yield GaugeMetricFamily(
            "churn_prediction_log_buffered_rows",
            "Prediction-log rows queued in this replica, not yet written.",
            value=self.writer.buffered,
        )
