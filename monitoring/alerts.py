"""Alert channels: email (SMTP) and Slack incoming webhooks, with de-duplication and cooldown.

Monitoring checks (drift, accuracy, error rate, latency) build :class:`Alert` objects and hand
them to an :class:`AlertDispatcher`. The dispatcher sends each alert to every channel unless the
same problem (same :attr:`Alert.fingerprint`) was sent within ``cooldown_s``; the cooldown is
recorded only once an alert reached a channel, so a failed send is tried again next run.

Secrets (the Slack webhook URL, the SMTP password) never appear in errors or log lines. Keep
the ``httpx`` logger at WARNING (``configure_logging`` does): its INFO lines print request URLs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import smtplib
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from churn_core.logging import get_logger
from churn_core.settings import AlertSettings as AlertSettings
from churn_core.settings import SlackSettings as SlackSettings
from churn_core.settings import SmtpSettings as SmtpSettings

log = get_logger(__name__)

AlertKind = Literal["drift", "accuracy", "error_rate", "latency"]
Severity = Literal["warning", "critical"]
DetailValue = str | float | int

_REDACTED = "***"
# Slack Block Kit limits: header text, section text, field text, fields per section.
_SLACK_HEADER_MAX = 150
_SLACK_TEXT_MAX = 3000
_SLACK_FIELD_MAX = 2000
_SLACK_FIELDS_PER_SECTION = 10


class AlertDeliveryError(RuntimeError):
    """A channel could not deliver an alert; the message is one line without secrets."""


# -- alerts ----------------------------------------------------------------------------------


class Alert(BaseModel):
    """One problem found by a monitoring check.

    ``details`` mixes what identifies the problem with what was measured: string values (e.g.
    ``feature``, ``statistic``, ``route``) identify it and enter the fingerprint; numbers (e.g.
    ``value``, ``threshold``) are measurements and do not, so an ongoing problem whose value
    wobbles de-duplicates. Pass an identifying number (a model version) as a string, and keep
    measured values out of ``title``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AlertKind
    severity: Severity
    title: str = Field(min_length=1)
    summary: str
    details: dict[str, DetailValue] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def identity(self) -> dict[str, str]:
        """The details that identify the problem (string values), sorted by key."""
        return {k: v for k, v in sorted(self.details.items()) if isinstance(v, str)}

    @property
    def fingerprint(self) -> str:
        """A stable hash of kind, title and identifying details (not the measured values)."""
        canonical = json.dumps(
            [self.kind, self.title, sorted(self.identity.items())],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# -- settings --------------------------------------------------------------------------------

# The settings live with every other setting (churn_core.settings: YAML + CHURN_* variables)
# and are re-exported above, because the channels are built from them.


# -- channels --------------------------------------------------------------------------------


class Channel(Protocol):
    """Somewhere an alert can be delivered."""

    @property
    def name(self) -> str:
        """Short name used in results and log lines."""
        ...

    def send(self, alert: Alert) -> None:
        """Deliver ``alert``; raise :class:`AlertDeliveryError` on failure."""
        ...


class EmailChannel:
    """Sends each alert as a plain-text email through an SMTP server."""

    name = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    def send(self, alert: Alert) -> None:
        """Email ``alert`` to every recipient."""
        message = self.compose(alert)
        try:
            refused = self._deliver(message)
        except (smtplib.SMTPException, OSError) as exc:
            target = f"{self._settings.host}:{self._settings.port}"
            raise AlertDeliveryError(
                self._redact(f"email via {target} failed: {_describe(exc)}")
            ) from None
        if refused:
            # Delivered to the others; resending to everyone would duplicate their mail.
            log.warning("alert email refused for some recipients", refused=sorted(refused))

    def compose(self, alert: Alert) -> EmailMessage:
        """The email for ``alert``: subject ``[churn][<severity>] <title>``, details in the body."""
        settings = self._settings
        message = EmailMessage()
        message["Subject"] = _one_line(f"[churn][{alert.severity}] {alert.title}")
        message["From"] = settings.sender
        message["To"] = ", ".join(settings.recipients)
        message["Date"] = formatdate(localtime=False)
        # make_msgid() would otherwise resolve this host's FQDN, which can hang on DNS.
        message["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or "churn")
        message.set_content(_email_body(alert))
        return message

    def _deliver(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        settings = self._settings
        with self._connect() as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.username is not None and settings.password is not None:
                smtp.login(settings.username, settings.password.get_secret_value())
            return smtp.send_message(message)

    def _connect(self) -> smtplib.SMTP:
        settings = self._settings
        if settings.use_ssl:
            return smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                timeout=settings.timeout_s,
                context=ssl.create_default_context(),
            )
        return smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)

    def _redact(self, text: str) -> str:
        password = self._settings.password
        return _redact(text, password.get_secret_value() if password else "")


class SlackChannel:
    """Posts each alert to a Slack incoming webhook, retrying once on 429 and 5xx."""

    name = "slack"

    def __init__(self, settings: SlackSettings, client: httpx.Client | None = None) -> None:
        self._settings = settings
        self._owns_client = client is None
        self._client = client or httpx.Client()

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
        """Close the HTTP client if this channel created it."""
        if self._owns_client:
            self._client.close()

    def send(self, alert: Alert) -> None:
        """Post ``alert``; one retry after a 429, a 5xx or a failed connection."""
        payload = slack_payload(alert, self._settings.channel)
        try:
            self._post(payload)
        except _RetryableError as first:
            time.sleep(self._retry_wait(first.retry_after))
            try:
                self._post(payload)
            except _RetryableError as second:
                raise AlertDeliveryError(
                    self._redact(f"slack webhook failed after 2 attempts: {second}")
                ) from None

    def _post(self, payload: dict[str, Any]) -> None:
        try:
            response = self._client.post(
                self._settings.webhook_url.get_secret_value(),
                json=payload,
                timeout=self._settings.timeout_s,
                # A webhook never redirects; following one would hand the alert to another host.
                follow_redirects=False,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # The request never left: asking again cannot post the alert twice.
            raise _RetryableError(_describe(exc)) from None
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(
                self._redact(f"slack webhook failed: {_describe(exc)}")
            ) from None
        self._check_response(response)

    def _check_response(self, response: httpx.Response) -> None:
        status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
        if response.status_code == 429 or response.status_code >= 500:
            raise _RetryableError(status, _parse_retry_after(response.headers.get("Retry-After")))
        if not response.is_success:
            # Slack names the problem in the body (invalid_payload, no_service, ...).
            reason = _one_line(response.text)[:200]
            raise AlertDeliveryError(
                self._redact(f"slack webhook failed: {status}: {reason}".rstrip(": "))
            )

    def _retry_wait(self, retry_after: float | None) -> float:
        wait = self._settings.retry_wait_s if retry_after is None else retry_after
        return min(wait, self._settings.max_retry_wait_s)

    def _redact(self, text: str) -> str:
        url = self._settings.webhook_url.get_secret_value()
        # The path alone (the token part) is as secret as the whole URL.
        return _redact(_redact(text, url), urlsplit(url).path.strip("/"))


def build_channels(
    settings: AlertSettings, client: httpx.Client | None = None
) -> list[EmailChannel | SlackChannel]:
    """The channels configured in ``settings`` (email first, then Slack)."""
    channels: list[EmailChannel | SlackChannel] = []
    if settings.smtp is not None:
        channels.append(EmailChannel(settings.smtp))
    if settings.slack is not None:
        channels.append(SlackChannel(settings.slack, client))
    return channels


def slack_payload(alert: Alert, channel: str | None = None) -> dict[str, Any]:
    """Slack incoming-webhook JSON: fallback ``text`` plus header, summary and detail fields."""
    headline = _one_line(f"[churn][{alert.severity}] {alert.title}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:_SLACK_HEADER_MAX]}},
    ]
    if alert.summary:
        blocks.append(_mrkdwn_section(alert.summary))
    blocks.extend(_detail_sections(alert))
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"{alert.kind} · fingerprint {alert.fingerprint} · "
                    f"{alert.created_at.isoformat(timespec='seconds')}",
                }
            ],
        }
    )
    payload: dict[str, Any] = {
        "text": _escape_mrkdwn(f"{headline}: {alert.summary}")[:_SLACK_TEXT_MAX],
        "blocks": blocks,
    }
    if channel:
        payload["channel"] = channel
    return payload


