"""RestSource against a real local HTTP server with a scripted fault per page."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pipelines.rest_source import (
    HostNotAllowedError,
    RestSource,
    RestSourceError,
    RestSourceSettings,
)

pytestmark = pytest.mark.integration

TOKEN = "tok-s3cr3t-5f0e9c1a"
PATH = "/support/records"
PAGE_SIZE = 4
N_PAGES = 6
N_RECORDS = PAGE_SIZE * (N_PAGES - 1) + 2  # last page is short, as the real source's is


def make_page(number: int) -> dict[str, Any]:
    """Page ``number`` of the generated data set, shaped like pipelines.sample_data pages."""
    first = (number - 1) * PAGE_SIZE
    last = min(first + PAGE_SIZE, N_RECORDS)
    records = [{"seq": i, "customer_id": f"C{i:09d}", "kind": "ticket"} for i in range(first, last)]
    return {
        "page": number,
        "page_size": PAGE_SIZE,
        "records": records,
        "next_page": number + 1 if number < N_PAGES else None,
        "total_pages": N_PAGES,
    }


@dataclass
class FakeApi:
    """State shared with the handler: fault scripts, request counts, headers seen."""

    url: str
    script: dict[int, list[str]] = field(default_factory=dict)
    requests: Counter[int] = field(default_factory=Counter)
    auth_headers: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    served: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def next_action(self, page: int) -> str:
        """The scripted answer for this request of ``page``; "ok" once the script is used up."""
        with self.lock:
            self.requests[page] += 1
            steps = self.script.get(page, [])
            index = self.served[page]
            self.served[page] += 1
        return steps[index] if index < len(steps) else "ok"

    @property
    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())


def make_handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def send_json(
            self, status: int, body: bytes, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            if parts.path != PATH or "page" not in query:
                self.send_json(404, b'{"error": "not found"}')
                return
            number = int(query["page"][0])
            with api.lock:
                api.auth_headers.append(self.headers.get("Authorization"))
            action = api.next_action(number)
            if not 1 <= number <= N_PAGES:
                self.send_json(404, b'{"error": "no such page"}')
                return
            page = make_page(number)
            kind, _, arg = action.partition(":")
            try:
                if kind == "ok":
                    self.send_json(200, json.dumps(page).encode())
                elif kind in ("500", "503"):
                    self.send_json(int(kind), b'{"error": "boom"}')
                elif kind == "429":
                    headers = {"Retry-After": arg} if arg else {}
                    self.send_json(429, b'{"error": "slow down"}', headers)
                elif kind == "429date":
                    headers = {"Retry-After": formatdate(time() + float(arg), usegmt=True)}
                    self.send_json(429, b'{"error": "slow down"}', headers)
                elif kind in ("401", "403", "404"):
                    # Echo the credential back, as careless servers do, to prove it is redacted.
                    body = json.dumps({"error": "denied", "got": self.headers.get("Authorization")})
                    self.send_json(int(kind), body.encode())
                elif kind == "slow":
                    api.stop.wait(float(arg))
                    self.send_json(200, json.dumps(page).encode())
                elif kind == "badjson":
                    self.send_json(200, json.dumps(page).encode()[:-7])
                elif kind == "truncated":
                    page["records"] = page["records"][:1]
                    self.send_json(200, json.dumps(page).encode())
                elif kind == "norecords":
                    del page["records"]
                    self.send_json(200, json.dumps(page).encode())
                elif kind == "notlist":
                    page["records"] = {"oops": 1}
                    self.send_json(200, json.dumps(page).encode())
                elif kind == "wrongpage":
                    page["page"] = number + 1
                    self.send_json(200, json.dumps(page).encode())
                elif kind == "drop":
                    self.close_connection = True  # hang up without an answer
                elif kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", arg)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    raise AssertionError(f"unknown script step {action!r}")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and went away; that is the point of "slow"

    return Handler


@pytest.fixture
def api() -> Iterator[FakeApi]:
    """A threaded HTTP server on a free loopback port, stopped after the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    host, port = server.server_address[:2]
    state = FakeApi(url=f"http://{host!s}:{port}")
    server.RequestHandlerClass = make_handler(state)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()  # release any handler parked in a "slow" step
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Sleeps(list[float]):
    """Injected in place of time.sleep: records the waits, never sleeps."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class CeilingRng(random.Random):
    """Jitter that always picks the top of its range, so the backoff ceiling is observable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make_source(api: FakeApi, sleeps: Sleeps, **overrides: Any) -> RestSource:
    options: dict[str, Any] = {
        "base_url": api.url,
        "path": PATH,
        "token": TOKEN,
        "allowed_hosts": ["127.0.0.1"],
        "timeout_s": 0.5,
        "max_attempts": 5,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 4.0,
    }
    rng = overrides.pop("rng", None)
    options.update(overrides)
    return RestSource(RestSourceSettings(**options), sleep=sleeps, rng=rng)


