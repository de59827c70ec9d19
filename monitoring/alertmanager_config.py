"""Alertmanager configuration rendered from the same ``AlertSettings`` the batch jobs use.

Drift and accuracy alerts of the batch jobs go out through :mod:`monitoring.alerts`; the
Prometheus alerts of ``monitoring/prometheus/rules.yml`` (error rate, latency, ...) go through
Alertmanager, which groups, de-duplicates, repeats and inhibits them. Both reach the same SMTP
server, recipients and Slack webhook because both are configured by ``monitoring.alerts``, and
Alertmanager's ``repeat_interval`` is the jobs' ``cooldown_s``.

Secrets never enter the YAML: it names files (``auth_password_file``, ``api_url_file``) under a
secrets folder, which :func:`write_secret_files` fills from the settings (or a Kubernetes Secret
mounted there provides). The YAML can then live in a ConfigMap or in git.

Write the configuration of an environment (and its secret files)::

    python -m monitoring.alertmanager_config --env local --out var/alertmanager/alertmanager.yml \\
        --secrets-dir var/alertmanager/secrets --write-secrets

Regenerate the committed reference file after changing this module::

    python -m monitoring.alertmanager_config --example --out monitoring/alertmanager/alertmanager.yml
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from churn_core.settings import AlertSettings, SlackSettings, SmtpSettings, load_settings

TEMPLATES_DIR = Path(__file__).resolve().parent / "alertmanager" / "templates"
TEMPLATE_FILE = TEMPLATES_DIR / "churn.tmpl"
EXAMPLE_OUT = Path("monitoring/alertmanager/alertmanager.yml")
EXAMPLE_SECRETS_DIR = Path("/etc/alertmanager/secrets")
REGENERATE_COMMAND = "python -m monitoring.alertmanager_config --example --out monitoring/alertmanager/alertmanager.yml"

# File names under the secrets folder (also the keys of a Kubernetes Secret mounted there).
SMTP_PASSWORD_FILE = "smtp_password"  # noqa: S105 (a file name, not a password)
SLACK_WEBHOOK_FILE = "slack_webhook_url"

WARNING_RECEIVER = "churn-warning"
CRITICAL_RECEIVER = "churn-critical"
# The drift and accuracy jobs send their own alerts, naming the feature, statistic and values
# (monitoring/alerts.py); Alertmanager sending the rules' copies too would mail every finding
# twice. Their rules still fire, for the Prometheus and Grafana views.
SENT_BY_JOBS_RECEIVER = "sent-by-monitoring-jobs"
SENT_BY_JOBS_ALERTS = ("ChurnFeatureDrift", "ChurnModelAccuracyDrop")

# Severity labels of rules.yml. An alert with none is routed as a warning: delivered, not lost.
SEVERITIES = ("warning", "critical")

# (source alert, target alert, labels that must be equal): the source firing silences the
# target. Named alerts, not bare severities: Alertmanager treats a label missing on both sides
# as equal, so `severity=critical -> severity=warning, equal: [route]` would let the critical
# accuracy alert (no route label) silence every route-less warning, drift included.
INHIBITIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ChurnApiErrorRateCritical", "ChurnApiErrorRateHigh", ("route",)),
)

# One notification per alert name and route (API alerts) or job (ChurnJobNotSucceeding: each
# batch job is its own problem): an outage on one route is one message, the features of one
# drift run are one message, and a new route or job failing is news of its own. A label an
# alert lacks groups as empty, so e.g. the Redis alert of every replica is one message.
GROUP_BY = ("alertname", "route", "job")

# Alertmanager's own port 465 rule: it speaks implicit TLS (SMTPS) on that port only.
_SMTPS_PORT = 465


@dataclass(frozen=True)
class Timing:
    """How long Alertmanager waits before, between and after notifications of one group.

    ``group_wait_s``: a new group waits this long before its first notification, so alerts
    that start together (one outage, one drift run) arrive as one message. The rules already
    held each alert ``for:`` minutes, so 30 s adds little delay.

    ``critical_group_wait_s``: the same for critical alerts, shorter because the rule's
    ``for:`` has already filtered out blips and someone should act now.

    ``group_interval_s``: after a group notified, changes to it (a new alert joins, one
    resolves) wait this long, so a flapping group sends at most one update per interval.
    Resolved notices therefore arrive up to this long after the problem ended.

    ``repeat_interval_s``: the cooldown. A group still firing with the same alerts is sent
    again only after this long; Alertmanager's notification log de-duplicates everything in
    between, however often Prometheus re-sends the alert. ``None`` takes the jobs' cooldown
    (``AlertSettings.cooldown_s``) so both paths repeat at the same pace. Alertmanager checks
    for repeats on group-interval ticks, so it is raised to at least ``group_interval_s``.
    """

    group_wait_s: float = 30.0
    critical_group_wait_s: float = 10.0
    group_interval_s: float = 300.0
    repeat_interval_s: float | None = None

    def repeat_s(self, settings: AlertSettings) -> float:
        """The repeat interval for ``settings``: the cooldown, at least one group interval."""
        cooldown = settings.cooldown_s if self.repeat_interval_s is None else self.repeat_interval_s
        return max(cooldown, self.group_interval_s)


def duration(seconds: float) -> str:
    """An Alertmanager duration such as ``1h30m`` (whole seconds, rounded up, at least 1s)."""
    remaining = max(1, math.ceil(seconds))
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


# -- receivers -------------------------------------------------------------------------------


def _email_config(smtp: SmtpSettings, secrets_dir: Path) -> dict[str, Any]:
    """One email_configs entry: plain text like monitoring/alerts.py's EmailChannel."""
    if smtp.use_ssl and smtp.port != _SMTPS_PORT:
        # Alertmanager has no implicit-TLS switch: it uses SMTPS exactly when the port is 465.
        raise ValueError(
            f"alerts.smtp.use_ssl with port {smtp.port}: Alertmanager speaks implicit TLS only "
            f"on port {_SMTPS_PORT}; use port {_SMTPS_PORT} or starttls"
        )
    config: dict[str, Any] = {
        "to": ", ".join(smtp.recipients),
        "from": smtp.sender,
        "smarthost": f"{smtp.host}:{smtp.port}",
        # STARTTLS when the settings ask for it; with SMTPS the connection is TLS already.
        "require_tls": smtp.starttls,
        "send_resolved": True,
        "headers": {"Subject": '{{ template "churn.title" . }}'},
        "text": '{{ template "churn.email.text" . }}',
        # No HTML part: the default one repeats the labels in a layout of its own.
        "html": "",
    }
    if smtp.username is not None:
        config["auth_username"] = smtp.username
        config["auth_password_file"] = str(secrets_dir / SMTP_PASSWORD_FILE)
    return config


