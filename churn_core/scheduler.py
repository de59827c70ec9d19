"""The local scheduler behind ``churn schedule``: due runs as subprocesses, one per schedule.

Rules, the same as the Kubernetes CronJob semantics the rendered RayCronJobs approximate:

- A schedule never runs twice at once: a firing that comes due while the previous run is still
  going waits for it (``concurrency: forbid``).
- A due firing runs if it is at most ``grace_s`` late, else it is skipped. Several missed
  firings (the scheduler was down, the machine slept) collapse into the latest one: at most
  one catch-up, never a burst.
- A run that outlives ``timeout_s`` is asked to stop (SIGTERM to its process group) and killed
  ``stop_grace_s`` later if it has not.

Time and processes are injected (:class:`Clock`, :class:`Runner`), so tests drive the loop with
a fake clock and fake runs, without sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from churn_core.logging import JOB_ID_VARIABLE, new_id
from churn_core.schedules import Schedule, Step

TIMEOUT_EXIT = 124  # what coreutils `timeout` returns; `churn schedule run` reports it too
# Longest sleep of the loop: a wall-clock jump (suspend, NTP) is noticed within this.
MAX_SLEEP_S = 30.0
# How often running jobs are polled for their exit.
POLL_S = 1.0


class Clock(Protocol):
    """Where the scheduler gets the time from, and how it waits."""

    def now(self) -> datetime:
        """The current time, time-zone aware."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class Run(Protocol):
    """One started run of a schedule."""

    def poll(self) -> int | None:
        """The exit code once the run has ended, else None."""
        ...

    def terminate(self) -> None:
        """Ask the run to stop (it may clean up first)."""
        ...

    def kill(self) -> None:
        """Stop the run now."""
        ...


class Runner(Protocol):
    """Starts runs of schedules."""

    def start(self, schedule: Schedule) -> Run:
        """Start ``schedule``'s steps without waiting for them."""
        ...


class EventLog(Protocol):
    """Where start, finish and skip lines go (a structlog logger in production)."""

    def info(self, event: str, **fields: Any) -> object:
        """An ordinary event."""
        ...

    def warning(self, event: str, **fields: Any) -> object:
        """Something that needs a look."""
        ...


class SystemClock:
    """The real clock, in UTC."""

    def now(self) -> datetime:
        """The current time in UTC."""
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (nothing for zero or less)."""
        if seconds > 0:
            time.sleep(seconds)


@dataclass(frozen=True)
class RunResult:
    """How one run ended."""

    schedule: str
    scheduled_for: datetime
    exit_code: int
    duration_s: float
    timed_out: bool = False
    # The run's job_id in the logs, when its runner gave it one.
    job_id: str | None = None

    @property
    def succeeded(self) -> bool:
        """Exit code 0 and within the timeout."""
        return self.exit_code == 0 and not self.timed_out


@dataclass
class ActiveRun:
    """A run in progress, with its deadline and how far its stopping has gone."""

    schedule: Schedule
    run: Run
    scheduled_for: datetime
    started_at: datetime
    stop_requested_at: datetime | None = None
    timed_out: bool = False
    killed: bool = False

    @property
    def deadline(self) -> datetime:
        """When the run is asked to stop."""
        return self.started_at + timedelta(seconds=self.schedule.timeout_s)

    def request_stop(self, now: datetime) -> None:
        """Ask the run to stop, once."""
        if self.stop_requested_at is None:
            self.stop_requested_at = now
            self.run.terminate()

    def check(self, now: datetime, stop_grace_s: float) -> RunResult | None:
        """The result if the run has ended; else enforce the timeout and the kill deadline."""
        code = self.run.poll()
        if code is not None:
            return self.result(code, now)
        if self.stop_requested_at is None:
            if now >= self.deadline:
                self.timed_out = True
                self.request_stop(now)
        elif not self.killed and (now - self.stop_requested_at).total_seconds() >= stop_grace_s:
            self.killed = True
            self.run.kill()
        return None

    def result(self, code: int, now: datetime) -> RunResult:
        """This run's result with exit code ``code``, ended at ``now``."""
        return RunResult(
            schedule=self.schedule.name,
            scheduled_for=self.scheduled_for,
            exit_code=code,
            duration_s=(now - self.started_at).total_seconds(),
            timed_out=self.timed_out,
            job_id=getattr(self.run, "job_id", None),
        )


class StateStore:
    """The last firing started per schedule, in a small JSON file written atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fired: dict[str, datetime] = self._read()

    def last_fired(self, name: str) -> datetime | None:
        """The firing the last run of ``name`` was started for, if any is recorded."""
        return self._fired.get(name)

    def record(self, name: str, fired: datetime) -> None:
        """Remember that the run for firing ``fired`` of ``name`` started."""
        self._fired[name] = fired
        self._write()

    def _read(self) -> dict[str, datetime]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
        except ValueError as error:
            raise ValueError(
                f"{self.path}: unreadable ({error}); delete it to start afresh"
            ) from None
        return {name: datetime.fromisoformat(at) for name, at in raw.get("last_fired", {}).items()}

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"last_fired": {k: v.isoformat() for k, v in sorted(self._fired.items())}}
        # Write then rename: a crash mid-write leaves the previous state, never half a file.
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(partial, self.path)


@dataclass
class _Slot:
    """One schedule's next firing and its run in progress."""

    schedule: Schedule
    next_due: datetime
    active: ActiveRun | None = None
    waiting_logged: bool = False


