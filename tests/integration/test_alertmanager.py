"""A real Alertmanager, configured by monitoring/alertmanager_config.py, delivers the churn alerts.

Everything runs on loopback and is real: Alertmanager and Prometheus (Debian packages;
``make services`` installs them), an aiosmtpd SMTP server that requires the password from the
secret file, and an HTTP server standing in for the Slack webhook. No Ray, no Spark.

The end-to-end case runs the real ChurnApiErrorRateHigh rule of monitoring/prometheus/rules.yml
on a fake scrape target whose counters answer 1 request in 11 with a 500. Only the rule's
``for: 5m`` is changed (to 0s), in a copy: five minutes of pending would make this test slow,
and the hold itself is covered by rules_test.yml. The other cases post alerts to Alertmanager's
API directly, which is how Prometheus hands them over too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from churn_core.settings import AlertSettings, SlackSettings, SmtpSettings
from monitoring.alertmanager_config import Timing, dump_config, render_config, write_secret_files
from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.integration

RULES = REPO_ROOT / "monitoring" / "prometheus" / "rules.yml"
SMTP_USER = "alertmanager"
SMTP_PASSWORD = "smtp-secret-in-a-file"
WEBHOOK_PATH = "/services/T0/B0/webhook-secret-in-a-file"
# Fast enough for a test; the 1 h cooldown stays, so any second message is a failed de-dup.
TEST_TIMING = Timing(
    group_wait_s=1, critical_group_wait_s=1, group_interval_s=1, repeat_interval_s=3600
)
DEADLINE_S = 60.0

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout_s: float = DEADLINE_S) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.1)


def at_least(count: int, fetch: Callable[[], list[T]]) -> Callable[[], list[T] | None]:
    """A ``wait_for`` check: what ``fetch`` returns once it holds ``count`` items."""

    def check() -> list[T] | None:
        items = fetch()
        return items if len(items) >= count else None

    return check


# -- the channels' servers -------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler keeping every message; its server accepts only SMTP_PASSWORD."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self._messages.append(message)
        return "250 OK"

    def messages(self, alertname: str) -> list[EmailMessage]:
        """The messages whose subject names ``alertname``."""
        with self._lock:
            return [m for m in self._messages if alertname in str(m["Subject"])]


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> AuthResult:
    """Accept SMTP_USER with SMTP_PASSWORD only: proves Alertmanager read the password file."""
    ok = (
        isinstance(auth, LoginPassword)
        and auth.login == SMTP_USER.encode()
        and auth.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


class SlackWebhook:
    """Stands in for a Slack incoming webhook: records each JSON body and the path it came to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._posts: list[tuple[str, dict[str, Any]]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with webhook._lock:
                    webhook._posts.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{WEBHOOK_PATH}"

    def attachments(self, alertname: str) -> list[tuple[str, dict[str, Any]]]:
        """(path, first attachment) of each post whose title names ``alertname``."""
        with self._lock:
            posts = list(self._posts)
        found = []
        for path, body in posts:
            attachment = body["attachments"][0]
            if alertname in attachment["title"]:
                found.append((path, attachment))
        return found


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticate,
        auth_require_tls=False,
        # aiosmtpd's LOGIN prompts ("User Name\0") are not the usual "Username:" that
        # Alertmanager's LOGIN client expects; PLAIN carries the same password check.
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@pytest.fixture
def slack() -> Iterator[SlackWebhook]:
    webhook = SlackWebhook()
    thread = threading.Thread(target=webhook.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield webhook
    finally:
        webhook.server.shutdown()
        webhook.server.server_close()


# -- Alertmanager ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Alertmanager:
    """A running Alertmanager and the helpers the tests need from its HTTP API."""

    url: str
    config_text: str

    def post(self, alerts: list[dict[str, Any]]) -> None:
        """Hand ``alerts`` over the way Prometheus does (API v2)."""
        response = httpx.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=5)
        assert response.status_code == 200, response.text

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


def alert_settings(smtp_port: int, webhook_url: str) -> AlertSettings:
    """Channels pointing at the test's servers, with credentials that must come from files."""
    return AlertSettings(
        cooldown_s=3600,
        smtp=SmtpSettings(
            host="127.0.0.1",
            port=smtp_port,
            username=SMTP_USER,
            password=SecretStr(SMTP_PASSWORD),
            sender="alertmanager@example.com",
            recipients=["oncall@example.com", "ml@example.com"],
        ),
        slack=SlackSettings(webhook_url=SecretStr(webhook_url)),
    )


@pytest.fixture
def alertmanager(
    mailbox: tuple[Mailbox, int], slack: SlackWebhook, tmp_path: Path
) -> Iterator[Alertmanager]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "no Alertmanager: run `make services` (installs prometheus-alertmanager)"
    settings = alert_settings(mailbox[1], slack.url)
    secrets = tmp_path / "secrets"
    write_secret_files(settings, secrets)
    config_text = dump_config(render_config(settings, secrets, timing=TEST_TIMING))
    (tmp_path / "alertmanager.yml").write_text(config_text)
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no HA peers: no gossip port, no settle wait
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url, process, tmp_path / "alertmanager.log"), "Alertmanager")
        yield Alertmanager(url=url, config_text=config_text)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _ready(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def alert(alertname: str, severity: str, summary: str, **labels: str) -> dict[str, Any]:
    """A firing alert as Prometheus posts it (add ``endsAt`` in the past to resolve it)."""
    return {
        "labels": {"alertname": alertname, "severity": severity, **labels},
        "annotations": {"summary": summary, "description": f"Description of {alertname}."},
        "startsAt": (datetime.now(UTC) - timedelta(minutes=6)).isoformat(),
    }


def plain_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None, f"no text/plain part in {message['Subject']!r}"
    return str(body.get_content())


# -- Prometheus with the real rule -----------------------------------------------------------


class ErrorTarget:
    """A scrape target exposing churn_http_requests_total: 100 answers 200, 10 answer 500.

    The counters grow per scrape, both in one response, so their rates keep the ratio
    exactly: 10/110 = 9.091%, above the warning threshold (5%) and below the critical (20%).
    """

    def __init__(self) -> None:
        self.scrapes = 0
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                target.scrapes += 1
                body = (
                    "# TYPE churn_http_requests_total counter\n"
                    f'churn_http_requests_total{{route="/v1/predict",status="200"}} {100 * target.scrapes}\n'
                    f'churn_http_requests_total{{route="/v1/predict",status="500"}} {10 * target.scrapes}\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def error_target() -> Iterator[ErrorTarget]:
    target = ErrorTarget()
    thread = threading.Thread(target=target.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield target
    finally:
        target.server.shutdown()
        target.server.server_close()


def rules_with_immediate(alertname: str) -> dict[str, Any]:
    """rules.yml with ``alertname``'s ``for:`` set to 0s; everything else as committed."""
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    rules = [r for group in document["groups"] for r in group["rules"] if r.get("alert")]
    [rule] = [r for r in rules if r["alert"] == alertname]
    rule["for"] = "0s"
    return document


@pytest.fixture
def prometheus(
    alertmanager: Alertmanager, error_target: ErrorTarget, tmp_path: Path
) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "no prometheus binary: run `make services` (installs the Debian package)"
    folder = tmp_path / "prometheus"
    folder.mkdir()
    rules = rules_with_immediate("ChurnApiErrorRateHigh")
    (folder / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [alertmanager.url.removeprefix("http://")]}]}
            ]
        },
        "scrape_configs": [
            {"job_name": "churn-serve", "static_configs": [{"targets": [error_target.address]}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            # Re-send the firing alert on every evaluation (default: once a minute), so the
            # de-duplication below is tested against many copies of it.
            "--rules.alert.resend-delay=1s",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- tests -----------------------------------------------------------------------------------


def test_the_config_names_secret_files_not_secrets(alertmanager: Alertmanager) -> None:
    assert SMTP_PASSWORD not in alertmanager.config_text
    assert WEBHOOK_PATH not in alertmanager.config_text
    assert "auth_password_file" in alertmanager.config_text
    assert "api_url_file" in alertmanager.config_text


def test_error_rate_rule_reaches_email_and_slack_once(
    alertmanager: Alertmanager, prometheus: str, mailbox: tuple[Mailbox, int], slack: SlackWebhook
) -> None:
    box, _ = mailbox
    name = "ChurnApiErrorRateHigh"
    summary = "5xx rate on /v1/predict is 9.091%"

    [email] = wait_for(lambda: box.messages(name), f"the {name} email")
    assert email["Subject"] == f"[churn][warning] {name}: {summary}"
    assert email["To"] == "oncall@example.com, ml@example.com"
    text = plain_text(email)
    assert summary in text
    assert "of requests to /v1/predict answered 5xx" in text  # the description annotation
    assert "route=/v1/predict" in text and "severity=warning" in text

    [(path, attachment)] = wait_for(lambda: slack.attachments(name), f"the {name} Slack post")
    assert path == WEBHOOK_PATH  # the URL came from api_url_file
    assert attachment["title"] == f"[churn][warning] {name}: {summary}"
    assert f"*{summary}*" in attachment["text"]
    assert "route=/v1/predict" in attachment["text"]
    assert attachment["color"] == "warning"

    # De-duplication: Prometheus keeps re-sending the firing alert (every second) and
    # Alertmanager re-checks the group every group_interval (1 s): each check queries the
    # notification log once per channel. After several of both, still one message each.
    received = alertmanager.metric("alertmanager_alerts_received_total", status="firing")
    queries = alertmanager.metric("alertmanager_nflog_queries_total")
    wait_for(
        lambda: (
            alertmanager.metric("alertmanager_alerts_received_total", status="firing")
            >= received + 3
            and alertmanager.metric("alertmanager_nflog_queries_total") >= queries + 2 * 3
        ),
        "three more copies of the alert and three more checks of its group",
    )
    assert len(box.messages(name)) == 1
    assert len(slack.attachments(name)) == 1
    assert not box.messages("ChurnApiErrorRateCritical")  # 9% is below the critical 20%


def test_critical_error_rate_inhibits_the_warning_on_its_route_only(
    alertmanager: Alertmanager, mailbox: tuple[Mailbox, int], slack: SlackWebhook
) -> None:
    box, _ = mailbox
    alertmanager.post(
        [
            alert(
                "ChurnApiErrorRateCritical", "critical", "33% on batch", route="/v1/batch_predict"
            ),
            alert("ChurnApiErrorRateHigh", "warning", "33% on batch", route="/v1/batch_predict"),
            alert("ChurnApiErrorRateHigh", "warning", "9% on predict", route="/v1/predict"),
            # Neither has a route: a severity-only inhibit rule would let the first silence the
            # second ("equal" holds for a label both lack).
            alert("ChurnJobNotSucceeding", "critical", "features job stale", job="features"),
            alert("ChurnRedisDown", "warning", "Redis down"),
        ]
    )
    expected = {
        "ChurnApiErrorRateCritical": "[churn][critical] ChurnApiErrorRateCritical: 33% on batch",
        "ChurnApiErrorRateHigh": "[churn][warning] ChurnApiErrorRateHigh: 9% on predict",
        "ChurnJobNotSucceeding": "[churn][critical] ChurnJobNotSucceeding: features job stale",
        "ChurnRedisDown": "[churn][warning] ChurnRedisDown: Redis down",
    }
    for name, subject in expected.items():
        [email] = wait_for(partial(box.messages, name), f"the {name} email")
        assert email["Subject"] == subject
        wait_for(partial(slack.attachments, name), f"the {name} Slack post")

    # All five groups started together with the same timers; once the delivered ones have been
    # checked three more times (2 channels each), the inhibited group has had its turns too.
    queries = alertmanager.metric("alertmanager_nflog_queries_total")
    wait_for(
        lambda: alertmanager.metric("alertmanager_nflog_queries_total") >= queries + 4 * 2 * 3,
        "three more checks of every group",
    )
    high = box.messages("ChurnApiErrorRateHigh")
    assert [str(m["Subject"]) for m in high] == [
        "[churn][warning] ChurnApiErrorRateHigh: 9% on predict"
    ]
    assert len(slack.attachments("ChurnApiErrorRateHigh")) == 1


def test_resolved_alert_is_sent_on_both_channels(
    alertmanager: Alertmanager, mailbox: tuple[Mailbox, int], slack: SlackWebhook
) -> None:
    box, _ = mailbox
    name = "ChurnPredictLatencyHigh"
    firing = alert(name, "warning", "p99 latency of /v1/predict is 120ms", route="/v1/predict")
    alertmanager.post([firing])
    wait_for(lambda: box.messages(name), f"the firing {name} email")
    wait_for(lambda: slack.attachments(name), f"the firing {name} Slack post")

    alertmanager.post([firing | {"endsAt": datetime.now(UTC).isoformat()}])
    emails = wait_for(at_least(2, lambda: box.messages(name)), f"the resolved {name} email")
    assert emails[1]["Subject"] == (
        f"[churn][warning] RESOLVED {name}: p99 latency of /v1/predict is 120ms"
    )
    assert "Resolved (1):" in plain_text(emails[1])
    posts = wait_for(at_least(2, lambda: slack.attachments(name)), f"the resolved {name} post")
    assert posts[1][1]["color"] == "good"
    assert "[resolved]" in posts[1][1]["text"]