def _slack_config(slack: SlackSettings, secrets_dir: Path) -> dict[str, Any]:
    """One slack_configs entry; the webhook URL (the credential) stays in its file."""
    config: dict[str, Any] = {
        "api_url_file": str(secrets_dir / SLACK_WEBHOOK_FILE),
        "send_resolved": True,
        "title": '{{ template "churn.slack.title" . }}',
        "text": '{{ template "churn.slack.text" . }}',
        "fallback": '{{ template "churn.slack.title" . }}',
        "color": '{{ template "churn.slack.color" . }}',
    }
    if slack.channel:
        config["channel"] = slack.channel
    return config


def _receiver(name: str, settings: AlertSettings, secrets_dir: Path) -> dict[str, Any]:
    receiver: dict[str, Any] = {"name": name}
    if settings.smtp is not None:
        receiver["email_configs"] = [_email_config(settings.smtp, secrets_dir)]
    if settings.slack is not None:
        receiver["slack_configs"] = [_slack_config(settings.slack, secrets_dir)]
    return receiver


# -- route and inhibition --------------------------------------------------------------------


def _route(settings: AlertSettings, timing: Timing) -> dict[str, Any]:
    """Severity routes under a root that also catches alerts without a severity label."""
    return {
        "receiver": WARNING_RECEIVER,
        "group_by": list(GROUP_BY),
        "group_wait": duration(timing.group_wait_s),
        "group_interval": duration(timing.group_interval_s),
        "repeat_interval": duration(timing.repeat_s(settings)),
        "routes": [
            {
                "matchers": [f'alertname=~"{"|".join(SENT_BY_JOBS_ALERTS)}"'],
                "receiver": SENT_BY_JOBS_RECEIVER,
            },
            {
                "matchers": ['severity="critical"'],
                "receiver": CRITICAL_RECEIVER,
                "group_wait": duration(timing.critical_group_wait_s),
            },
            {"matchers": ['severity="warning"'], "receiver": WARNING_RECEIVER},
        ],
    }


