"""The HTTP API: run by Ray Serve in production, by uvicorn in the benchmark's baseline.

Every route but the probes and ``/metrics`` needs a bearer token with the right role; the
token endpoint issues them. Errors are one machine-readable body (:class:`ErrorBody`).
"""

# No `from __future__ import annotations`: FastAPI must see the request models built at runtime.

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote

import orjson
import structlog
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from churn_core.registry import PromotionRefused, RegistryError
from serve_apps.auth import AuthError, Principal, TokenResponse
from serve_apps.dashboard import (
    REPORT_FILE,
    DashboardData,
    ScoreFilters,
    explain,
    live_stats,
    parse_report,
    ui_status,
)
from serve_apps.online_store import OnlineStoreUnavailable
from serve_apps.request_context import RequestContextMiddleware
from serve_apps.runtime import ServingRuntime
from serve_apps.schemas import (
    CUSTOMER_ID_PATTERN,
    AliasMove,
    BatchPrediction,
    CustomerDetail,
    DriftHistory,
    ErrorBody,
    ErrorDetail,
    FeatureImportance,
    LiveStats,
    ModelCatalog,
    ModelMetrics,
    ModelReport,
    Prediction,
    PromoteRequest,
    ReloadResult,
    ScoresPage,
    VersionSummary,
    request_models,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

# The principal of every request when auth is switched off (local experiments only).
ANONYMOUS = Principal(
    subject="anonymous",
    client_id="anonymous",
    roles=frozenset({"viewer", "predictor"}),
    customer_scope=("*",),
    rate_limit=None,
)


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson (several times faster than the standard library here)."""

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return orjson.dumps(content)


class OrjsonRequest(Request):
    """A request whose JSON body is parsed by orjson (a 1,000-record batch: ~5 ms -> ~1 ms)."""

    async def json(self) -> Any:
        """The parsed body (``orjson.JSONDecodeError`` is a ``json.JSONDecodeError``: 422)."""
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    """Routes that hand their handlers an :class:`OrjsonRequest` (FastAPI's custom-route hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The default handler, fed the orjson request."""
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route


class ApiError(Exception):
    """A refusal with its status, machine code and headers."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        field: str = "body",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=error, detail=[ErrorDetail(field=field, message=message)])
        self.headers = headers or {}


def _error_response(
    status: int, body: ErrorBody, headers: dict[str, str] | None = None
) -> OrjsonResponse:
    return OrjsonResponse(status_code=status, content=body.model_dump(), headers=headers)


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in location if p != "body"]
    return ".".join(parts) or "body"


async def _on_validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    detail = [ErrorDetail(field=_field_name(e["loc"]), message=e["msg"]) for e in error.errors()]
    return _error_response(422, ErrorBody(error="invalid_request", detail=detail))


async def _on_api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return _error_response(error.status, error.body, error.headers)


async def _on_auth_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, AuthError)
    runtime: ServingRuntime = request.app.state.runtime
    runtime.metrics.auth_failures.labels(error.error).inc()
    headers = {"WWW-Authenticate": error.www_authenticate} if error.www_authenticate else {}
    body = ErrorBody(
        error=error.error,
        detail=[ErrorDetail(field="authorization", message=error.message)],
    )
    return _error_response(error.status, body, headers)


async def _on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    body = ErrorBody(
        error=codes.get(error.status_code, "http_error"),
        detail=[ErrorDetail(field="request", message=str(error.detail))],
    )
    return _error_response(error.status_code, body, dict(error.headers or {}))


async def _on_store_unavailable(request: Request, error: Exception) -> Response:
    body = ErrorBody(
        error="online_store_unavailable",
        detail=[ErrorDetail(field="customer_id", message=str(error))],
    )
    return _error_response(503, body, {"Retry-After": "1"})


class RequestMetrics:
    """Counts and times every HTTP request by route template and status (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, runtime: ServingRuntime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, recording its status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics = self.runtime.metrics
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - started)


def _guard(runtime: ServingRuntime, role: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: authenticate, check ``role``, count the request against the rate limit."""

    async def authorised(request: Request) -> Principal:
        authenticator = runtime.authenticator
        if authenticator is None:
            if role == "admin":  # never an unauthenticated admin route
                raise ApiError(403, "auth_disabled", "admin routes need auth enabled")
            principal = ANONYMOUS
        else:
            principal = authenticator.verify(request.headers.get("authorization"))
            principal.require(role)
        await _admit(runtime, principal.client_id, principal.rate_limit)
        return principal

    return authorised


async def _admit(runtime: ServingRuntime, client_id: str, limit: int | None) -> None:
    admission = await runtime.limiter.admit(client_id, limit)
    if not admission.allowed:
        runtime.metrics.rate_limited.inc()
        raise ApiError(
            429,
            "rate_limited",
            f"more than {admission.limit} requests in this window; retry after "
            f"{admission.retry_after_s} s",
            field="authorization",
            headers={
                "Retry-After": str(admission.retry_after_s),
                "X-RateLimit-Limit": str(admission.limit),
                "X-RateLimit-Remaining": "0",
            },
        )


# A record's features, where they came from, and the snapshot date they describe (None: now).
Sourced = tuple[dict[str, Any], str, str | None]


async def _features_of(
    runtime: ServingRuntime, principal: Principal, record: Any, field: str
) -> Sourced:
    """The record's features, looked up by customer_id when the request has none."""
    customer_id = record.customer_id
    if customer_id is not None and not principal.may_access(customer_id):
        principal.require_customer(customer_id)
    if record.features is not None:
        features: dict[str, Any] = record.features.model_dump()
        return features, "request", None
    found = await runtime.lookup_features(customer_id)
    if found is None:
        raise ApiError(
            404, "unknown_customer", f"no features for customer {customer_id}", field=field
        )
    return found.features, found.source, found.snapshot_date


async def _batch_features(
    runtime: ServingRuntime, principal: Principal, records: list[Any]
) -> list[Sourced]:
    """Every record's features; only the ones given by customer_id cost a (concurrent) lookup.

    A coroutine per record cost ~10 ms on a 1,000-record batch: records that carry their
    features are handled inline.
    """
    found: list[Sourced | None] = []
    missing: list[int] = []
    for index, record in enumerate(records):
        if record.features is None:
            found.append(None)
            missing.append(index)
            continue
        if record.customer_id is not None:
            principal.require_customer(record.customer_id)
        found.append((record.features.model_dump(), "request", None))
    if missing:
        lookups = await asyncio.gather(
            *(
                _features_of(runtime, principal, records[i], f"records.{i}.customer_id")
                for i in missing
            )
        )
        for index, result in zip(missing, lookups, strict=True):
            found[index] = result
    return [f for f in found if f is not None]


def _business_routes(runtime: ServingRuntime) -> APIRouter:
    single, batch = request_models(runtime.contract)
    predictor = Depends(_guard(runtime, "predictor"))
    viewer = Depends(_guard(runtime, "viewer"))
    limit = runtime.settings.max_batch_records
    # Prefixes on the router itself (not at include time) keep them in each route's path,
    # which is what the metrics label requests by.
    router = APIRouter(prefix="/v1", route_class=OrjsonRoute)

    @router.post(
        "/predict",
        response_model=Prediction,
        responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def predict(
        body: single,  # type: ignore[valid-type]
        principal: Annotated[Principal, predictor],
    ) -> Response:
        """Churn probability, label and top reasons for a customer's features or id."""
        features, source, as_of = await _features_of(runtime, principal, body, "customer_id")
        customer_id: str | None = body.customer_id  # type: ignore[attr-defined]
        answer = await runtime.predict(features, customer_id, source, as_of)
        return OrjsonResponse(answer)

    @router.post(
        "/batch_predict",
        response_model=BatchPrediction,
        responses={413: {"model": ErrorBody}, 404: {"model": ErrorBody}},
    )
    async def batch_predict(
        body: batch,  # type: ignore[valid-type]
        principal: Annotated[Principal, predictor],
    ) -> Response:
        """Predictions for up to ``max_batch_records`` records, in request order."""
        records: Any = body.records  # type: ignore[attr-defined]
        if len(records) > limit:
            raise ApiError(
                413,
                "batch_too_large",
                f"{len(records)} records exceed the limit of {limit}; "
                "score large sets offline with the batch scoring job (churn score)",
                field="records",
            )
        looked_up = await _batch_features(runtime, principal, records)
        version, answers = await runtime.predict_batch(
            [f for f, _, _ in looked_up],
            [r.customer_id for r in records],
            [s for _, s, _ in looked_up],
            body.reasons,  # type: ignore[attr-defined]
            [a for _, _, a in looked_up],
        )
        return OrjsonResponse({"model_version": version, "predictions": answers})

    @router.get("/model_metrics", response_model=ModelMetrics)
    async def model_metrics(principal: Annotated[Principal, viewer]) -> ModelMetrics:
        """The serving version's evaluation metrics, threshold and this replica's counters."""
        service = runtime.service
        return ModelMetrics(
            model_name=service.meta.name,
            model_version=service.version,
            alias=runtime.settings.alias,
            threshold=service.threshold,
            metrics=service.meta.metrics,
            lineage=service.meta.lineage,
            served=dict(runtime.served),
        )

    @router.get(
        "/feature_importance",
        response_model=FeatureImportance,
        responses={404: {"model": ErrorBody}},
    )
    async def feature_importance(
        principal: Annotated[Principal, viewer],
        version: Annotated[int | None, Query(ge=1, description="Default: the serving one.")] = None,
    ) -> FeatureImportance:
        """Global gain importance of the serving version, or of another registered one."""
        service = runtime.service
        if version is None or version == service.version:
            return FeatureImportance(
                model_version=service.version,
                importance_type="gain",
                importance=service.feature_importance(),
            )
        try:
            meta = await asyncio.to_thread(runtime.source.metadata, version)
        except RegistryError as exc:
            raise ApiError(404, "unknown_version", str(exc), field="version") from exc
        ranked = dict(sorted(meta.feature_importance.items(), key=lambda kv: -kv[1]))
        return FeatureImportance(model_version=version, importance_type="gain", importance=ranked)

    return router


async def _read(what: str, call: Callable[..., T], *args: Any) -> T:
    """Run a blocking read off the event loop; storage trouble is a 503 naming what failed."""
    try:
        return await asyncio.to_thread(call, *args)
    except (ApiError, AuthError, RegistryError):
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        log.error("dashboard_read_failed", what=what, error=message)
        raise ApiError(
            503, "data_unavailable", f"{what} could not be read: {message}", field="request"
        ) from exc


def _dashboard_routes(runtime: ServingRuntime) -> APIRouter:
    """Read-only views for the web dashboard (``/ui``): scores, models, drift, live counters."""
    viewer = Depends(_guard(runtime, "viewer"))
    router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])
    # Reports belong to immutable versions: parsed once per replica.
    reports: dict[int, ModelReport] = {}

    def data() -> DashboardData:
        if runtime.dashboard is None:
            raise ApiError(
                404,
                "no_data_set",
                "this deployment was started without the data set's tables",
                field="request",
            )
        return runtime.dashboard

    @router.get("/scores", response_model=ScoresPage, responses={422: {"model": ErrorBody}})
    async def scores(
        principal: Annotated[Principal, viewer],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        sort: Literal["probability", "customer_id"] = "probability",
        order: Literal["asc", "desc"] = "desc",
        search: Annotated[
            str | None,
            Query(pattern=CUSTOMER_ID_PATTERN, description="Part of the customer id."),
        ] = None,
        min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
        churn_only: Annotated[bool, Query(description="Only customers labelled churn.")] = False,
        reason: Annotated[
            str | None, Query(max_length=128, description="A feature among the top reasons.")
        ] = None,
    ) -> ScoresPage:
        """The latest batch scores (``churn score``), highest risk first, filtered and paged."""
        features = list(runtime.contract.feature_names)
        if reason is not None and reason not in features:
            raise ApiError(
                422,
                "invalid_request",
                f"reason must be a contract feature: {', '.join(features)}",
                field="query.reason",
            )
        filters = ScoreFilters(search, min_probability, churn_only, reason)
        source = data()
        return await _read(
            "the scores table",
            lambda: source.scores(
                filters,
                principal.customer_scope,
                sort=sort,
                order=order,
                limit=limit,
                offset=offset,
                features=features,
            ),
        )

    @router.get(
        "/customers/{customer_id}",
        response_model=CustomerDetail,
        responses={403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
    )
    async def customer(
        principal: Annotated[Principal, viewer],
        customer_id: Annotated[str, PathParam(pattern=CUSTOMER_ID_PATTERN)],
    ) -> CustomerDetail:
        """One customer's current score, its history, features and every feature's push."""
        principal.require_customer(customer_id)
        source = data()
        found = await _read("the scores table", source.customer_scores, customer_id)
        if found is None:
            raise ApiError(
                404, "unknown_customer", f"no scores for customer {customer_id}", "customer_id"
            )
        score, history = found
        service = runtime.service  # one version for the whole answer
        names = service.model.contract.feature_names
        features = await _read(
            "the gold table", source.gold_features, customer_id, score.snapshot_date, names
        )
        if features is None:
            return CustomerDetail(
                customer_id=customer_id,
                score=score,
                history=history,
                features={},
                contributions=[],
                base_value=None,
                explained_by=None,
                explained_probability=None,
            )
        contributions, base, probability = await asyncio.to_thread(explain, service.model, features)
        return CustomerDetail(
            customer_id=customer_id,
            score=score,
            history=history,
            features=features,
            contributions=contributions,
            base_value=base,
            explained_by=service.version,
            explained_probability=probability,
        )

    @router.get("/models", response_model=ModelCatalog, responses={503: {"model": ErrorBody}})
    async def models(principal: Annotated[Principal, viewer]) -> ModelCatalog:
        """Every registered version with its metrics and aliases, and recent alias moves."""
        source = runtime.source
        try:
            versions, aliases, history = await asyncio.to_thread(
                lambda: (source.list_versions(), source.aliases(), source.alias_history())
            )
        except RegistryError as exc:
            raise ApiError(503, "registry_unavailable", str(exc), field="request") from exc
        by_version: dict[int, list[str]] = {}
        for alias, number in aliases.items():
            by_version.setdefault(number, []).append(alias)
        service = runtime.service
        return ModelCatalog(
            model_name=service.meta.name,
            serving_alias=runtime.settings.alias,
            serving_version=service.version,
            aliases=aliases,
            versions=[
                VersionSummary(
                    version=meta.version,
                    created_at=meta.created_at,
                    aliases=sorted(by_version.get(meta.version, [])),
                    metrics=meta.metrics,
                    threshold=(
                        float(meta.params["threshold"])
                        if isinstance(meta.params.get("threshold"), int | float)
                        else None
                    ),
                    registered_by=meta.registered_by,
                    has_report=meta.file(REPORT_FILE) is not None,
                    lineage={
                        k: meta.lineage[k]
                        for k in ("dataset", "gold_delta_version", "code_version", "rows")
                        if k in meta.lineage
                    },
                )
                for meta in reversed(versions)
            ],
            alias_history=[
                AliasMove.model_validate(e, from_attributes=True) for e in reversed(history[-50:])
            ],
        )

    @router.get(
        "/models/{version}/report",
        response_model=ModelReport,
        responses={404: {"model": ErrorBody}},
    )
    async def report(
        principal: Annotated[Principal, viewer],
        version: Annotated[int, PathParam(ge=1, le=1_000_000_000)],
    ) -> ModelReport:
        """A version's evaluation on its test split: metrics, ROC, calibration, lift, importance."""
        if version in reports:
            return reports[version]
        source = runtime.source
        try:
            meta = await asyncio.to_thread(source.metadata, version)
            if meta.file(REPORT_FILE) is None:
                raise ApiError(
                    404,
                    "no_report",
                    f"version {version} was registered without an evaluation report",
                    field="version",
                )
            raw = await asyncio.to_thread(source.read_file, version, REPORT_FILE)
        except RegistryError as exc:
            raise ApiError(404, "unknown_version", str(exc), field="version") from exc
        parsed = parse_report(version, json.loads(raw))
        reports[version] = parsed
        return parsed

    @router.get("/drift", response_model=DriftHistory)
    async def drift(
        principal: Annotated[Principal, viewer],
        runs: Annotated[int, Query(ge=1, le=500, description="How many recent runs.")] = 30,
    ) -> DriftHistory:
        """The latest drift runs (``churn drift``): per-feature statistics and alerts raised."""
        return await _read("the drift table", data().drift, runs)

    @router.get("/live", response_model=LiveStats)
    async def live(principal: Annotated[Principal, viewer]) -> LiveStats:
        """The answering replica's request, latency, cache and prediction counters."""
        return live_stats(
            runtime.metrics, runtime.replica_id, runtime.started_at, runtime.service.version
        )

    return router


# The dashboard's pages load only their own scripts and styles and talk only to this API.
# MUI (emotion) injects <style> elements, hence 'unsafe-inline' for styles; scripts stay 'self'.
UI_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _ui_file(root: Path, path: str) -> Path | None:
    """The file ``path`` names inside ``root``; None for anything outside it or missing."""
    base = root.resolve()
    candidate = (base / path).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


def _ui_routes(runtime: ServingRuntime) -> APIRouter:
    """The dashboard's static build under ``/ui``; unknown page paths get ``index.html``.

    The files are public (code, no data): every figure they show comes from the API with the
    signed-in user's token and role.
    """
    router = APIRouter(include_in_schema=False)

    @router.api_route("/ui", methods=["GET", "HEAD"])
    async def ui_root() -> Response:
        # Relative: stays right under a Serve route prefix too.
        return RedirectResponse("ui/", status_code=307)

    @router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
    async def ui(path: str) -> Response:
        root = runtime.ui_dir
        status = ui_status(root)
        if root is None or status != "ok":
            raise ApiError(404, "dashboard_not_built", status, field="request")
        found = _ui_file(root, path) if path else None
        if found is None:
            last = path.rsplit("/", 1)[-1]
            if path.startswith("assets/") or "." in last:
                raise ApiError(404, "not_found", f"no file /ui/{path}", field="request")
            found = root / "index.html"  # a page of the single-page app: it routes itself
        # Vite names assets by content hash: cache them for good, never the page itself.
        immutable = found.parent.name == "assets"
        cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
        return FileResponse(found, headers={**UI_HEADERS, "Cache-Control": cache})

    return router


def _admin_routes(runtime: ServingRuntime) -> APIRouter:
    admin = Depends(_guard(runtime, "admin"))
    router = APIRouter(prefix="/v1/admin")

    @router.post("/reload", response_model=ReloadResult)
    async def reload(principal: Annotated[Principal, admin]) -> ReloadResult:
        """Check the serving alias now (other replicas follow within ``reload_interval_s``)."""
        changed = await runtime.reload()
        return ReloadResult(
            model_version=runtime.service.version, changed=changed, error=runtime.last_reload_error
        )

    @router.post("/promote", response_model=ReloadResult, responses={409: {"model": ErrorBody}})
    async def promote(body: PromoteRequest, principal: Annotated[Principal, admin]) -> ReloadResult:
        """Move the serving alias through the promotion gates, then reload."""
        try:
            await asyncio.to_thread(
                runtime.source.promote, body.version, principal.subject, body.reason
            )
        except PromotionRefused as exc:
            raise ApiError(409, "promotion_refused", str(exc), field="version") from exc
        except RegistryError as exc:
            raise ApiError(404, "unknown_version", str(exc), field="version") from exc
        changed = await runtime.reload()
        return ReloadResult(
            model_version=runtime.service.version, changed=changed, error=runtime.last_reload_error
        )

    return router


def _token_route(runtime: ServingRuntime) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post(
        "/oauth/token", response_model=TokenResponse, responses={401: {"model": ErrorBody}}
    )
    async def token(
        request: Request,
        grant_type: Annotated[str, Form(max_length=64)],
        client_id: Annotated[str | None, Form(max_length=128)] = None,
        client_secret: Annotated[str | None, Form(max_length=512)] = None,
        username: Annotated[str | None, Form(max_length=128)] = None,
        password: Annotated[str | None, Form(max_length=512)] = None,
        scope: Annotated[str | None, Form(max_length=256)] = None,
    ) -> TokenResponse:
        """OAuth2 token endpoint: ``client_credentials`` and ``password`` grants."""
        authenticator = runtime.authenticator
        if authenticator is None:
            raise ApiError(404, "auth_disabled", "auth is switched off", field="grant_type")
        basic = _basic_credentials(request.headers.get("authorization"))
        if basic is not None:  # RFC 6749 2.3.1: clients may authenticate with HTTP Basic
            client_id, client_secret = basic
        # Guessing secrets costs a rate-limit slot per name, like any other request.
        await _admit(runtime, f"token:{client_id or username or '-'}", None)
        # argon2 is deliberately slow: verify off the event loop.
        return await asyncio.to_thread(
            authenticator.issue,
            grant_type,
            client_id=client_id,
            client_secret=client_secret,
            username=username,
            password=password,
            scope=scope,
        )

    return router


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(client_id, secret)`` of an HTTP Basic header, or ``None``."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            401, "invalid_client", "malformed Basic credentials", field="authorization"
        ) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise ApiError(401, "invalid_client", "malformed Basic credentials", field="authorization")
    return unquote(client_id), unquote(secret)


def _probe_routes(runtime: ServingRuntime, prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, include_in_schema=prefix == "")

    @router.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers and holds a model."""
        return {"status": "ok", "model_version": runtime.service.version}

    @router.get("/readyz")
    async def readyz() -> Response:
        """Readiness with each dependency's state; ``degraded`` still takes traffic."""
        ready, details = await runtime.readiness()
        return OrjsonResponse(details, status_code=200 if ready else 503)

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition of this replica's metrics."""
        return Response(runtime.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return router


def create_api(
    runtime: ServingRuntime, manage_lifecycle: bool = True, echo_request_id: bool = True
) -> FastAPI:
    """Build the app around ``runtime`` (its request models follow the serving contract).

    ``echo_request_id=False`` inside Ray Serve, whose HTTP layer returns X-Request-ID itself.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await runtime.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await runtime.stop()

    app = FastAPI(
        title="Churn prediction API",
        version="1",
        docs_url="/docs",
        lifespan=lifespan,
        max_body_size=runtime.settings.max_body_bytes,
        default_response_class=OrjsonResponse,
    )
    app.state.runtime = runtime
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(AuthError, _on_auth_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(OnlineStoreUnavailable, _on_store_unavailable)
    for prefix in ("/v1", ""):
        app.include_router(_probe_routes(runtime, prefix))
    app.include_router(_token_route(runtime))
    app.include_router(_business_routes(runtime))
    app.include_router(_dashboard_routes(runtime))
    app.include_router(_admin_routes(runtime))
    app.include_router(_ui_routes(runtime))
    if runtime.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=runtime.settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(RequestMetrics, runtime=runtime)
    # Outermost (added last): the request id is bound for everything inside, and the request
    # line records the status whatever layer produced it.
    app.add_middleware(RequestContextMiddleware, echo_header=echo_request_id)
    return app