def _mrkdwn_section(text: str) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _escape_mrkdwn(text)[:_SLACK_TEXT_MAX]},
    }


def _detail_sections(alert: Alert) -> list[dict[str, Any]]:
    fields = [
        {
            "type": "mrkdwn",
            "text": _escape_mrkdwn(f"*{key}*\n{_format_value(value)}")[:_SLACK_FIELD_MAX],
        }
        for key, value in alert.details.items()
    ]
    # Slack rejects a section with more than ten fields.
    return [
        {"type": "section", "fields": fields[start : start + _SLACK_FIELDS_PER_SECTION]}
        for start in range(0, len(fields), _SLACK_FIELDS_PER_SECTION)
    ]


def _email_body(alert: Alert) -> str:
    lines = [alert.summary, "", "Details:"]
    width = max((len(key) for key in alert.details), default=0)
    lines += [f"  {key:<{width}}  {_format_value(value)}" for key, value in alert.details.items()]
    lines += [
        "",
        f"kind:        {alert.kind}",
        f"severity:    {alert.severity}",
        f"fingerprint: {alert.fingerprint}",
        f"created at:  {alert.created_at.isoformat(timespec='seconds')}",
    ]
    return "\n".join(lines) + "\n"


# -- cooldown state --------------------------------------------------------------------------


