"""Prometheus metrics of one replica (``GET /metrics``), in a registry of its own.

A registry per runtime keeps tests that build several apps in one process independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
        self.online_lookups = Counter(
            "churn_online_feature_lookups",
            "Online-store lookups by source.",
            ["source"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