def _inhibit_rules() -> list[dict[str, Any]]:
    return [
        {
            "source_matchers": [f'alertname="{source}"'],
            "target_matchers": [f'alertname="{target}"'],
            "equal": list(equal),
        }
        for source, target, equal in INHIBITIONS
    ]


# -- the configuration -----------------------------------------------------------------------


def render_config(
    settings: AlertSettings,
    secrets_dir: Path,
    *,
    templates: Sequence[str] = (str(TEMPLATE_FILE),),
    timing: Timing | None = None,
) -> dict[str, Any]:
    """The Alertmanager configuration for ``settings`` as a mapping.

    ``secrets_dir`` must be absolute: Alertmanager reads the secret files at send time, from
    wherever it was started. ``templates`` are file globs, relative ones resolved by
    Alertmanager against the configuration file's folder.

    Both severities get the same channels, as the jobs' alerts do; they are separate receivers
    so a deployment can point critical ones at a pager without touching the routes.
    """
    if settings.smtp is None and settings.slack is None:
        # A receiver without channels is valid YAML that drops every alert.
        raise ValueError("no alert channels: configure monitoring.alerts.smtp and/or .slack")
    if not secrets_dir.is_absolute():
        raise ValueError(f"secrets_dir must be an absolute path, got {secrets_dir}")
    timing = timing or Timing()
    return {
        "route": _route(settings, timing),
        "inhibit_rules": _inhibit_rules(),
        "receivers": [
            _receiver(WARNING_RECEIVER, settings, secrets_dir),
            _receiver(CRITICAL_RECEIVER, settings, secrets_dir),
            {"name": SENT_BY_JOBS_RECEIVER},
        ],
        "templates": list(templates),
    }


def dump_config(config: dict[str, Any], header: str = "") -> str:
    """YAML text of ``config`` (keys in the order built), after ``header`` comment lines."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100)
    return comment + body


def write_secret_files(settings: AlertSettings, secrets_dir: Path) -> list[Path]:
    """Write the SMTP password and Slack webhook URL into ``secrets_dir``, owner-only.

    Exact values, no trailing newline: Alertmanager uses a password file's content verbatim.
    Returns the files written.
    """
    secrets: dict[str, SecretStr] = {}
    if settings.smtp is not None and settings.smtp.password is not None:
        secrets[SMTP_PASSWORD_FILE] = settings.smtp.password
    if settings.slack is not None:
        secrets[SLACK_WEBHOOK_FILE] = settings.slack.webhook_url
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name, secret in secrets.items():
        path = secrets_dir / name
        # Created 0600 before any byte is written, so the secret is never world-readable.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secret.get_secret_value())
        os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
        written.append(path)
    return written


# -- the committed reference file ------------------------------------------------------------


def example_settings() -> AlertSettings:
    """Placeholder channels of the committed reference configuration."""
    return AlertSettings(
        smtp=SmtpSettings(
            host="smtp.example.com",
            port=587,
            starttls=True,
            username="churn-alerts",
            password=SecretStr("in-the-secret-file"),
            sender="churn-alerts@example.com",
            recipients=["oncall@example.com"],
        ),
        slack=SlackSettings(webhook_url=SecretStr("https://hooks.slack.com/services/T0/B0/X")),
    )


def example_config() -> dict[str, Any]:
    """The committed reference configuration (templates relative to its own folder)."""
    return render_config(
        example_settings(),
        EXAMPLE_SECRETS_DIR,
        templates=[f"templates/{TEMPLATE_FILE.name}"],
    )


def example_header() -> str:
    """The comment block of the committed reference file."""
    timing = Timing()
    return f"""\
