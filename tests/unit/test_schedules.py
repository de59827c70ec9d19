"""Schedules: declarations and their validation, cron math, the scheduler loop (fake clock and
runs, no sleeping) and real subprocess chains. The RayCronJobs rendered from the same file
are tested with the Helm chart (tests/unit/test_chart.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from churn_core.scheduler import (
    POLL_S,
    ActiveRun,
    ChurnRunner,
    ProcessRun,
    RunResult,
    Scheduler,
    StateStore,
    run_now,
)
from churn_core.schedules import (
    Schedule,
    ScheduleConfigError,
    ScheduleFile,
    load_schedules,
    shortest_gap,
)
from tests.conftest import REPO_ROOT

SCHEDULES_YAML = REPO_ROOT / "configs" / "schedules.yaml"
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday


def at(hh: int, mm: int = 0, ss: int = 0, day: int = 0) -> datetime:
    """``T0``'s day plus ``day`` days, at hh:mm:ss UTC."""
    return T0 + timedelta(days=day, hours=hh, minutes=mm, seconds=ss)


def schedule(**fields: Any) -> Schedule:
    """A valid hourly schedule with ``fields`` changed."""
    base: dict[str, Any] = {
        "name": "job",
        "cron": "15 * * * *",
        "steps": [["drift"]],
        "timeout_s": 1800,
        "grace_s": 900,
    }
    return Schedule.model_validate({**base, **fields})


def write_yaml(tmp_path: Path, schedules: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump({"schedules": schedules, **top}))
    return path


# --- the committed schedules ---------------------------------------------------------------


@pytest.fixture(scope="module")
def committed() -> ScheduleFile:
    return load_schedules(SCHEDULES_YAML)


def churn_commands() -> set[str]:
    """Every top-level command of the ``churn`` CLI."""
    from churn.cli import app

    group = typer.main.get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_default_schedules_cover_the_batch_jobs(committed: ScheduleFile) -> None:
    steps = {s.name: [list(step) for step in s.steps] for s in committed.schedules.values()}
    assert steps == {
        "nightly-scoring": [["ingest"], ["features"], ["score"]],
        "drift": [["drift"]],
        "backup": [["backup"]],
        "accuracy": [["accuracy"]],
        "retrain": [["train"]],
    }
    gaps = {s.name: shortest_gap(s.cron, s.zone) for s in committed.schedules.values()}
    assert gaps["drift"] == timedelta(hours=1)
    assert gaps["nightly-scoring"] == gaps["backup"] == gaps["accuracy"] == timedelta(days=1)
    assert gaps["retrain"] == timedelta(days=7)
    assert all(s.enabled and s.concurrency == "forbid" for s in committed.schedules.values())
    assert committed.get("retrain").ray_workers >= 1


def test_every_step_is_a_churn_command(committed: ScheduleFile) -> None:
    known = churn_commands()
    for s in committed.schedules.values():
        for step in s.steps:
            assert step[0] in known, f"{s.name}: `churn {step[0]}` does not exist"


