"""``churn drift``: the champion's training sample against a window of the prediction log.

Registered by ``churn/cli.py``; heavy modules are imported inside the command so
``churn --help`` stays instant. Exit codes: 0 when the run completed, drift or not (drift is a
finding, reported in the table, the alerts and the metrics); 1 when it failed (one line);
3 with ``--fail-on-drift`` when any feature drifted.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from monitoring.drift_job import DriftRun

DRIFT_FOUND_EXIT = 3
_STATUS_STYLE = {"ok": "green", "drift": "red", "insufficient_data": "yellow"}
_STATUS_LABEL = {"insufficient_data": "too few rows"}
_SHORT = {"js_distance": "js", "ks_pvalue": "ks", "chi2_pvalue": "chi2"}
_NOW_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def drift_command(
    window_hours: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            metavar="HOURS",
            help="Hours of prediction log to check; default: monitoring.drift_window_hours.",
        ),
    ] = None,
    now: Annotated[
        datetime | None,
        typer.Option(
            formats=_NOW_FORMATS,
            metavar="YYYY-MM-DD[THH:MM[:SS]]",
            help="End of the window, UTC (replays a past window); default: now.",
        ),
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option(help=f"Exit with code {DRIFT_FOUND_EXIT} when anything drifted.")
    ] = False,
) -> None:
    """Compare the champion's training data with recent predictions; store, export, alert."""
    from churn import cli
    from churn_core.registry import open_registry
    from churn_core.tables import Tables
    from monitoring.drift_job import DriftJobError, run_drift

    s = cli.settings()
    with (
        cli.console.status("drift: reference vs prediction log"),
        open_registry(s.registry, s.resolve, encryption=s.encryption) as registry,
    ):
        run = run_drift(s, registry, Tables(s.dataset_lake), now=now, window_hours=window_hours)
    cli.console.print(drift_table(run))
    _summary(run)
    if run.problems:
        raise DriftJobError("; ".join(run.problems))
    if fail_on_drift and run.drifted:
        raise typer.Exit(DRIFT_FOUND_EXIT)


def drift_table(run: DriftRun) -> Table:
    """One row per feature (and the score): rows, statistics, status, what alarmed.

    The thresholds go in the caption once, so each row stays short enough for a log line.
    """
    from rich import box
    from rich.table import Table

    from monitoring.drift_job import alarmed_statistics

    table = Table(
        title=f"drift of {run.model_name} v{run.model_version} ({run.alias})",
        title_justify="left",
        caption=_thresholds(run),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("feature", no_wrap=True)
    for column in ("rows", "psi", "js", "p-value"):
        table.add_column(column, justify="right")
    table.add_column("status")
    table.add_column("alarmed by")
    for f in run.features:
        style = _STATUS_STYLE[f.status]
        pvalue = f.ks_pvalue if f.ks_pvalue is not None else f.chi2_pvalue
        table.add_row(
            f.feature,
            str(f.n_current),
            _number(f.psi, ".3f"),
            _number(f.js_distance, ".3f"),
            _number(pvalue, ".2g"),
            f"[{style}]{_STATUS_LABEL.get(f.status, f.status)}[/{style}]",
            ", ".join(_SHORT.get(name, name) for name in alarmed_statistics(f)),
        )
    return table


def _thresholds(run: DriftRun) -> str:
    t = run.thresholds
    return (
        f"drift when psi >= {t.psi:g}, js >= {t.js_distance:g}, or a ks/chi2 p-value < "
        f"{t.ks_pvalue:g}/{t.chi2_pvalue:g} with psi >= {t.pvalue_min_psi:g}; "
        f"no verdict under {t.min_samples} rows"
    )


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _summary(run: DriftRun) -> None:
    from churn import cli

    window = (
        f"{run.window_start.isoformat(timespec='minutes')}.."
        f"{run.window_end.isoformat(timespec='minutes')}"
    )
    cli._done(
        "drift",
        run.seconds,
        model=f"{run.model_name}:v{run.model_version}",
        window=window,
        reference=run.n_reference,
        current=run.n_current,
        features=len(run.features),
        drifted=",".join(run.drifted) or 0,
        insufficient=len(run.insufficient),
        alerts_sent=run.alerts_sent,
        suppressed=run.alerts_suppressed,
        results=run.results_table,
        **({"mongodb": run.mongodb} if run.mongodb else {}),
        metrics=run.metrics_target,
    )