@dataclass
class Scheduler:
    """Runs due schedules through ``runner``; call :meth:`tick` in a loop, :meth:`shutdown` last."""

    schedules: Sequence[Schedule]
    runner: Runner
    clock: Clock
    log: EventLog
    state: StateStore = field(default_factory=lambda: StateStore(None))
    stop_grace_s: float = 30.0
    finished: list[RunResult] = field(default_factory=list)
    _slots: list[_Slot] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        now = self.clock.now()
        self._slots = [_Slot(s, self._first_due(s, now)) for s in self.schedules if s.enabled]

    def _first_due(self, schedule: Schedule, now: datetime) -> datetime:
        # After the last recorded firing, so one missed while down comes due at once; a schedule
        # never run here before starts from now (nothing is known to have been missed).
        last = self.state.last_fired(schedule.name)
        return schedule.next_run(last if last is not None else now)

    @property
    def active(self) -> list[ActiveRun]:
        """Runs in progress."""
        return [slot.active for slot in self._slots if slot.active is not None]

    def next_due(self) -> dict[str, datetime]:
        """The next firing of each enabled schedule, by name."""
        return {slot.schedule.name: slot.next_due for slot in self._slots}

    def tick(self) -> float:
        """Reap ended runs, enforce timeouts, start due ones; return seconds to sleep."""
        now = self.clock.now()
        for slot in self._slots:
            self._reap(slot, now)
            self._start_if_due(slot, now)
        return self._sleep_for(now)

    def run_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Tick and sleep until ``should_stop()`` (or KeyboardInterrupt, left to the caller)."""
        while not should_stop():
            self.clock.sleep(self.tick())

    def shutdown(self) -> list[RunResult]:
        """Ask every run to stop, wait (killing after ``stop_grace_s``), return their results."""
        now = self.clock.now()
        for slot in self._slots:
            if slot.active is not None:
                self.log.info("schedule_stopping", schedule=slot.schedule.name)
                slot.active.request_stop(now)
        while self.active:
            try:
                self.clock.sleep(POLL_S)
            except KeyboardInterrupt:
                self._kill_all()  # a second Ctrl-C: no more waiting for the grace period
            now = self.clock.now()
            for slot in self._slots:
                self._reap(slot, now)
        return self.finished

    def _kill_all(self) -> None:
        for run in self.active:
            run.killed = True
            run.run.kill()

    def _reap(self, slot: _Slot, now: datetime) -> None:
        if slot.active is None:
            return
        result = slot.active.check(now, self.stop_grace_s)
        if result is None:
            return
        slot.active = None
        self.finished.append(result)
        log_result(self.log, result)

    def _start_if_due(self, slot: _Slot, now: datetime) -> None:
        if slot.next_due > now:
            return
        if slot.active is not None:
            self._log_waiting(slot)
            return
        fired = slot.schedule.latest_run(now)
        late = (now - fired).total_seconds()
        slot.next_due = slot.schedule.next_run(now)
        slot.waiting_logged = False
        if late > slot.schedule.grace_s:
            self.log.warning(
                "schedule_missed",
                schedule=slot.schedule.name,
                scheduled_for=fired.isoformat(),
                late_s=round(late),
                grace_s=slot.schedule.grace_s,
                next_run=slot.next_due.isoformat(),
            )
            return
        slot.active = self._start(slot.schedule, fired, now, late)

    def _log_waiting(self, slot: _Slot) -> None:
        if not slot.waiting_logged:
            slot.waiting_logged = True
            self.log.warning(
                "schedule_waiting",
                schedule=slot.schedule.name,
                reason="previous run still going (concurrency: forbid)",
                scheduled_for=slot.next_due.isoformat(),
            )

    def _start(
        self, schedule: Schedule, fired: datetime, now: datetime, late: float
    ) -> ActiveRun | None:
        # Recorded before the run starts: a scheduler that dies mid-run does not start the
        # same firing again when it comes back (the run may still be going).
        self.state.record(schedule.name, fired)
        try:
            run = self.runner.start(schedule)
        except OSError as error:
            # One schedule that cannot start (a missing executable, no file handles left)
            # must not stop the others: say so, and try again at its next firing.
            self.log.warning(
                "schedule_failed",
                schedule=schedule.name,
                scheduled_for=fired.isoformat(),
                error=f"could not start: {error}",
            )
            return None
        self.log.info(
            "schedule_started",
            schedule=schedule.name,
            # The id the run's own lines carry as job_id (runners that give one).
            job_id=getattr(run, "job_id", None),
            scheduled_for=fired.isoformat(),
            late_s=round(late),
            command=schedule.describe_steps(),
            timeout_s=schedule.timeout_s,
        )
        return ActiveRun(schedule, run, scheduled_for=fired, started_at=now)

    def _sleep_for(self, now: datetime) -> float:
        if self.active:
            return POLL_S
        if not self._slots:
            return MAX_SLEEP_S
        soonest = min(slot.next_due for slot in self._slots)
        return max(0.0, min(MAX_SLEEP_S, (soonest - now).total_seconds()))


def log_result(log: EventLog, result: RunResult) -> None:
    """One line per finished run: exit code, duration, and whether it timed out."""
    fields = {
        "schedule": result.schedule,
        "scheduled_for": result.scheduled_for.isoformat(),
        "exit_code": result.exit_code,
        "duration_s": round(result.duration_s, 1),
        "timed_out": result.timed_out,
        "job_id": result.job_id,
    }
    if result.succeeded:
        log.info("schedule_finished", **fields)
    else:
        log.warning("schedule_failed", **fields)


def run_now(
    schedule: Schedule,
    runner: Runner,
    clock: Clock,
    stop_grace_s: float = 30.0,
    poll_s: float = 0.2,
) -> RunResult:
    """Run ``schedule`` once, now, waiting for it within its timeout (``churn schedule run``).

    Ctrl-C asks the run to stop and still waits for it, so nothing is left running.
    """
    now = clock.now()
    active = ActiveRun(schedule, runner.start(schedule), scheduled_for=now, started_at=now)
    while True:
        try:
            result = active.check(clock.now(), stop_grace_s)
            if result is not None:
                return result
            clock.sleep(poll_s)
        except KeyboardInterrupt:
            active.request_stop(clock.now())


class ProcessRun:
    """A schedule's steps as subprocesses, one after another, stopping at the first failure.

    Each step runs in its own process group (``start_new_session``) so stopping reaches what
    the step started (Spark, Ray workers), and a Ctrl-C meant for the scheduler does not hit
    the jobs before the scheduler decides how to stop them.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
        env: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> None:
        if not commands:
            raise ValueError("a run needs at least one command")
        self._pending = [list(c) for c in commands]
        self._popen = popen
        # Every step's environment (None: this process's); job_id names the run in logs.
        self._env = dict(env) if env is not None else None
        self.job_id = job_id
        self._stopping = False
        self.step = 0
        self._process = self._launch_next()

    def poll(self) -> int | None:
        """The exit code when the last step (or a failed one) has ended; start the next step."""
        code = self._process.poll()
        if code is None:
            return None
        if code != 0 or self._stopping or not self._pending:
            return code
        self._process = self._launch_next()
        return None

    def terminate(self) -> None:
        """SIGTERM to the current step's process group; no further step starts."""
        self._stopping = True
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the current step's process group."""
        self._stopping = True
        self._signal(signal.SIGKILL)

    def _launch_next(self) -> subprocess.Popen[bytes]:
        self.step += 1
        extra = {} if self._env is None else {"env": self._env}
        return self._popen(self._pending.pop(0), start_new_session=True, **extra)

    def _signal(self, signum: int) -> None:
        if self._process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # ended between poll() and the signal
            os.killpg(self._process.pid, signum)


