"""Everything one replica holds: the serving model, cache, limits, auth, online store, metrics.

The same runtime runs inside a Ray Serve replica and inside plain uvicorn (the benchmark's
baseline and the unit tests), so both serve exactly the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from churn_core.contract import FeatureContract
from churn_core.prediction_log import (
    PredictionLogTarget,
    PredictionLogWriter,
    prediction_row,
)
from churn_core.settings import ServeSettings
from churn_core.tables import Tables
from serve_apps.auth import Authenticator
from serve_apps.cache import PredictionCache
from serve_apps.dashboard import DashboardData, ui_status
from serve_apps.limits import RateLimiter
from serve_apps.metrics import ServeMetrics
from serve_apps.online_store import OnlineFeatureStore, OnlineLookup
from serve_apps.redis_link import RedisLink
from serve_apps.request_context import note_request
from serve_apps.service import ModelSource, PredictionService, ReasonsMode

log = structlog.get_logger(__name__)

# Batches at least this large are scored off the event loop, so small requests keep flowing.
THREAD_BATCH_ROWS = 64


class IncompatibleModel(RuntimeError):
    """A new version whose features differ from the API's request schema (needs a redeploy)."""


@dataclass
class ServingRuntime:
    """A replica's state; ``service`` is swapped whole when the serving alias moves."""

    settings: ServeSettings
    source: ModelSource
    service: PredictionService
    link: RedisLink
    cache: PredictionCache
    limiter: RateLimiter
    metrics: ServeMetrics
    authenticator: Authenticator | None = None
    online_store: OnlineFeatureStore | None = None
    prediction_log: PredictionLogWriter | None = None
    # Inside Serve: an @serve.batch scorer of (service, features) pairs; None scores each alone.
    batch_scorer: (
        Callable[[tuple[PredictionService, Mapping[str, Any]]], Awaitable[dict[str, Any]]] | None
    ) = None
    # The web dashboard's data (scores, gold, drift tables) and static build; None: not served.
    dashboard: DashboardData | None = None
    ui_dir: Path | None = None
    served: Counter[str] = field(default_factory=Counter)
    last_reload_error: str | None = None
    # Names this replica in the dashboard's live view: its counters are its own.
    replica_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _watcher: asyncio.Task[None] | None = None

    @property
    def contract(self) -> FeatureContract:
        """The feature contract of the API's request schema (fixed for the app's life)."""
        return self.service.model.contract

    async def start(self) -> None:
        """Open connections and start watching the serving alias."""
        self.metrics.model_version.set(self.service.version)
        self.metrics.redis_configured.set(1 if self.link.configured else 0)
        dashboard = ui_status(self.ui_dir)
        if dashboard != "ok":
            # Not an error: the API serves without it; /readyz says the same.
            log.warning("dashboard_not_served", ui=dashboard)
        if self.prediction_log is not None:
            self.prediction_log.start()
        if self.online_store is not None:
            await self.online_store.start()
        if self.settings.reload_interval_s > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Stop the watcher, write the prediction log's last rows, close connections.

        Serve runs this after the replica has stopped taking requests and finished the ones
        in flight, so every answered prediction is in the log once it returns.
        """
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.prediction_log is not None:
            await asyncio.to_thread(self.prediction_log.close)
        if self.online_store is not None:
            await self.online_store.close()
        await self.link.close()

    async def reload(self) -> bool:
        """Swap in the alias's version if it moved; True when the model changed.

        The new model is loaded off the event loop and swapped in one assignment: requests
        already running finish on the old version, the next ones use the new one, none fail.
        """
        async with self._reload_lock:
            try:
                version = await asyncio.to_thread(self.source.current_version)
                if version == self.service.version:
                    return False
                model, meta = await asyncio.to_thread(self.source.load, version)
                if model.contract.feature_names != self.contract.feature_names:
                    raise IncompatibleModel(
                        f"version {version} has features {model.contract.feature_names}; this "
                        "deployment's API was built for another list: redeploy the application"
                    )
            except Exception as exc:
                self.last_reload_error = " ".join(str(exc).split())[:300]
                outcome = "incompatible" if isinstance(exc, IncompatibleModel) else "failed"
                self.metrics.reloads.labels(outcome).inc()
                log.error("model_reload_failed", error=self.last_reload_error)
                return False
            previous = self.service.version
            self.service = PredictionService(
                model, meta, self.settings.threshold, self.settings.top_reasons
            )
            self.last_reload_error = None
            self.metrics.reloads.labels("switched").inc()
            self.metrics.model_version.set(meta.version)
            log.info("model_reloaded", previous=previous, version=meta.version)
            return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            await self.reload()

    async def lookup_features(self, customer_id: str) -> OnlineLookup | None:
        """The customer's latest features from the online store (``None``: unknown customer)."""
        if self.online_store is None:
            return None
        found = await self.online_store.get(customer_id)
        self.metrics.online_lookups.labels(found.source if found else "missing").inc()
        return found

    async def predict(
        self,
        features: Mapping[str, Any],
        customer_id: str | None,
        features_from: str,
        as_of: str | None = None,
    ) -> dict[str, Any]:
        """One prediction, answered from the cache when the same features were scored before."""
        service = self.service  # one version for the whole request, even if a reload lands
        key = self.cache.key(service.version, service.meta.artifact_sha256, features)
        scored = await self.cache.get(key)
        self.metrics.cache.labels("hit" if scored is not None else "miss").inc()
        if scored is None:
            if self.batch_scorer is not None:
                scored = await self.batch_scorer((service, features))
            else:
                scored = service.score([features])[0]
            await self.cache.put(key, scored)
        self.metrics.redis_up.set(1 if self.link.up else 0)
        answer = service.answer(scored, customer_id, features_from)
        note_request(model_version=service.version, prediction_ids=[answer["prediction_id"]])
        self._count([answer])
        self._log("predict", service, [answer], [features], [as_of])
        return answer

    async def predict_batch(
        self,
        records: Sequence[Mapping[str, Any]],
        customer_ids: Sequence[str | None],
        features_from: Sequence[str],
        reasons: ReasonsMode = "exact",
        as_of: Sequence[str | None] | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """Predictions for many records with one model call (not cached: each is one row)."""
        service = self.service
        if len(records) >= THREAD_BATCH_ROWS:
            scored = await asyncio.to_thread(service.score, records, reasons)
        else:
            scored = service.score(records, reasons)
        answers = [
            service.answer(s, c, f)
            for s, c, f in zip(scored, customer_ids, features_from, strict=True)
        ]
        # Every id (up to max_batch_records): any answer's id must lead back to its request.
        note_request(
            model_version=service.version, prediction_ids=[a["prediction_id"] for a in answers]
        )
        self._count(answers)
        self._log("batch_predict", service, answers, records, as_of or [None] * len(answers))
        return service.version, answers

    def _log(
        self,
        endpoint: str,
        service: PredictionService,
        answers: Sequence[Mapping[str, Any]],
        features: Sequence[Mapping[str, Any]],
        as_of: Sequence[str | None],
    ) -> None:
        """Queue the predictions for the prediction log (a list append: no I/O here)."""
        if self.prediction_log is None:
            return
        now = datetime.now(UTC)
        self.prediction_log.append(
            [
                prediction_row(
                    prediction_id=answer["prediction_id"],
                    logged_at=now,
                    model_name=service.meta.name,
                    model_version=service.version,
                    endpoint=endpoint,
                    customer_id=answer["customer_id"],
                    features_from=answer["features_from"],
                    as_of=day,
                    probability=answer["probability"],
                    churn=answer["churn"],
                    threshold=answer["threshold"],
                    features=row,
                )
                for answer, row, day in zip(answers, features, as_of, strict=True)
            ]
        )

    def _count(self, answers: Sequence[Mapping[str, Any]]) -> None:
        churned = sum(1 for a in answers if a["churn"])
        self.served["predictions"] += len(answers)
        self.served["predicted_churn"] += churned
        if churned:
            self.metrics.predictions.labels("churn").inc(churned)
        if len(answers) > churned:
            self.metrics.predictions.labels("stay").inc(len(answers) - churned)
        for answer in answers:
            self.metrics.probability.observe(answer["probability"])

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the replica can answer, and the state of each dependency."""
        if self.link.configured:
            await self.link.ping()
        self.metrics.redis_up.set(1 if self.link.up else 0)
        checks: dict[str, Any] = {
            "model": "ok",
            "redis": self.link.status(),
            "online_store": self.online_store.status() if self.online_store else "not configured",
            "last_reload_error": self.last_reload_error,
            "dashboard": ui_status(self.ui_dir),
        }
        degraded = self.link.configured and not self.link.up
        status = "degraded" if degraded else "ready"
        return True, {"status": status, "model_version": self.service.version, "checks": checks}


def build_runtime(
    settings: ServeSettings,
    source: ModelSource,
    resolve: Callable[[Path], Path],
    contract_name: str | None = None,
    prediction_log: PredictionLogTarget | None = None,
    tables: Tables | None = None,
) -> ServingRuntime:
    """Load the serving version and wire the runtime from settings (nothing starts yet).

    ``tables`` (the data set's Delta tables) feed the dashboard's views of scores and drift;
    without them those views answer as if nothing had been scored or checked yet.
    """
    model, meta = source.load()
    service = PredictionService(model, meta, settings.threshold, settings.top_reasons)
    link = RedisLink(
        settings.redis_url.get_secret_value() if settings.redis_url else None,
        settings.redis_timeout_s,
        tls=settings.redis_tls,
    )
    store_settings = settings.online_store
    online_store = None
    if store_settings.redis_url or store_settings.postgres_url:
        online_store = OnlineFeatureStore(
            store_settings,
            contract_name or model.contract.name,
            timeout_s=settings.redis_timeout_s,
            postgres_timeout_s=store_settings.postgres_timeout_s,
        )
    metrics = ServeMetrics()
    writer = None
    if prediction_log is not None and prediction_log.settings.enabled:
        writer = prediction_log.open(model.contract)
        metrics.watch_prediction_log(writer)
    return ServingRuntime(
        settings=settings,
        source=source,
        service=service,
        link=link,
        cache=PredictionCache(link, meta.name, settings.cache_ttl_s),
        limiter=RateLimiter(link, settings.rate_limit.window_s, settings.rate_limit.requests),
        metrics=metrics,
        authenticator=(
            Authenticator.from_settings(settings.auth, resolve) if settings.auth.enabled else None
        ),
        online_store=online_store,
        prediction_log=writer,
        dashboard=(
            DashboardData(tables, model.contract.entity_key) if tables is not None else None
        ),
        ui_dir=resolve(settings.ui_dir),
    )