def test_all_records_arrive_once_in_order_despite_faults(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.script = {
        2: ["500", "429:1", "ok"],
        3: ["slow:2", "ok"],
        4: ["badjson", "truncated", "ok"],
        5: ["norecords", "notlist", "wrongpage", "drop", "ok"],
        6: ["503", "429date:3", "ok"],
    }
    sleeps = Sleeps()
    caplog.set_level(logging.DEBUG)
    with make_source(api, sleeps) as source:
        records = list(source.iter_records())

    assert [r["seq"] for r in records] == list(range(N_RECORDS))
    assert dict(api.requests) == {1: 1, 2: 3, 3: 2, 4: 3, 5: 5, 6: 3}
    # One wait per failed request, and the 429's Retry-After: 1 is honoured.
    assert len(sleeps) == sum(api.requests.values()) - N_PAGES
    assert sleeps[1] >= 1.0
    # The HTTP-date Retry-After (about 3 s ahead) is honoured too, within the 4 s cap.
    assert 1.5 <= sleeps[-1] <= 4.0
    assert all(0 <= s <= 4.0 for s in sleeps)

    assert api.auth_headers and set(api.auth_headers) == {f"Bearer {TOKEN}"}
    retries = [r for r in caplog.records if r.name == "pipelines.rest_source"]
    assert len(retries) == len(sleeps)
    assert all(r.levelno == logging.WARNING for r in retries)
    assert "page 2 attempt 2/5 failed: HTTP 429" in caplog.text
    assert "ReadTimeout" in caplog.text
    assert "truncated page: 1 of 4 records" in caplog.text
    assert TOKEN not in caplog.text


def test_persistent_failure_raises_after_max_attempts(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.script = {3: ["500"] * 10}
    sleeps = Sleeps()
    caplog.set_level(logging.DEBUG)
    with make_source(api, sleeps, max_attempts=4) as source:
        pages = source.iter_pages()
        assert next(pages).number == 1
        assert next(pages).number == 2
        with pytest.raises(RestSourceError) as info:
            next(pages)

    message = str(info.value)
    assert api.requests[3] == 4
    assert len(sleeps) == 3
    assert "page 3" in message and "after 4 attempts" in message and "HTTP 500" in message
    assert message.startswith(f"GET {api.url}{PATH}?page=3 ")
    assert TOKEN not in message and TOKEN not in caplog.text


def test_persistent_truncation_names_the_problem(api: FakeApi) -> None:
    api.script = {1: ["truncated"] * 5}
    with make_source(api, Sleeps()) as source, pytest.raises(RestSourceError) as info:
        source.fetch_page(1)
    assert api.requests[1] == 5
    assert "page 1 failed after 5 attempts: truncated page" in str(info.value)


@pytest.mark.parametrize("status", ["401", "403", "404"])
def test_client_errors_fail_at_once(
    api: FakeApi, caplog: pytest.LogCaptureFixture, status: str
) -> None:
    api.script = {1: [status]}
    sleeps = Sleeps()
    caplog.set_level(logging.DEBUG)
    with make_source(api, sleeps) as source, pytest.raises(RestSourceError) as info:
        source.fetch_page(1)
    assert api.total_requests == 1
    assert sleeps == []
    assert f"HTTP {status}" in str(info.value) and "page 1" in str(info.value)
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text


def test_host_not_allowed_makes_no_request(api: FakeApi) -> None:
    with pytest.raises(HostNotAllowedError) as info:
        make_source(api, Sleeps(), allowed_hosts=["api.example.com"])
    assert api.total_requests == 0
    assert "127.0.0.1" in str(info.value) and TOKEN not in str(info.value)


def test_redirect_off_the_allowlist_is_refused(api: FakeApi) -> None:
    api.script = {1: ["redirect:http://evil.example.net/steal"]}
    with make_source(api, Sleeps()) as source, pytest.raises(HostNotAllowedError) as info:
        source.fetch_page(1)
    assert api.total_requests == 1  # the redirect itself, never followed
    assert "evil.example.net" in str(info.value) and TOKEN not in str(info.value)


def test_backoff_grows_and_is_capped_without_retry_after(api: FakeApi) -> None:
    api.script = {1: ["500"] * 7 + ["ok"]}
    sleeps = Sleeps()
    with make_source(
        api, sleeps, max_attempts=8, backoff_initial_s=0.5, backoff_max_s=3.0, rng=CeilingRng()
    ) as source:
        assert len(source.fetch_page(1).records) == PAGE_SIZE
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_jittered_backoff_stays_within_its_ceiling(api: FakeApi) -> None:
    api.script = {1: ["503"] * 7 + ["ok"]}
    sleeps = Sleeps()
    with make_source(api, sleeps, max_attempts=8, backoff_max_s=3.0) as source:
        source.fetch_page(1)
    ceilings = [min(3.0, 0.5 * 2**k) for k in range(7)]
    assert len(sleeps) == 7
    assert all(0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))


def test_max_pages_guards_against_endless_servers(api: FakeApi) -> None:
    with make_source(api, Sleeps(), max_pages=2) as source, pytest.raises(RestSourceError) as info:
        list(source.iter_pages())
    assert "max_pages=2" in str(info.value)
    assert api.total_requests == 2


def test_token_is_not_in_settings_repr(api: FakeApi) -> None:
    settings = RestSourceSettings(base_url=api.url, token=TOKEN, allowed_hosts=["127.0.0.1"])
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())