@dataclass(frozen=True)
class ChurnRunner:
    """Starts a schedule's steps as ``churn --env ENV <step>`` with this Python interpreter."""

    env: str
    # Global options passed before the command (e.g. --dataset), as the caller got them.
    global_options: tuple[str, ...] = ()

    def argv(self, step: Step) -> list[str]:
        """The command line of one step."""
        # `python -c` rather than a `churn` found on PATH: the same interpreter and packages
        # as the scheduler. argv[0] is set so usage lines in errors say `churn`.
        launcher = "import sys; sys.argv[0] = 'churn'; from churn.cli import main; main()"
        return [sys.executable, "-c", launcher, "--env", self.env, *self.global_options, *step]

    def start(self, schedule: Schedule) -> ProcessRun:
        """Start the first step; the others follow as each one succeeds.

        Every step gets the run's id in ``CHURN_JOB_ID``, so all their log lines (and their
        Ray workers') carry one ``job_id``, the one the scheduler logs for the run.
        """
        job_id = new_id()
        return ProcessRun(
            [self.argv(step) for step in schedule.steps],
            env={**os.environ, JOB_ID_VARIABLE: job_id},
            job_id=job_id,
        )


class SchedulerBusyError(RuntimeError):
    """Another scheduler already runs these schedules."""


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Two schedulers on one state file would both start every due run: the second one refuses.
    The lock is the kernel's (flock), so it goes away with the process, crash or not.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SchedulerBusyError(f"another `churn schedule start` holds {path}") from None
        yield
