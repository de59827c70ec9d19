"""``churn schedule``: list, run and keep running the batch jobs of ``configs/schedules.yaml``.

Mounted by ``churn/cli.py`` as a sub-app. Every job runs as its own subprocess,
``churn --env ENV <command>`` with the environment (and ``--dataset`` / ``--raw-dir``) this
command was given, so a job cannot take the scheduler down and is stopped as a whole.
The same schedules are rendered as KubeRay RayCronJobs by ``python -m kuberay.render_schedules``.
Exit codes of ``run``: the job's own (0 on success), 124 when it timed out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from churn.failures import one_line_errors_for

if TYPE_CHECKING:
    from rich.table import Table

    from churn_core.scheduler import ChurnRunner, RunResult
    from churn_core.schedules import ScheduleFile
    from churn_core.settings import Settings

app = typer.Typer(
    no_args_is_help=True,
    help="List, run now, or keep running the scheduled batch jobs (configs/schedules.yaml).",
)

FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        exists=True,
        dir_okay=False,
        help="Schedules file; default: schedules.yaml in the config folder.",
    ),
]

one_line_errors = one_line_errors_for("churn schedule")


def _settings() -> Settings:
    from churn import cli

    return cli.settings()


def _load(file: Path | None) -> ScheduleFile:
    from churn_core.schedules import load_schedules

    return load_schedules(file)


def _runner(s: Settings) -> ChurnRunner:
    """Jobs get this command's environment and global overrides."""
    from churn import cli
    from churn_core.scheduler import ChurnRunner

    options: list[str] = []
    for name, value in cli._State.overrides.items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    return ChurnRunner(env=s.env, global_options=tuple(options))


def _duration(seconds: float) -> str:
    """``1d 3h``, ``3h 12m``, ``45m`` or ``30s``: the two largest units, no zeros."""
    rest = max(0, int(seconds))
    units = []
    for label, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            units.append(f"{count}{label}")
    return " ".join(units[:2]) or "0s"


def _table(schedules: ScheduleFile, now: datetime, env: str) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="schedules")
    for column in ("name", "cron", "next run (UTC)", "timeout"):
        table.add_column(column, no_wrap=True)
    table.add_column("command", min_width=14)
    for schedule in schedules.schedules.values():
        cron = schedule.cron
        if schedule.timezone != "UTC":
            cron += f" ({schedule.timezone})"
        if schedule.enabled:
            upcoming = schedule.next_run(now)
            when = upcoming.strftime("%Y-%m-%d %H:%M")
        else:
            when = "[dim]disabled[/dim]"
        # Arguments are the user's text, never rich markup.
        command = escape(" -> ".join(" ".join(step) for step in schedule.steps))
        table.add_row(schedule.name, cron, when, _duration(schedule.timeout_s), command)
    table.caption = escape(f"jobs run as `churn --env {env} <command>`")
    return table


def _report(result: RunResult) -> None:
    from churn import cli

    summary = f"{result.schedule}  exit={result.exit_code}  ({result.duration_s:.1f} s)"
    if result.timed_out:
        cli.errors.print(f"[red]timed out[/red] {summary}", highlight=False)
    elif result.succeeded:
        cli.console.print(f"[green]finished[/green] {summary}", highlight=False)
    else:
        cli.errors.print(f"[red]failed[/red] {summary}", highlight=False)


def _exit_code(result: RunResult) -> int:
    """The job's exit code; 124 for a timeout; 128+N for a job ended by signal N."""
    from churn_core.scheduler import TIMEOUT_EXIT

    if result.timed_out:
        return TIMEOUT_EXIT
    return 128 - result.exit_code if result.exit_code < 0 else result.exit_code


@app.command("list")
@one_line_errors
def list_command(file: FileOption = None) -> None:
    """Each schedule with its cron expression, next run in UTC and command."""
    from churn import cli

    cli.console.print(_table(_load(file), datetime.now(UTC), _settings().env))


@app.command("run")
@one_line_errors
def run_command(
    name: Annotated[str, typer.Argument(help="The schedule to run now.")],
    file: FileOption = None,
) -> None:
    """Run one schedule now, in the foreground, within its timeout; exit with its exit code."""
    from rich.markup import escape

    from churn import cli
    from churn_core.scheduler import SystemClock, run_now

    s = _settings()
    schedules = _load(file)
    schedule = schedules.get(name)
    cli.console.print(
        f"[bold]running[/bold] {name}: {escape(schedule.describe_steps(s.env))}  "
        f"(timeout {schedule.timeout_s} s)",
        highlight=False,
    )
    result = run_now(schedule, _runner(s), SystemClock(), schedules.stop_grace_s)
    _report(result)
    if not result.succeeded:
        raise typer.Exit(_exit_code(result))


@app.command("start")
@one_line_errors
def start_command(file: FileOption = None) -> None:
    """Run every enabled schedule when due, until Ctrl-C (which stops running jobs first)."""
    from churn import cli
    from churn_core.logging import get_logger
    from churn_core.scheduler import Scheduler, StateStore, SystemClock, exclusive_lock

    s = _settings()
    schedules = _load(file)
    state_path = s.resolve(schedules.state_path)
    with exclusive_lock(state_path.with_suffix(".lock")):
        state = StateStore(state_path)
        scheduler = Scheduler(
            schedules.enabled,
            _runner(s),
            SystemClock(),
            get_logger("churn.schedule"),
            state=state,
            stop_grace_s=schedules.stop_grace_s,
        )
        cli.console.print(_table(schedules, datetime.now(UTC), s.env))
        cli.console.print(f"scheduler running ({len(schedules.enabled)} enabled); Ctrl-C to stop")
        try:
            scheduler.run_forever()
        except KeyboardInterrupt:
            running = len(scheduler.active)
            cli.console.print(f"stopping: asking {running} running job(s) to stop ...")
            scheduler.shutdown()
    cli.console.print("scheduler stopped")
