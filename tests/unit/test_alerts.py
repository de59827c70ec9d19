"""Alert channels against real loopback servers: aiosmtpd for SMTP, http.server for Slack."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr, ValidationError

from monitoring.alerts import (
    Alert,
    AlertDeliveryError,
    AlertDispatcher,
    AlertSettings,
    EmailChannel,
    FileCooldownStore,
    MemoryCooldownStore,
    SlackChannel,
    SlackSettings,
    SmtpSettings,
    build_channels,
)

WEBHOOK_TOKEN = "T0000/B0000/XXXXsecretXXXX"


def free_port() -> int:
    """A loopback port nobody listens on (aiosmtpd's readiness probe cannot use port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- servers ---------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content))
        self.arrived.set()
        return "250 OK"


class Receiver:
    """A Slack webhook stand-in: records JSON bodies, answers a planned status sequence."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        # Each request pops one (status, headers); an empty plan answers 200 "ok".
        self.plan: list[tuple[int, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.paths.append(self.path)
                status, headers = receiver.plan.pop(0) if receiver.plan else (200, {})
                body = b"ok" if status == 200 else b"invalid_payload"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{WEBHOOK_TOKEN}"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recv = Receiver()
    # A short poll interval keeps shutdown() from waiting the default half second.
    thread = threading.Thread(target=recv.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield recv
    finally:
        recv.server.shutdown()
        recv.server.server_close()


@pytest.fixture
def http_client() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


# -- helpers ---------------------------------------------------------------------------------


def smtp_settings(port: int, **updates: Any) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1",
        port=port,
        sender="churn@example.com",
        recipients=["oncall@example.com", "ml@example.com"],
        timeout_s=5,
        **updates,
    )


def slack_settings(url: str, **updates: Any) -> SlackSettings:
    values: dict[str, Any] = {"webhook_url": SecretStr(url), "timeout_s": 5, "retry_wait_s": 0.05}
    return SlackSettings(**(values | updates))


def drift(feature: str = "tenure_months", value: float = 0.31) -> Alert:
    return Alert(
        kind="drift",
        severity="critical",
        title=f"Feature drift on {feature}",
        summary="Serving distribution moved away from training.",
        details={"feature": feature, "statistic": "psi", "value": value, "threshold": 0.2},
    )


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- alerts ----------------------------------------------------------------------------------


def test_fingerprint_ignores_measured_values_but_not_identity() -> None:
    assert drift(value=0.31).fingerprint == drift(value=0.47).fingerprint
    assert drift("tenure_months").fingerprint != drift("monthly_fee").fingerprint
    other_statistic = drift().model_copy(
        update={"details": {"feature": "tenure_months", "statistic": "ks"}}
    )
    assert other_statistic.fingerprint != drift().fingerprint


def test_settings_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ValidationError) as info:
        AlertSettings.model_validate({"slack": {"webhook_url": f"ftp://hooks/{WEBHOOK_TOKEN}"}})
    assert WEBHOOK_TOKEN not in str(info.value)
    with pytest.raises(ValidationError, match="username and password"):
        smtp_settings(25, password=SecretStr("hunter2"))


# -- channels --------------------------------------------------------------------------------


def test_email_names_severity_title_and_details(mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    EmailChannel(smtp_settings(port)).send(drift())

    assert box.arrived.wait(5)
    message = box.messages[0]
    assert message["Subject"] == "[churn][critical] Feature drift on tenure_months"
    assert message["To"] == "oncall@example.com, ml@example.com"
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    body = payload.decode()
    for text in ("Serving distribution moved", "feature", "tenure_months", "statistic", "psi"):
        assert text in body
    assert "value" in body and "0.31" in body
    assert "threshold" in body and "0.2" in body


def test_email_login_failure_hides_password() -> None:
    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth: Any
    ) -> AuthResult:
        ok = isinstance(auth, LoginPassword) and auth.password == b"right-password"
        # handled=False: aiosmtpd answers 535 itself; True would leave the client waiting.
        return AuthResult(success=ok, handled=False)

    box = Mailbox()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        channel = EmailChannel(
            smtp_settings(controller.port, username="churn", password=SecretStr("wrong-password"))
        )
        with pytest.raises(AlertDeliveryError) as info:
            channel.send(drift())
        EmailChannel(
            smtp_settings(controller.port, username="churn", password=SecretStr("right-password"))
        ).send(drift())
    finally:
        controller.stop()
    assert "535" in str(info.value)
    assert "wrong-password" not in str(info.value)
    assert "\n" not in str(info.value)
    assert len(box.messages) == 1


def test_slack_payload_names_the_problem(receiver: Receiver, http_client: httpx.Client) -> None:
    SlackChannel(slack_settings(receiver.url, channel="#churn-alerts"), http_client).send(drift())

    [body] = receiver.bodies
    assert receiver.paths == [f"/services/{WEBHOOK_TOKEN}"]
    assert "[critical] Feature drift on tenure_months" in body["text"]
    assert body["channel"] == "#churn-alerts"
    header = body["blocks"][0]
    assert header["type"] == "header"
    assert "[critical] Feature drift on tenure_months" in header["text"]["text"]
    fields = [f["text"] for block in body["blocks"] for f in block.get("fields", [])]
    assert fields == [
        "*feature*\ntenure_months",
        "*statistic*\npsi",
        "*value*\n0.31",
        "*threshold*\n0.2",
    ]


def test_slack_retries_once_after_500(receiver: Receiver, http_client: httpx.Client) -> None:
    receiver.plan = [(500, {})]
    SlackChannel(slack_settings(receiver.url), http_client).send(drift())
    assert len(receiver.bodies) == 2


def test_slack_honours_retry_after_up_to_the_cap(
    receiver: Receiver, http_client: httpx.Client
) -> None:
    receiver.plan = [(429, {"Retry-After": "0.3"})]
    channel = SlackChannel(slack_settings(receiver.url, max_retry_wait_s=1), http_client)
    started = time.monotonic()
    channel.send(drift())
    assert time.monotonic() - started >= 0.3

    receiver.plan = [(429, {"Retry-After": "3600"})]
    channel = SlackChannel(slack_settings(receiver.url, max_retry_wait_s=0.1), http_client)
    started = time.monotonic()
    channel.send(drift())
    assert time.monotonic() - started < 2
    assert len(receiver.bodies) == 4


def test_slack_client_error_is_not_retried(receiver: Receiver, http_client: httpx.Client) -> None:
    receiver.plan = [(400, {})]
    with pytest.raises(AlertDeliveryError, match="HTTP 400 Bad Request: invalid_payload") as info:
        SlackChannel(slack_settings(receiver.url), http_client).send(drift())
    assert len(receiver.bodies) == 1
    assert WEBHOOK_TOKEN not in str(info.value)


def test_slack_unreachable_hides_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/services/{WEBHOOK_TOKEN}"
    with SlackChannel(slack_settings(url)) as channel, pytest.raises(AlertDeliveryError) as info:
        channel.send(drift())
    assert "after 2 attempts" in str(info.value)
    assert WEBHOOK_TOKEN not in str(info.value)


# -- dispatcher ------------------------------------------------------------------------------


def test_cooldown_suppresses_the_same_problem_until_it_expires(
    mailbox: tuple[Mailbox, int], receiver: Receiver, http_client: httpx.Client
) -> None:
    box, port = mailbox
    settings = AlertSettings(
        cooldown_s=600, smtp=smtp_settings(port), slack=slack_settings(receiver.url)
    )
    clock = Clock()
    dispatcher = AlertDispatcher(
        settings, build_channels(settings, http_client), MemoryCooldownStore(), clock
    )

    first = dispatcher.dispatch([drift(value=0.31)])
    assert [d.channels for d in first.sent] == [("email", "slack")]
    assert not first.failed

    clock.now += 599
    again = dispatcher.dispatch([drift(value=0.47), drift("monthly_fee")])
    assert [a.details["value"] for a in again.suppressed] == [0.47]
    assert [d.alert.details["feature"] for d in again.sent] == ["monthly_fee"]

    clock.now += 2
    later = dispatcher.dispatch([drift(value=0.52)])
    assert [d.alert.details["value"] for d in later.sent] == [0.52]
    assert len(receiver.bodies) == 3
    assert box.arrived.wait(5)
    assert len(box.messages) == 3


def test_duplicates_within_one_dispatch_are_sent_once(
    receiver: Receiver, http_client: httpx.Client
) -> None:
    warning = drift(value=0.25).model_copy(update={"severity": "warning"})
    settings = AlertSettings(slack=slack_settings(receiver.url))
    dispatcher = AlertDispatcher(
        settings, build_channels(settings, http_client), MemoryCooldownStore()
    )

    result = dispatcher.dispatch([warning, drift(value=0.31)])
    assert [d.alert.severity for d in result.sent] == ["critical"]
    assert result.suppressed == [warning]
    assert len(receiver.bodies) == 1


def test_failing_slack_does_not_stop_email(
    mailbox: tuple[Mailbox, int], receiver: Receiver, http_client: httpx.Client
) -> None:
    box, port = mailbox
    receiver.plan = [(500, {})] * 2
    settings = AlertSettings(smtp=smtp_settings(port), slack=slack_settings(receiver.url))
    state = MemoryCooldownStore()
    dispatcher = AlertDispatcher(settings, build_channels(settings, http_client), state)

    result = dispatcher.dispatch([drift()])
    assert [d.channels for d in result.sent] == [("email",)]
    [failure] = result.failed
    assert failure.channel == "slack"
    assert "HTTP 500" in failure.error
    assert "\n" not in failure.error
    assert WEBHOOK_TOKEN not in failure.error and "127.0.0.1" not in failure.error
    assert box.arrived.wait(5)
    assert len(box.messages) == 1
    # Email got through, so the problem is in cooldown even though Slack missed it.
    assert state.last_sent(drift().fingerprint) is not None


def test_fully_failed_alert_is_retried_next_time(
    receiver: Receiver, http_client: httpx.Client
) -> None:
    receiver.plan = [(500, {})] * 2
    settings = AlertSettings(slack=slack_settings(receiver.url))
    state = MemoryCooldownStore()
    dispatcher = AlertDispatcher(settings, build_channels(settings, http_client), state)

    failed = dispatcher.dispatch([drift()])
    assert not failed.sent
    assert [f.channel for f in failed.failed] == ["slack"]
    assert state.last_sent(drift().fingerprint) is None

    retried = dispatcher.dispatch([drift()])
    assert len(retried.sent) == 1
    assert len(receiver.bodies) == 3


def test_file_cooldown_store_survives_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cooldown.json"
    FileCooldownStore(path).record("abc", 123.5)
    FileCooldownStore(path).record("def", 456.0)

    reopened = FileCooldownStore(path)
    assert reopened.last_sent("abc") == 123.5
    assert reopened.last_sent("def") == 456.0
    assert reopened.last_sent("missing") is None
    assert [p.name for p in path.parent.iterdir()] == ["cooldown.json"]


def test_damaged_cooldown_file_fails_open(tmp_path: Path) -> None:
    path = tmp_path / "cooldown.json"
    path.write_text("{not json")
    assert FileCooldownStore(path).last_sent("abc") is None
    FileCooldownStore(path).record("abc", 1.0)
    assert FileCooldownStore(path).last_sent("abc") == 1.0
