"""Client for a paginated REST source (support tickets, usage records).

Each page is JSON ``{"page": n, "page_size": k, "records": [...], "next_page": n+1 | null,
"total_pages": N}`` served at ``GET {base_url}{path}?page=N`` with pages numbered from 1, the same
shape as the ``support/page-NNNNN.json`` files of :mod:`pipelines.sample_data`.

Guarantees:

* Only hosts in ``allowed_hosts`` are ever contacted. Redirects are never followed: a redirect to
  a host off the list raises :class:`HostNotAllowedError`, any other redirect is a plain error.
* Connection errors, timeouts, HTTP 429 and 5xx, and pages that are malformed or truncated are
  retried with exponential backoff and full jitter; ``Retry-After`` is honoured. Other 4xx fail
  at once.
* The bearer token never appears in an exception message or a log line.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self

import httpx

from churn_core.settings import RestSourceSettings

logger = logging.getLogger(__name__)

_REDACTED = "***"

__all__ = ["HostNotAllowedError", "Page", "RestSource", "RestSourceError", "RestSourceSettings"]


class RestSourceError(RuntimeError):
    """A page could not be fetched: names the URL, the page, the cause and the attempts made."""


class HostNotAllowedError(RestSourceError):
    """A request (or a redirect) would go to a host that is not in ``allowed_hosts``."""


@dataclass(frozen=True)
class Page:
    """One validated page of records."""

    number: int
    records: list[Any]
    next_page: int | None


class _RetryableError(Exception):
    """A failure worth another attempt; ``retry_after`` is the server's requested wait."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