def test_scores_come_after_the_nightly_features_and_before_the_backup(
    committed: ScheduleFile,
) -> None:
    nightly, backup = committed.get("nightly-scoring"), committed.get("backup")
    latest_end = nightly.next_run(T0) + timedelta(seconds=nightly.timeout_s)
    assert backup.next_run(T0) >= latest_end


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("61 * * * *", "Bad minute"),
        ("0 2 L * *", "day of month field 'L'"),
        ("0 2 * * 1#2", "day of week field '1#2'"),
        ("@daily", "expected 5 fields"),
        ("0 2 * *", "expected 5 fields"),
        ("0 2 ? * *", "day of month field '?'"),
    ],
)
def test_a_bad_cron_names_the_schedule_and_the_field(tmp_path: Path, cron: str, says: str) -> None:
    path = write_yaml(tmp_path, {"nightly": {"cron": cron, "steps": [["score"]], "timeout_s": 60}})
    with pytest.raises(ScheduleConfigError) as error:
        load_schedules(path)
    assert "schedule 'nightly', field 'cron'" in str(error.value)
    assert says in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (
            {"timeout_s": 3600},
            "must be shorter than the shortest interval between two runs (3600 s)",
        ),
        ({"timezone": "Mars/Olympus"}, "field 'timezone': unknown time zone 'Mars/Olympus'"),
        ({"steps": [["--env", "drift"]]}, "must start with a churn command, not '--env'"),
        ({"steps": [["schedule", "start"]]}, "cannot run `churn schedule`"),
        ({"steps": []}, "field 'steps'"),
        ({"concurrency": "allow"}, "field 'concurrency'"),
        ({"retries": 3}, "field 'retries': Extra inputs are not permitted"),
        ({"timeout_s": 0}, "field 'timeout_s'"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, fields: dict[str, Any], says: str) -> None:
    declared = {"cron": "15 * * * *", "steps": [["drift"]], "timeout_s": 600, **fields}
    path = write_yaml(tmp_path, {"drift": declared})
    with pytest.raises(ScheduleConfigError, match="schedule 'drift'") as error:
        load_schedules(path)
    assert says in str(error.value)


def test_a_name_must_be_a_kubernetes_name(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, {"Nightly_Run": {"cron": "0 2 * * *", "steps": [["score"]], "timeout_s": 60}}
    )
    with pytest.raises(ScheduleConfigError, match="schedule 'Nightly_Run', field 'name'"):
        load_schedules(path)


def test_a_missing_file_and_an_unknown_schedule_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ScheduleConfigError, match="no such file"):
        load_schedules(tmp_path / "absent.yaml")
    path = write_yaml(
        tmp_path, {"drift": {"cron": "0 * * * *", "steps": [["drift"]], "timeout_s": 60}}
    )
    with pytest.raises(ScheduleConfigError, match=r"no schedule 'score' \(known: drift\)"):
        load_schedules(path).get("score")


# --- cron math -------------------------------------------------------------------------------


def test_next_run_is_strictly_after_and_in_utc() -> None:
    hourly = schedule()
    assert hourly.next_run(at(0, 0)) == at(0, 15)
    assert hourly.next_run(at(0, 15)) == at(1, 15)
    assert hourly.next_run(at(0, 15)).tzinfo == UTC
    assert list(zip(range(3), hourly.runs_after(at(0, 20)), strict=False)) == [
        (0, at(1, 15)),
        (1, at(2, 15)),
        (2, at(3, 15)),
    ]


def test_latest_run_includes_the_moment_itself() -> None:
    hourly = schedule()
    assert hourly.latest_run(at(1, 15)) == at(1, 15)
    assert hourly.latest_run(at(1, 14, 59)) == at(0, 15)


def test_a_time_zone_is_honoured_across_daylight_saving() -> None:
    berlin = schedule(cron="0 2 * * *", timezone="Europe/Berlin", timeout_s=3600)
    winter = berlin.next_run(datetime(2026, 1, 10, tzinfo=UTC))
    summer = berlin.next_run(datetime(2026, 7, 10, tzinfo=UTC))
    assert (winter.hour, summer.hour) == (1, 0)  # 02:00 CET = 01:00 UTC, CEST = 00:00 UTC


def test_a_naive_time_is_taken_as_utc() -> None:
    assert schedule().next_run(at(0, 0).replace(tzinfo=None)) == at(0, 15)


# --- the scheduler loop, with a fake clock and fake runs ---------------------------------------


@dataclass
class FakeClock:
    t: datetime

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.t += timedelta(seconds=seconds)


@dataclass
class FakeRun:
    clock: FakeClock
    ends_at: datetime
    code: int = 0
    stubborn: bool = False  # ignores SIGTERM
    terminated: bool = False
    killed: bool = False

    def poll(self) -> int | None:
        return self.code if self.clock.now() >= self.ends_at else None

    def terminate(self) -> None:
        self.terminated = True
        if not self.stubborn:
            self.ends_at, self.code = min(self.ends_at, self.clock.now()), -15

    def kill(self) -> None:
        self.killed = True
        self.ends_at, self.code = self.clock.now(), -9


