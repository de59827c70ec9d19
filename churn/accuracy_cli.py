"""``churn accuracy``: logged predictions against the churn observed since, per model version.

Registered by ``churn/cli.py``; heavy modules are imported inside the command so
``churn --help`` stays instant. Exit code 0 when the job ran, whatever it found (a drop is a
finding, sent as an alert); 1 with one line when it could not run or a result store failed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from churn_core.settings import MonitoringSettings
    from monitoring.accuracy import AccuracyRow, AccuracyRun, VersionCheck


class PeriodOption(StrEnum):
    """How ``as_of`` is grouped."""

    week = "week"
    month = "month"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _row_cells(row: AccuracyRow) -> list[str]:
    return [
        f"v{row.model_version}",
        row.period,
        str(row.labelled),
        str(row.positives),
        str(row.pending),
        str(row.excluded + row.unknown),
        _number(row.roc_auc),
        _number(row.pr_auc),
        _number(row.brier),
        _number(row.ece),
    ]


def accuracy_table(run: AccuracyRun) -> Table:
    """One line per version and period, then the version's line over all periods (bold).

    Compact (no rules between columns, one space apart, no padding) so it fits 80 columns, the width
    rich assumes when the output goes to a log file.
    """
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"accuracy of {run.model_name} by {run.period_unit} of as_of",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=0,
    )
    headers = ["version", "period", "labelled", "churned", "pending", "excluded"]
    headers += ["ROC-AUC", "PR-AUC", "Brier", "ECE"]
    for header in headers:
        table.add_column(header, justify="left" if header in ("version", "period") else "right")
    for row in run.rows:
        overall = row.period == "all"
        table.add_row(*_row_cells(row), style="bold" if overall else None, end_section=overall)
    return table


def verdict_line(check: VersionCheck) -> str:
    """One line per version: its overall ROC-AUC against its registration ROC-AUC, and verdict."""
    colour = {"ok": "green", "drop": "red"}.get(check.verdict, "yellow")
    expected = "-" if check.expected is None else f"{check.expected:.3f}"
    return (
        f"v{check.model_version}: ROC-AUC {_number(check.measured)} (registered {expected}) "
        f"on {check.labelled} labelled, {check.positives} churned, {check.pending} pending: "
        f"[{colour}]{check.verdict}[/{colour}]"
    )


def _alert_counts(run: AccuracyRun) -> dict[str, int]:
    dispatch = run.dispatch
    return {
        "alerts": len(run.alerts),
        "sent": len(dispatch.sent) if dispatch else 0,
        "suppressed": len(dispatch.suppressed) if dispatch else 0,
        "failed": len(dispatch.failed) if dispatch else 0,
    }


def accuracy_command(
    period: Annotated[
        PeriodOption | None, typer.Option(help="Group as_of by week or month (default: settings).")
    ] = None,
    lookback_days: Annotated[
        int | None,
        typer.Option(min=1, help="Read only predictions logged in the last N days."),
    ] = None,
    now: Annotated[
        datetime | None,
        typer.Option(help="Run as if at this time (UTC), e.g. to rebuild a past run."),
    ] = None,
) -> None:
    """Join logged predictions to observed churn; ROC-AUC and calibration per model version."""
    from churn import cli
    from churn_core.registry import open_registry
    from churn_core.tables import Tables
    from monitoring.accuracy import AccuracyError, run_accuracy

    s = cli.settings()
    s = s.model_copy(update={"monitoring": _overridden(s.monitoring, period, lookback_days)})
    started = time.perf_counter()
    with (
        cli.console.status("accuracy: prediction log + labels"),
        open_registry(s.registry, s.resolve, encryption=s.encryption) as registry,
    ):
        run = run_accuracy(s, registry, Tables(s.dataset_lake), now=_utc(now))
    if run.rows:
        cli.console.print(accuracy_table(run))
        for check in run.checks:
            cli.console.print(verdict_line(check), highlight=False)
    else:
        cli.console.print(f"no predictions of {run.model_name} in the prediction log yet")
    for alert in run.alerts:
        cli.console.print(f"[red]alert[/red] {alert.summary}", highlight=False)
    cli._done(
        "accuracy",
        time.perf_counter() - started,
        versions=len(run.checks),
        logged=run.logged,
        anonymous=run.anonymous,
        predictions=run.total("predictions"),
        labelled=run.total("labelled"),
        pending=run.total("pending"),
        excluded=run.total("excluded"),
        unknown=run.total("unknown"),
        **_alert_counts(run),
        mongo=run.mongo,
        **{f"{phase}_s": f"{seconds:.2f}" for phase, seconds in run.timings.items()},
    )
    if run.sink_errors:
        raise AccuracyError("; ".join(run.sink_errors))


def _utc(moment: datetime | None) -> datetime | None:
    """A naive command-line time read as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _overridden(
    monitoring: MonitoringSettings, period: PeriodOption | None, lookback_days: int | None
) -> MonitoringSettings:
    """``monitoring`` with the command-line options applied."""
    updates: dict[str, Any] = {}
    if period is not None:
        updates["accuracy_period"] = period.value
    if lookback_days is not None:
        updates["accuracy_lookback_days"] = lookback_days
    return monitoring.model_copy(update=updates) if updates else monitoring
