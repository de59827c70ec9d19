"""The Alertmanager configuration generator: valid for amtool, routed by severity, secret-free,
in step with rules.yml, and its notification templates render the alert's name and summary.

amtool comes from the Debian package ``prometheus-alertmanager``, which ``make services``
installs; without it these tests fail rather than skip, so an unchecked config cannot pass.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from churn_core.settings import AlertSettings, SlackSettings, SmtpSettings
from monitoring import alertmanager_config as amc

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / amc.EXAMPLE_OUT
RULES = REPO_ROOT / "monitoring" / "prometheus" / "rules.yml"
PASSWORD = "hunter2-smtp"
WEBHOOK = "https://hooks.slack.com/services/T0/B0/secret-token"


def _amtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail(
            "amtool is not on PATH: run `make services` (as root it installs the Debian package "
            "prometheus-alertmanager), or apt-get install -y prometheus-alertmanager",
            pytrace=False,
        )
    return subprocess.run(
        [amtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"amtool exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def smtp(**updates: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "smtp.internal",
        "port": 587,
        "starttls": True,
        "username": "churn",
        "password": SecretStr(PASSWORD),
        "sender": "churn@example.com",
        "recipients": ["oncall@example.com", "ml@example.com"],
    }
    return SmtpSettings(**(values | updates))


def settings(**updates: Any) -> AlertSettings:
    values: dict[str, Any] = {
        "smtp": smtp(),
        "slack": SlackSettings(webhook_url=SecretStr(WEBHOOK)),
    }
    return AlertSettings(**(values | updates))


def write_config(folder: Path, alert_settings: AlertSettings, **kwargs: Any) -> Path:
    config = amc.render_config(alert_settings, folder / "secrets", **kwargs)
    path = folder / "alertmanager.yml"
    path.write_text(amc.dump_config(config))
    return path


# -- the committed reference file ------------------------------------------------------------


def test_committed_config_passes_amtool() -> None:
    # From its folder: the template path in it is relative to the file.
    _ok(_amtool("check-config", COMMITTED.name, cwd=COMMITTED.parent))


def test_committed_config_is_up_to_date() -> None:
    expected = amc.dump_config(amc.example_config(), amc.example_header())
    assert COMMITTED.read_text() == expected, f"stale; regenerate: {amc.REGENERATE_COMMAND}"


# -- rendered configurations -----------------------------------------------------------------


@pytest.mark.parametrize(
    "alert_settings",
    [
        settings(),
        settings(slack=None),
        settings(smtp=None, slack=SlackSettings(webhook_url=SecretStr(WEBHOOK), channel="#churn")),
        settings(smtp=smtp(username=None, password=None, starttls=False, port=25)),
        settings(smtp=smtp(starttls=False, use_ssl=True, port=465)),
    ],
    ids=["both", "email-only", "slack-only", "no-auth", "smtps"],
)
def test_rendered_configs_pass_amtool(alert_settings: AlertSettings, tmp_path: Path) -> None:
    output = _ok(_amtool("check-config", str(write_config(tmp_path, alert_settings))))
    # warning, critical, and the silent one for alerts the monitoring jobs send themselves
    assert "3 receivers" in output and "1 inhibit rules" in output


def test_secrets_are_named_by_file_never_written_into_the_yaml(tmp_path: Path) -> None:
    text = write_config(tmp_path, settings()).read_text()
    assert PASSWORD not in text
    assert "secret-token" not in text and "hooks.slack.com" not in text
    receivers = yaml.safe_load(text)["receivers"]
    assert receivers[-1] == {"name": amc.SENT_BY_JOBS_RECEIVER}
    for receiver in receivers[:-1]:
        [email] = receiver["email_configs"]
        [slack] = receiver["slack_configs"]
        assert email["auth_password_file"] == str(tmp_path / "secrets" / amc.SMTP_PASSWORD_FILE)
        assert slack["api_url_file"] == str(tmp_path / "secrets" / amc.SLACK_WEBHOOK_FILE)


def test_channels_follow_the_settings(tmp_path: Path) -> None:
    config = yaml.safe_load(write_config(tmp_path, settings()).read_text())
    email = config["receivers"][0]["email_configs"][0]
    assert email["to"] == "oncall@example.com, ml@example.com"
    assert email["from"] == "churn@example.com"
    assert email["smarthost"] == "smtp.internal:587"
    assert email["require_tls"] is True
    assert email["auth_username"] == "churn"
    assert email["send_resolved"] is True
    assert config["receivers"][0]["slack_configs"][0]["send_resolved"] is True
    assert "channel" not in config["receivers"][0]["slack_configs"][0]


def test_secret_files_hold_exact_values_owner_only(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o755)
    stale = secrets / amc.SMTP_PASSWORD_FILE
    stale.write_text("old password, world readable")
    stale.chmod(0o644)

    written = amc.write_secret_files(settings(), secrets)

    assert sorted(p.name for p in written) == [amc.SLACK_WEBHOOK_FILE, amc.SMTP_PASSWORD_FILE]
    assert (secrets / amc.SMTP_PASSWORD_FILE).read_text() == PASSWORD
    assert (secrets / amc.SLACK_WEBHOOK_FILE).read_text() == WEBHOOK
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_password_file_without_smtp_auth(tmp_path: Path) -> None:
    alert_settings = settings(smtp=smtp(username=None, password=None))
    written = amc.write_secret_files(alert_settings, tmp_path / "s")
    assert [p.name for p in written] == [amc.SLACK_WEBHOOK_FILE]
    [email] = amc.render_config(alert_settings, tmp_path / "s")["receivers"][0]["email_configs"]
    assert "auth_username" not in email and "auth_password_file" not in email


@pytest.mark.parametrize(
    ("alert_settings", "secrets_dir", "message"),
    [
        (settings(smtp=None, slack=None), Path("/s"), "no alert channels"),
        (settings(smtp=smtp(starttls=False, use_ssl=True)), Path("/s"), "only on port 465"),
        (settings(), Path("relative/secrets"), "absolute"),
    ],
    ids=["no-channels", "ssl-not-465", "relative-secrets"],
)
def test_unusable_settings_are_refused(
    alert_settings: AlertSettings, secrets_dir: Path, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        amc.render_config(alert_settings, secrets_dir)


# -- routing, timing, inhibition -------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=ChurnApiErrorRateCritical", "severity=critical"], amc.CRITICAL_RECEIVER),
        (["alertname=ChurnApiErrorRateHigh", "severity=warning"], amc.WARNING_RECEIVER),
        (["alertname=SomethingUnlabelled"], amc.WARNING_RECEIVER),
        # The jobs mail these themselves, with the details; not a second time from here.
        (["alertname=ChurnModelAccuracyDrop", "severity=critical"], amc.SENT_BY_JOBS_RECEIVER),
        (["alertname=ChurnFeatureDrift", "severity=warning"], amc.SENT_BY_JOBS_RECEIVER),
    ],
    ids=["critical", "warning", "no-severity", "accuracy-by-job", "drift-by-job"],
)
def test_routes_by_severity(labels: list[str], receiver: str, tmp_path: Path) -> None:
    path = write_config(tmp_path, settings())
    output = _ok(_amtool("config", "routes", "test", f"--config.file={path}", *labels))
    assert output.strip() == receiver


def test_repeat_interval_is_the_cooldown() -> None:
    def route(alert_settings: AlertSettings, timing: amc.Timing | None = None) -> dict[str, Any]:
        return dict(amc.render_config(alert_settings, Path("/s"), timing=timing)["route"])

    default = route(settings())
    assert (default["group_wait"], default["group_interval"]) == ("30s", "5m")
    assert default["repeat_interval"] == "1h"  # AlertSettings.cooldown_s default: 3600
    assert default["routes"][1]["group_wait"] == "10s"  # critical
    assert route(settings(cooldown_s=5400))["repeat_interval"] == "1h30m"
    # Below one group interval Alertmanager could not honour it (and 0 is invalid there).
    assert route(settings(cooldown_s=0))["repeat_interval"] == "5m"
    fast = amc.Timing(repeat_interval_s=90, group_interval_s=1)
    assert route(settings(), fast)["repeat_interval"] == "1m30s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "1s"), (0.2, "1s"), (1.5, "2s"), (59, "59s"), (3600, "1h"), (3725, "1h2m5s")],
)
def test_duration(seconds: float, text: str) -> None:
    assert amc.duration(seconds) == text


def _alert_rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in document["groups"] for r in g["rules"] if "alert" in r}


def test_inhibitions_name_real_rules_of_matching_severity_and_labels() -> None:
    rules = _alert_rules()
    for source, target, equal in amc.INHIBITIONS:
        assert rules[source]["labels"]["severity"] == "critical", source
        assert rules[target]["labels"]["severity"] == "warning", target
        for label in equal:
            # The label must exist on both alerts, or "equal" matches every pair lacking it.
            for name in (source, target):
                assert f"by ({label})" in rules[name]["expr"], f"{name} has no {label} label"


def test_every_rule_severity_has_a_route() -> None:
    severities = {rule["labels"]["severity"] for rule in _alert_rules().values()}
    assert severities <= set(amc.SEVERITIES)


# -- notification templates ------------------------------------------------------------------


def _alert(status: str, summary: str, **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "ChurnApiErrorRateHigh", "severity": "warning", **labels},
        "annotations": {"summary": summary, "description": "Check the <replica> logs & /readyz."},
        "startsAt": "2026-11-27T10:00:00Z",
        "endsAt": "2026-11-27T10:20:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "0",
    }


def render(template: str, alerts: list[dict[str, Any]], tmp_path: Path) -> str:
    """``template`` rendered by amtool for a group of ``alerts`` (as Alertmanager would)."""
    common = {"alertname": "ChurnApiErrorRateHigh", "severity": "warning"}
    data = {
        "receiver": amc.WARNING_RECEIVER,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": alerts,
        "groupLabels": common,
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    return _ok(
        _amtool(
            "template",
            "render",
            f"--template.glob={amc.TEMPLATE_FILE}",
            f"--template.data={tmp_path / 'data.json'}",
            f'--template.text={{{{ template "{template}" . }}}}',
        )
    )


def test_title_names_severity_alert_and_summary(tmp_path: Path) -> None:
    one = [_alert("firing", "5xx rate on /v1/predict is 9.091%", route="/v1/predict")]
    assert render("churn.title", one, tmp_path) == (
        "[churn][warning] ChurnApiErrorRateHigh: 5xx rate on /v1/predict is 9.091%"
    )
    resolved = [_alert("resolved", "5xx rate on /v1/predict is 9.091%", route="/v1/predict")]
    assert render("churn.title", resolved, tmp_path).startswith(
        "[churn][warning] RESOLVED ChurnApiErrorRateHigh: 5xx rate"
    )
    two = [_alert("firing", "a", route="/v1/predict"), _alert("resolved", "b", route="/v1/x")]
    assert render("churn.title", two, tmp_path) == (
        "[churn][warning] ChurnApiErrorRateHigh (1 firing, 1 resolved)"
    )


def test_email_text_lists_summary_description_and_labels(tmp_path: Path) -> None:
    alerts = [
        _alert("firing", "5xx rate on /v1/predict is 9.091%", route="/v1/predict"),
        _alert("resolved", "5xx rate on /v1/batch_predict is 6%", route="/v1/batch_predict"),
    ]
    text = render("churn.email.text", alerts, tmp_path)
    firing, resolved = text.split("Resolved (1):")
    assert "Firing (1):" in firing and "5xx rate on /v1/predict is 9.091%" in firing
    assert "Check the <replica> logs & /readyz." in firing  # plain text: no escaping
    assert "alertname=ChurnApiErrorRateHigh, route=/v1/predict, severity=warning" in firing
    assert "Started: 2026-11-27 10:00:00 UTC" in firing
    assert "5xx rate on /v1/batch_predict is 6%" in resolved
    assert "resolved: 2026-11-27 10:20:00 UTC" in resolved
    assert "Alertmanager: http://alertmanager:9093" in text


def test_slack_text_escapes_markup_and_colour_follows_status(tmp_path: Path) -> None:
    alerts = [_alert("firing", "p99 > 50 ms", route="/v1/predict")]
    text = render("churn.slack.text", alerts, tmp_path)
    assert "*p99 &gt; 50 ms*" in text
    assert "Check the &lt;replica&gt; logs &amp; /readyz." in text
    assert "`alertname=ChurnApiErrorRateHigh, route=/v1/predict, severity=warning`" in text
    assert render("churn.slack.color", alerts, tmp_path) == "warning"
    resolved = [_alert("resolved", "p99 > 50 ms", route="/v1/predict")]
    assert render("churn.slack.color", resolved, tmp_path) == "good"
    assert "*[resolved] p99 &gt; 50 ms*" in render("churn.slack.text", resolved, tmp_path)


# -- command line ----------------------------------------------------------------------------


def test_cli_renders_an_environment_with_its_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    alerts = {
        "cooldown_s": 1800,
        "smtp": {
            "host": "127.0.0.1",
            "username": "churn",
            "password": PASSWORD,
            "sender": "churn@example.com",
            "recipients": ["oncall@example.com"],
        },
        "slack": {"webhook_url": WEBHOOK},
    }
    (configs / "base.yaml").write_text(yaml.safe_dump({"monitoring": {"alerts": alerts}}))
    (configs / "staging.yaml").write_text("{}\n")
    monkeypatch.setenv("CHURN_CONFIG_DIR", str(configs))
    out = tmp_path / "out" / "alertmanager.yml"
    secrets = tmp_path / "secrets"

    amc.main(
        ["--env", "staging", "--out", str(out), "--secrets-dir", str(secrets), "--write-secrets"]
    )

    assert PASSWORD not in out.read_text()
    assert (secrets / amc.SMTP_PASSWORD_FILE).read_text() == PASSWORD
    assert yaml.safe_load(out.read_text())["route"]["repeat_interval"] == "30m"
    _ok(_amtool("check-config", out.name, cwd=out.parent))  # the relative template path holds


def test_cli_refuses_settings_without_channels_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "base.yaml").write_text("{}\n")
    (tmp_path / "bare.yaml").write_text("{}\n")
    monkeypatch.setenv("CHURN_CONFIG_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        amc.main(["--env", "bare", "--out", str(tmp_path / "am.yml")])
    assert str(info.value) == (
        "alertmanager config: no alert channels: configure monitoring.alerts.smtp and/or .slack"
    )
    assert not (tmp_path / "am.yml").exists()