@dataclass
class FakeRunner:
    """Runs last ``duration_s`` and exit with ``code``; counts overlapping runs per schedule."""

    clock: FakeClock
    duration_s: float = 60
    code: int = 0
    stubborn: bool = False
    started: list[tuple[str, datetime]] = field(default_factory=list)
    runs: dict[str, list[FakeRun]] = field(default_factory=dict)

    def start(self, schedule: Schedule) -> FakeRun:
        previous = self.runs.setdefault(schedule.name, [])
        assert all(r.poll() is not None for r in previous), f"{schedule.name} overlapped"
        run = FakeRun(
            self.clock,
            self.clock.now() + timedelta(seconds=self.duration_s),
            self.code,
            self.stubborn,
        )
        previous.append(run)
        self.started.append((schedule.name, self.clock.now()))
        return run


@dataclass
class RecordingLog:
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def info(self, event: str, **fields: Any) -> None:
        self.events.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append(("warning", event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.events if name == event]


def make_scheduler(
    clock: FakeClock,
    runner: FakeRunner,
    *schedules: Schedule,
    state: StateStore | None = None,
    stop_grace_s: float = 30,
) -> tuple[Scheduler, RecordingLog]:
    log = RecordingLog()
    scheduler = Scheduler(
        list(schedules),
        runner,
        clock,
        log,
        state=state or StateStore(None),
        stop_grace_s=stop_grace_s,
    )
    return scheduler, log


def drive(scheduler: Scheduler, clock: FakeClock, until: datetime) -> None:
    """Tick and (fake) sleep as the real loop does, up to ``until``."""
    while clock.now() < until:
        clock.sleep(scheduler.tick())


def test_each_firing_runs_once_on_time_and_is_logged() -> None:
    clock = FakeClock(at(0, 0))
    runner = FakeRunner(clock, duration_s=90, code=0)
    scheduler, log = make_scheduler(clock, runner, schedule())
    drive(scheduler, clock, at(3, 0))
    assert runner.started == [("job", at(0, 15)), ("job", at(1, 15)), ("job", at(2, 15))]
    started = log.named("schedule_started")
    assert [e["scheduled_for"] for e in started] == [at(h, 15).isoformat() for h in range(3)]
    assert started[0]["command"] == "churn drift" and started[0]["timeout_s"] == 1800
    finished = log.named("schedule_finished")
    assert [(e["exit_code"], e["timed_out"]) for e in finished] == [(0, False)] * 3
    assert all(89 <= e["duration_s"] <= 91 for e in finished)


def test_a_failed_run_is_logged_as_a_warning_with_its_exit_code() -> None:
    clock = FakeClock(at(0, 0))
    scheduler, log = make_scheduler(clock, FakeRunner(clock, duration_s=5, code=3), schedule())
    drive(scheduler, clock, at(0, 20))
    (failed,) = log.named("schedule_failed")
    assert failed["exit_code"] == 3 and failed["schedule"] == "job"
    assert [r.exit_code for r in scheduler.finished] == [3]


def test_the_loop_sleeps_until_the_next_firing_and_polls_while_jobs_run() -> None:
    clock = FakeClock(at(0, 14, 50))
    runner = FakeRunner(clock, duration_s=600)
    scheduler, _ = make_scheduler(clock, runner, schedule())
    assert scheduler.tick() == 10
    clock.sleep(10)
    assert scheduler.tick() == POLL_S  # started; now polling it
    clock.t = at(0, 40)
    assert scheduler.tick() == 30  # finished; 35 min to go, capped at 30 s


def test_never_two_runs_of_one_schedule_and_the_waiting_firing_runs_late_once() -> None:
    # Every 10 minutes, a 9.5-minute timeout, a run that ignores SIGTERM: asked to stop at
    # 00:19:30, killed at 00:20:20 and reaped a poll later, so the 00:20 firing waits 21 s,
    # then runs once, late (within the grace).
    clock = FakeClock(at(0, 0))
    runner = FakeRunner(clock, duration_s=3600, stubborn=True)
    tight = schedule(cron="*/10 * * * *", timeout_s=570, grace_s=120)
    scheduler, log = make_scheduler(clock, runner, tight, stop_grace_s=50)
    drive(scheduler, clock, at(0, 21))
    assert runner.started == [("job", at(0, 10)), ("job", at(0, 20, 21))]
    first = runner.runs["job"][0]
    assert first.terminated and first.killed
    (waiting,) = log.named("schedule_waiting")
    assert waiting["scheduled_for"] == at(0, 20).isoformat()
    (result,) = scheduler.finished
    assert result.timed_out and result.exit_code == -9
    assert log.named("schedule_started")[1]["late_s"] == 21


def test_a_timed_out_run_is_terminated_first() -> None:
    clock = FakeClock(at(0, 0))
    runner = FakeRunner(clock, duration_s=7200)
    scheduler, log = make_scheduler(clock, runner, schedule(timeout_s=600))
    drive(scheduler, clock, at(0, 40))
    run = runner.runs["job"][0]
    assert run.terminated and not run.killed
    (failed,) = log.named("schedule_failed")
    assert failed["timed_out"] is True and failed["exit_code"] == -15
    assert 600 <= failed["duration_s"] <= 600 + POLL_S  # ended at the timeout, seen a poll later


def test_missed_firings_collapse_into_one_catch_up_within_the_grace(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.json")
    state.record("job", at(0, 15))
    clock = FakeClock(at(5, 20))  # down since 00:15: 01:15 ... 05:15 missed, 05:15 5 min ago
    runner = FakeRunner(clock)
    scheduler, log = make_scheduler(clock, runner, schedule(), state=StateStore(state.path))
    drive(scheduler, clock, at(7, 0))
    assert runner.started == [("job", at(5, 20)), ("job", at(6, 15))]
    assert log.named("schedule_started")[0]["scheduled_for"] == at(5, 15).isoformat()
    assert StateStore(state.path).last_fired("job") == at(6, 15)


def test_a_missed_firing_beyond_the_grace_is_skipped_and_said(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.json")
    state.record("job", at(0, 15))
    clock = FakeClock(at(5, 40))  # 05:15 is 25 min late, the grace is 15 min
    runner = FakeRunner(clock)
    scheduler, log = make_scheduler(clock, runner, schedule(), state=state)
    drive(scheduler, clock, at(6, 30))
    assert runner.started == [("job", at(6, 15))]
    (missed,) = log.named("schedule_missed")
    assert missed["scheduled_for"] == at(5, 15).isoformat() and missed["late_s"] == 25 * 60


def test_a_first_start_does_not_catch_up() -> None:
    clock = FakeClock(at(0, 20))
    runner = FakeRunner(clock)
    scheduler, _ = make_scheduler(clock, runner, schedule())
    drive(scheduler, clock, at(1, 30))
    assert runner.started == [("job", at(1, 15))]


@dataclass
class UnstartableRunner(FakeRunner):
    def start(self, schedule: Schedule) -> FakeRun:
        if schedule.name == "job":
            raise FileNotFoundError("no such executable")
        return super().start(schedule)


def test_a_schedule_that_cannot_start_does_not_stop_the_others() -> None:
    clock = FakeClock(at(0, 0))
    runner = UnstartableRunner(clock)
    scheduler, log = make_scheduler(clock, runner, schedule(), schedule(name="other"))
    drive(scheduler, clock, at(1, 30))
    assert [name for name, _ in runner.started] == ["other", "other"]
    failed = log.named("schedule_failed")
    assert len(failed) == 2 and "no such executable" in failed[0]["error"]


def test_disabled_schedules_never_run() -> None:
    clock = FakeClock(at(0, 0))
    runner = FakeRunner(clock)
    scheduler, _ = make_scheduler(clock, runner, schedule(enabled=False), schedule(name="on"))
    drive(scheduler, clock, at(3, 0))
    assert {name for name, _ in runner.started} == {"on"}
    assert set(scheduler.next_due()) == {"on"}


def test_shutdown_tells_running_jobs_to_stop_and_waits() -> None:
    clock = FakeClock(at(0, 0))
    runner = FakeRunner(clock, duration_s=1200)
    scheduler, log = make_scheduler(clock, runner, schedule(), schedule(name="other"))
    drive(scheduler, clock, at(0, 16))
    assert len(scheduler.active) == 2
    results = scheduler.shutdown()
    assert not scheduler.active
    assert all(r.terminated and not r.killed for runs in runner.runs.values() for r in runs)
    assert sorted(r.schedule for r in results) == ["job", "other"]
    assert len(log.named("schedule_stopping")) == 2


def test_shutdown_kills_a_job_that_ignores_the_stop_request() -> None:
    clock = FakeClock(at(0, 0))
    runner = FakeRunner(clock, duration_s=1200, stubborn=True)
    scheduler, _ = make_scheduler(clock, runner, schedule(), stop_grace_s=5)
    drive(scheduler, clock, at(0, 16))
    started = clock.now()
    (result,) = scheduler.shutdown()
    assert runner.runs["job"][0].killed and result.exit_code == -9
    assert clock.now() - started <= timedelta(seconds=5 + POLL_S)


def test_the_state_file_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    StateStore(path).record("job", at(1, 15))
    assert StateStore(path).last_fired("job") == at(1, 15)
    assert not path.with_suffix(".tmp").exists()
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        StateStore(path)


def test_run_now_waits_and_returns_the_exit_code() -> None:
    clock = FakeClock(at(0, 0))
    result = run_now(schedule(), FakeRunner(clock, duration_s=42, code=2), clock)
    assert (result.exit_code, result.timed_out) == (2, False)
    assert 42 <= result.duration_s < 43
    timed = run_now(schedule(timeout_s=60), FakeRunner(clock, duration_s=600), clock)
    assert timed.timed_out and not timed.succeeded


def test_an_active_run_reports_itself() -> None:
    clock = FakeClock(at(0, 0))
    run = FakeRun(clock, at(0, 1))
    active = ActiveRun(schedule(), run, scheduled_for=at(0, 0), started_at=at(0, 0))
    assert active.check(at(0, 0, 30), 30) is None
    clock.t = at(0, 1)
    assert active.check(clock.now(), 30) == RunResult("job", at(0, 0), 0, 60.0)


# --- real subprocesses ------------------------------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait(run: ProcessRun, seconds: float = 20) -> int:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code = run.poll()
        if code is not None:
            return code
        time.sleep(0.02)
    run.kill()
    raise AssertionError("the run did not end")


def test_steps_run_in_order_and_stop_at_the_first_failure(tmp_path: Path) -> None:
    marker = tmp_path / "third-step-ran"
    run = ProcessRun(
        [
            python("raise SystemExit(0)"),
            python("raise SystemExit(3)"),
            python(f"open({str(marker)!r}, 'w')"),
        ]
    )
    assert wait(run) == 3
    assert run.step == 2
    assert not marker.exists()


def test_terminate_stops_the_step_and_what_it_started(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    # The step starts a grandchild (as churn starts Spark or Ray) and both sleep.
    code = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(child_pid)!r}, 'w').write(str(p.pid));"
        "time.sleep(60)"
    )
    run = ProcessRun([python(code), python("raise SystemExit(0)")])
    import os
    import time

    deadline = time.monotonic() + 20
    while not child_pid.exists() or not child_pid.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run.terminate()
    assert wait(run) == -15
    assert run.step == 1  # no further step after a stop request
    grandchild = int(child_pid.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        os.kill(grandchild, 9)
        raise AssertionError("the step's own child survived the stop")


def test_the_churn_runner_passes_the_environment_and_options() -> None:
    runner = ChurnRunner("test", ("--dataset", "telco"))
    argv = runner.argv(("models", "list"))
    assert argv[0] == sys.executable
    assert argv[3:] == ["--env", "test", "--dataset", "telco", "models", "list"]