class RestSource:
    """Fetches pages from the REST source, retrying transient failures."""

    def __init__(
        self,
        settings: RestSourceSettings,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        *,
        rng: random.Random | None = None,
    ) -> None:
        """Check the base URL against the allowlist; no network I/O happens here.

        ``client`` is used as is and left open by :meth:`close` (its owner closes it); without
        one a private client is created and closed. ``sleep`` and ``rng`` exist so tests can
        record backoff waits instead of sleeping and make the jitter deterministic.
        """
        self._settings = settings
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # jitter only, needs no crypto RNG
        base = settings.base_url.rstrip("/")
        path = settings.path if settings.path.startswith("/") else "/" + settings.path
        self._url = httpx.URL(base + path)
        self._check_host(self._url)
        self._owns_client = client is None
        self._client = (
            client
            if client is not None
            else httpx.Client(timeout=httpx.Timeout(settings.timeout_s), follow_redirects=False)
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this source created it."""
        if self._owns_client:
            self._client.close()

    def page_url(self, number: int) -> httpx.URL:
        """The URL requested for page ``number``."""
        return self._url.copy_add_param("page", str(number))

    def fetch_page(self, number: int) -> Page:
        """Fetch and validate one page, retrying transient failures.

        Raises:
            HostNotAllowedError: the URL or a redirect target is not on the allowlist.
            RestSourceError: a non-retryable HTTP status, or the retry budget ran out.
        """
        if number < 1:
            raise ValueError(f"page numbers start at 1, got {number}")
        url = self.page_url(number)
        self._check_host(url)
        attempts = self._settings.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(url, number)
            except _RetryableError as exc:
                cause = self._redact(exc.cause)
                if attempt == attempts:
                    raise RestSourceError(
                        f"GET {url} page {number} failed after {attempts} attempts: {cause}"
                    ) from None
                wait = self._backoff(attempt, exc.retry_after)
                logger.warning(
                    "GET %s page %d attempt %d/%d failed: %s; retrying in %.2fs",
                    url,
                    number,
                    attempt,
                    attempts,
                    cause,
                    wait,
                )
                self._sleep(wait)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def iter_pages(self, start_page: int = 1) -> Iterator[Page]:
        """Yield pages from ``start_page``, following ``next_page`` until it is null."""
        number: int | None = start_page
        fetched = 0
        while number is not None:
            if fetched >= self._settings.max_pages:
                raise RestSourceError(
                    f"GET {self._url} stopped after max_pages={self._settings.max_pages} pages; "
                    f"the server still reports next_page={number}"
                )
            page = self.fetch_page(number)
            fetched += 1
            yield page
            number = page.next_page

    def iter_records(self, start_page: int = 1) -> Iterator[Any]:
        """Yield every record of every page from ``start_page`` on, in server order."""
        for page in self.iter_pages(start_page):
            yield from page.records

    # -- internals ---------------------------------------------------------------------------

    def _attempt(self, url: httpx.URL, number: int) -> Page:
        try:
            response = self._client.get(
                url,
                headers=self._headers(),
                timeout=self._settings.timeout_s,
                follow_redirects=False,
            )
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            # Our own request is wrong; asking again cannot help.
            raise RestSourceError(
                f"GET {url} page {number} failed: {self._redact(_describe(exc))}"
            ) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _RetryableError(_describe(exc)) from None

        status = response.status_code
        if response.is_redirect:
            location = response.headers.get("Location", "")
            target = url.join(location)
            self._check_host(target)
            raise RestSourceError(
                f"GET {url} page {number} failed: HTTP {status} redirect to {target}, "
                "redirects are not followed"
            )
        if status == 429 or status >= 500:
            raise _RetryableError(
                f"HTTP {status} {response.reason_phrase}".rstrip(),
                _parse_retry_after(response.headers.get("Retry-After")),
            )
        if not response.is_success:
            raise RestSourceError(
                f"GET {url} page {number} failed: HTTP {status} {response.reason_phrase}".rstrip()
                + " (not retried)"
            )
        return self._parse_page(response.content, number)

    def _parse_page(self, content: bytes, number: int) -> Page:
        # Servers send cut-off or garbled bodies under load, so every defect here is retryable.
        try:
            body = json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _RetryableError(f"invalid JSON body ({exc})") from None
        if not isinstance(body, dict):
            raise _RetryableError(f"body is a JSON {type(body).__name__}, not an object")
        field = self._settings.records_field
        if field not in body:
            raise _RetryableError(f"body has no {field!r} field")
        records = body[field]
        if not isinstance(records, list):
            raise _RetryableError(f"{field!r} is a {type(records).__name__}, not a list")
        # Items that are not JSON objects are passed on: validation quarantines them with their
        # raw text, where a retry would only fetch the same defect again.
        page_no = body.get("page")
        if page_no != number or isinstance(page_no, bool):
            raise _RetryableError(f"body is for page {page_no!r}, requested page {number}")
        next_page = body.get("next_page")
        if next_page is not None and (
            not isinstance(next_page, int) or isinstance(next_page, bool) or next_page <= number
        ):
            # A next_page that does not move forward would make iter_pages loop for ever.
            raise _RetryableError(f"next_page {next_page!r} does not follow page {number}")
        page_size = body.get("page_size")
        if (
            next_page is not None
            and isinstance(page_size, int)
            and not isinstance(page_size, bool)
            and len(records) < page_size
        ):
            raise _RetryableError(
                f"truncated page: {len(records)} of {page_size} records but next_page={next_page}"
            )
        return Page(number=number, records=records, next_page=next_page)

    def _headers(self) -> dict[str, str]:
        token = self._settings.token
        if token is None:
            return {}
        return {self._settings.auth_header: f"Bearer {token.get_secret_value()}"}

    def _check_host(self, url: httpx.URL) -> None:
        if url.host.lower() not in self._settings.allowed_hosts:
            raise HostNotAllowedError(
                f"host {url.host!r} of {url} is not in allowed_hosts {self._settings.allowed_hosts}"
            )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff after failed ``attempt`` (1-based), capped."""
        cap = self._settings.backoff_max_s
        ceiling = min(cap, self._settings.backoff_initial_s * 2 ** (attempt - 1))
        wait = self._rng.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, cap)

    def _redact(self, text: str) -> str:
        # Exception texts come from httpx and the server; scrub the secret in case one echoes it.
        token = self._settings.token
        if token is None:
            return text
        secret = token.get_secret_value()
        return text.replace(secret, _REDACTED) if secret else text


def _describe(exc: Exception) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
