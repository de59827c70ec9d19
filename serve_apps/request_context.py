"""Request ids and one log line per HTTP request (a pure ASGI middleware: no extra task).

A well-formed incoming ``X-Request-ID`` is kept (a gateway's or HAProxy's id ties their logs to
ours); anything else gets a fresh id. The id is bound to every log line written while the
request runs (structlog contextvars), returned in the ``X-Request-ID`` response header, and
written with the request's outcome and the ``prediction_id`` of each answer, so a user's
prediction id leads to the request and a request id to every line it caused.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from churn_core.logging import is_valid_id, new_id

REQUEST_ID_HEADER = "x-request-id"
# Probes and scrapes: one line each every few seconds would bury the requests; DEBUG keeps them.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/v1/healthz", "/v1/readyz"})
_MAX_PATH_CHARS = 200

log = structlog.get_logger("serve_apps.requests")

# Fields the handlers add to the request's log line (prediction ids, model version). A dict
# shared by reference, so additions made in threads (asyncio.to_thread copies the context)
# or in nested tasks still reach the middleware.
_NOTES: ContextVar[dict[str, Any] | None] = ContextVar("churn_request_notes", default=None)


def note_request(**fields: Any) -> None:
    """Add ``fields`` to the current request's log line (no-op outside a request)."""
    notes = _NOTES.get()
    if notes is not None:
        notes.update(fields)


class RequestContextMiddleware:
    """Assigns the request id, binds it for the request's log lines, logs the outcome.

    ``echo_header=False`` is for Ray Serve: its own HTTP layer (proxy or direct ingress)
    already returns the incoming or generated id, and a second header would turn ``abc`` into
    ``abc, abc`` for clients. The header is still set when the incoming id was refused, since
    Serve returns that one unchanged and the id in our logs is the new one.
    """

    def __init__(self, app: ASGIApp, echo_header: bool = True) -> None:
        self.app = app
        self.echo_header = echo_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with its id bound; one line when it ends, however it ends."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = MutableHeaders(scope=scope)
        incoming = headers.get(REQUEST_ID_HEADER)
        accepted = is_valid_id(incoming)
        request_id = incoming if accepted and incoming is not None else new_id()
        if not accepted:
            # Handlers that read the header see the id the logs use.
            headers[REQUEST_ID_HEADER] = request_id
        respond = self.echo_header or not accepted
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if respond:
                    MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        notes: dict[str, Any] = {}
        token = _NOTES.set(notes)
        try:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                try:
                    await self.app(scope, receive, send_with_id)
                finally:
                    self._log(scope, status, time.perf_counter() - started, notes)
        finally:
            _NOTES.reset(token)

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float, notes: dict[str, Any]) -> None:
        route = getattr(scope.get("route"), "path", None)
        level = "error" if status >= 500 else "debug" if route in QUIET_ROUTES else "info"
        # The path, never the query string (it can carry anything a client typed).
        path = str(scope.get("path", ""))[:_MAX_PATH_CHARS]
        getattr(log, level)(
            "http_request",
            method=scope.get("method"),
            path=path,
            route=route or "unmatched",
            status=status,
            duration_ms=round(seconds * 1000, 2),
            **notes,
        )