Alertmanager configuration of the churn alerts (monitoring/prometheus/rules.yml).
GENERATED from example settings by: {REGENERATE_COMMAND}
For a real environment render it from its settings (monitoring.alerts in configs/):
  python -m monitoring.alertmanager_config --env ENV --out FILE --secrets-dir DIR --write-secrets
Secrets are files under {EXAMPLE_SECRETS_DIR} ({SMTP_PASSWORD_FILE}, {SLACK_WEBHOOK_FILE}).
Check: amtool check-config alertmanager.yml
Run:   prometheus-alertmanager --config.file=alertmanager.yml --cluster.listen-address=

Timing (Timing in monitoring/alertmanager_config.py explains each):
  group_wait {duration(timing.group_wait_s)} ({duration(timing.critical_group_wait_s)} for critical) batches alerts that start together;
  group_interval {duration(timing.group_interval_s)} paces the updates of a group;
  repeat_interval is the cooldown (monitoring.alerts.cooldown_s): a group still firing
  with the same alerts is sent again only after it."""


# -- command line ----------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the Alertmanager configuration from monitoring.alerts settings."
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--env", help="settings environment (default: CHURN_ENV or local)")
    source.add_argument(
        "--example", action="store_true", help="the committed reference file (placeholders)"
    )
    parser.add_argument("--out", type=Path, required=True, help="alertmanager.yml to write")
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=Path("var/alertmanager/secrets"),
        help="folder of the secret files the configuration names",
    )
    parser.add_argument(
        "--write-secrets",
        action="store_true",
        help="also write the SMTP password and Slack webhook URL files there (mode 0600)",
    )
    return parser.parse_args(argv)


def _environment_config(args: argparse.Namespace) -> tuple[AlertSettings, dict[str, Any]]:
    settings = load_settings(args.env).monitoring.alerts
    secrets_dir = args.secrets_dir.resolve()
    # Alertmanager resolves a relative template path against the configuration's folder:
    # relative, the rendered file keeps working when the checkout moves as a whole.
    template = os.path.relpath(TEMPLATE_FILE, args.out.resolve().parent)
    return settings, render_config(settings, secrets_dir, templates=[template])


def main(argv: Sequence[str] | None = None) -> None:
    """Write the configuration (and, on request, the secret files); one line on bad settings."""
    args = _parse_args(argv)
    if args.example and args.write_secrets:
        raise SystemExit("alertmanager config: --example has placeholder secrets only")
    try:
        if args.example:
            settings, text = example_settings(), dump_config(example_config(), example_header())
        else:
            settings, config = _environment_config(args)
            text = dump_config(
                config, "GENERATED from settings by: python -m monitoring.alertmanager_config"
            )
    except ValueError as exc:  # pydantic's ValidationError included
        # Settings inputs are hidden in their errors (hide_input_in_errors), so no secret here.
        raise SystemExit(f"alertmanager config: {' '.join(str(exc).split())}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.write_secrets and not args.example:
        for path in write_secret_files(settings, args.secrets_dir.resolve()):
            print(f"wrote {path}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