class CooldownStore(Protocol):
    """When each alert fingerprint was last sent."""

    def last_sent(self, fingerprint: str) -> float | None:
        """Epoch seconds of the last send of ``fingerprint``, or None if never sent."""
        ...

    def record(self, fingerprint: str, at: float) -> None:
        """Remember that ``fingerprint`` was sent at epoch seconds ``at``."""
        ...


class MemoryCooldownStore:
    """Cooldown state in this process only (tests, one-shot runs)."""

    def __init__(self) -> None:
        self._sent: dict[str, float] = {}

    def last_sent(self, fingerprint: str) -> float | None:
        """Epoch seconds of the last send of ``fingerprint``, or None if never sent."""
        return self._sent.get(fingerprint)

    def record(self, fingerprint: str, at: float) -> None:
        """Remember that ``fingerprint`` was sent at ``at``."""
        self._sent[fingerprint] = at


class FileCooldownStore:
    """Cooldown state in one JSON file, so scheduled runs in separate processes share it.

    Concurrent writers can lose each other's entries; the worst outcome is one repeated alert.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)

    def last_sent(self, fingerprint: str) -> float | None:
        """Epoch seconds of the last send of ``fingerprint``, or None if never sent."""
        return self._load().get(fingerprint)

    def record(self, fingerprint: str, at: float) -> None:
        """Remember that ``fingerprint`` was sent at ``at`` (rewrites the file atomically)."""
        state = self._load()
        state[fingerprint] = at
        _write_atomically(self._path, json.dumps(state, indent=2, sort_keys=True))

    def _load(self) -> dict[str, float]:
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # A damaged file must not silence alerting: repeat alerts rather than drop them.
            log.warning(
                "cooldown state unreadable, starting empty",
                path=str(self._path),
                error=_describe(exc),
            )
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: float(v) for k, v in raw.items() if isinstance(v, int | float)}


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` whole, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


# -- dispatch --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """An alert that reached at least one channel."""

    alert: Alert
    channels: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryFailure:
    """One channel that failed to deliver one alert."""

    alert: Alert
    channel: str
    error: str


@dataclass(frozen=True)
class DispatchResult:
    """What one :meth:`AlertDispatcher.dispatch` call did with each alert.

    An alert delivered by one channel but not another appears in both ``sent`` and ``failed``.
    """

    sent: list[Delivery] = field(default_factory=list)
    suppressed: list[Alert] = field(default_factory=list)
    failed: list[DeliveryFailure] = field(default_factory=list)


class AlertDispatcher:
    """Sends alerts to every channel, skipping problems already sent within the cooldown."""

    def __init__(
        self,
        settings: AlertSettings,
        channels: Sequence[Channel],
        state: CooldownStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not channels:
            raise ValueError("no alert channels: configure alerts.smtp and/or alerts.slack")
        self._settings = settings
        self._channels = list(channels)
        self._state = state
        self._clock = clock

    def dispatch(self, alerts: Iterable[Alert]) -> DispatchResult:
        """Send each alert not in cooldown to every channel; record cooldown on delivery."""
        result = DispatchResult()
        unique, duplicates = _deduplicate(alerts)
        result.suppressed.extend(duplicates)
        for alert in unique:
            if self._in_cooldown(alert.fingerprint):
                result.suppressed.append(alert)
                log.info(
                    "alert suppressed by cooldown", title=alert.title, fingerprint=alert.fingerprint
                )
                continue
            self._send(alert, result)
        return result

    def _send(self, alert: Alert, result: DispatchResult) -> None:
        delivered: list[str] = []
        for channel in self._channels:
            error = _try_send(channel, alert)
            if error is None:
                delivered.append(channel.name)
            else:
                result.failed.append(DeliveryFailure(alert, channel.name, error))
                log.warning(
                    "alert delivery failed", title=alert.title, channel=channel.name, error=error
                )
        if delivered:
            result.sent.append(Delivery(alert, tuple(delivered)))
            log.info(
                "alert sent", title=alert.title, fingerprint=alert.fingerprint, channels=delivered
            )
            self._record(alert.fingerprint)

    def _in_cooldown(self, fingerprint: str) -> bool:
        try:
            last = self._state.last_sent(fingerprint)
        except Exception as exc:
            # Failing open: while the state store is down, a repeated alert beats a lost one.
            log.warning("cooldown lookup failed, sending anyway", error=_describe(exc))
            return False
        return last is not None and self._clock() - last < self._settings.cooldown_s

    def _record(self, fingerprint: str) -> None:
        try:
            self._state.record(fingerprint, self._clock())
        except Exception as exc:
            # The alert went out; a lost record only means it may be repeated next run.
            log.warning("cooldown record failed", fingerprint=fingerprint, error=_describe(exc))


def _deduplicate(alerts: Iterable[Alert]) -> tuple[list[Alert], list[Alert]]:
    """Keep one alert per fingerprint (the first critical one, else the first), in order."""
    kept: dict[str, Alert] = {}
    dropped: list[Alert] = []
    for alert in alerts:
        current = kept.get(alert.fingerprint)
        if current is None:
            kept[alert.fingerprint] = alert
        elif alert.severity == "critical" and current.severity != "critical":
            kept[alert.fingerprint] = alert
            dropped.append(current)
        else:
            dropped.append(alert)
    return list(kept.values()), dropped


def _try_send(channel: Channel, alert: Alert) -> str | None:
    """Send through one channel; the one-line error, or None on success."""
    try:
        channel.send(alert)
    except AlertDeliveryError as exc:
        return _one_line(str(exc))
    except Exception as exc:
        # Any other channel's text is unvetted and may carry a secret: report the type only.
        return f"{channel.name} failed: unexpected {type(exc).__name__}"
    return None


# -- helpers ---------------------------------------------------------------------------------


class _RetryableError(Exception):
    """A failure worth one more attempt; ``retry_after`` is the server's requested wait."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a delta-seconds ``Retry-After`` header (what Slack sends), or None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _format_value(value: DetailValue) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _escape_mrkdwn(text: str) -> str:
    # Slack reads <...> as links and mentions; these three are its only escapes.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, _REDACTED) if secret else text


def _describe(exc: BaseException) -> str:
    message = _one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def dispatch_configured(
    alerts: Sequence[Alert],
    config: AlertSettings,
    state_path: Path,
    dispatcher: AlertDispatcher | None = None,
) -> DispatchResult | None:
    """Send ``alerts`` through ``dispatcher`` or the configured channels (None: nothing sent).

    The cooldown state lives in ``state_path``, so it holds across job runs. No channel
    configured only warns: a job's findings are stored and exported either way.
    """
    if not alerts:
        return None
    if dispatcher is not None:
        return dispatcher.dispatch(alerts)
    channels = build_channels(config)
    if not channels:
        log.warning(
            "alerts_not_sent",
            reason="no alert channel configured (monitoring.alerts.smtp / slack)",
            titles=[alert.title for alert in alerts],
        )
        return None
    try:
        return AlertDispatcher(config, channels, FileCooldownStore(state_path)).dispatch(alerts)
    finally:
        for channel in channels:
            close = getattr(channel, "close", None)
            if close is not None:
                close()


def undelivered(result: DispatchResult | None) -> list[str]:
    """One line per alert that no channel delivered (a suppressed one was sent before)."""
    if result is None:
        return []
    sent = {delivery.alert.fingerprint for delivery in result.sent}
    errors: dict[str, list[str]] = {}
    for failure in result.failed:
        if failure.alert.fingerprint not in sent:
            errors.setdefault(failure.alert.title, []).append(failure.error)
    return [f"alert {title!r} not delivered: {'; '.join(r)}" for title, r in errors.items()]
