"""Schedules of the batch jobs, declared once in ``configs/schedules.yaml``.

Each schedule names a cron expression (5 fields, in its ``timezone``, UTC by default), the
``churn`` commands it runs in order (``steps``), a timeout and whether it is enabled. The same
declarations drive ``churn schedule`` on a laptop and the RayCronJobs of the Helm chart
(``kuberay/chart`` reads this file through a link), so the two cannot drift apart; how those
pods run (image, resources, volumes) is the chart's values.

Cron syntax is restricted to what both evaluators agree on: this module (``cronsim``) and the
Go ``robfig/cron`` parser that the KubeRay operator and Kubernetes use (numbers, ``*``, ranges,
steps, lists and three-letter month/day names; no ``L``, ``W``, ``#``, ``?`` or ``@daily``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from churn_core.settings import PACKAGE_CONFIG_DIR

SCHEDULES_FILE = "schedules.yaml"
# One comma-separated item of a cron field: a value, a name, or *, optionally a range and a step.
_CRON_ITEM = r"(\*|\d+|[A-Za-z]{3})(-(\d+|[A-Za-z]{3}))?(/\d+)?"
_CRON_FIELD = re.compile(rf"{_CRON_ITEM}(,{_CRON_ITEM})*")
_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
# A schedule's name becomes a Kubernetes object name, and the RayJob and RayCluster created from
# it add suffixes: a short DNS-1123 label keeps every derived name under the 63-character limit.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAME_MAX = 40
_COMMAND = re.compile(r"[a-z][a-z0-9-]*")
# Enough consecutive firings to see the shortest gap of any schedule (a year of daily runs,
# DST changes included) while keeping validation instant for per-minute schedules.
_GAP_SAMPLE = 1_000
_GAP_REFERENCE = datetime(2026, 1, 1, tzinfo=UTC)

Step = tuple[str, ...]


class ScheduleConfigError(ValueError):
    """``configs/schedules.yaml`` is invalid; the message names the schedule and the field."""


class Schedule(BaseModel):
    """One scheduled job: when it runs, what it runs, for how long at most."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(max_length=_NAME_MAX)
    description: str = ""
    cron: str
    timezone: str = "UTC"
    # churn commands run one after another (e.g. [ingest], [features], [score]); a failed step
    # stops the run, so a later step never works on the output of a failed one.
    steps: tuple[Step, ...] = Field(min_length=1)
    # For the whole run (every step). Shorter than the gap between two firings, so a run ends
    # (or is stopped) before the next one is due: overlap is impossible by construction, also
    # on KubeRay, whose RayCronJob has no concurrency policy.
    timeout_s: int = Field(ge=1)
    # A firing missed by at most this much (scheduler down, previous run still going) still
    # runs, once; an older one is skipped. Kubernetes calls this startingDeadlineSeconds.
    grace_s: int = Field(900, ge=0)
    # Only "forbid" (never two runs of one schedule at once); a field so the YAML says so.
    concurrency: Literal["forbid"] = "forbid"
    enabled: bool = True
    # Ray worker pods of the cluster a RayCronJob run gets (0: the head alone).
    ray_workers: int = Field(0, ge=0)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be lower-case letters, digits and '-' (a Kubernetes name)")
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. UTC)") from None
        return value

    @field_validator("steps")
    @classmethod
    def _check_steps(cls, value: tuple[Step, ...]) -> tuple[Step, ...]:
        for step in value:
            check_step(step)
        return value

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> Schedule:
        gap = shortest_gap(self.cron, self.zone)
        if timedelta(seconds=self.timeout_s) >= gap:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must be shorter than the shortest interval "
                f"between two runs ({int(gap.total_seconds())} s), or runs could overlap"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The time zone the cron expression is read in."""
        return ZoneInfo(self.timezone)

    def next_run(self, after: datetime) -> datetime:
        """The first firing strictly after ``after``, in UTC."""
        return next(self.runs_after(after))

    def runs_after(self, after: datetime) -> Iterator[datetime]:
        """Firings strictly after ``after``, in UTC, in order."""
        for local in CronSim(self.cron, _aware(after).astimezone(self.zone)):
            yield local.astimezone(UTC)

    def latest_run(self, at: datetime) -> datetime:
        """The last firing at or before ``at``, in UTC."""
        # CronSim looks strictly before its start (to the second): start one second later.
        start = _aware(at).replace(microsecond=0) + timedelta(seconds=1)
        return next(CronSim(self.cron, start.astimezone(self.zone), reverse=True)).astimezone(UTC)

    def describe_steps(self, env: str | None = None) -> str:
        """The steps as shell lines joined by ``&&`` (``churn --env ENV ...`` when ``env``)."""
        return " && ".join(command_line(step, env) for step in self.steps)


class ScheduleFile(BaseModel):
    """Everything in ``configs/schedules.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Last firing started per schedule, so a restarted scheduler knows what it missed.
    state_path: Path = Path("var/schedules/state.json")
    # How long a run asked to stop (timeout, Ctrl-C) gets before it is killed.
    stop_grace_s: float = Field(30.0, ge=0)
    schedules: dict[str, Schedule]

    @model_validator(mode="before")
    @classmethod
    def _name_schedules(cls, data: Any) -> Any:
        # The mapping key is the name: write it once in YAML, have it on the model.
        if isinstance(data, dict) and isinstance(data.get("schedules"), dict):
            named = {
                key: {**value, "name": key} if isinstance(value, dict) else value
                for key, value in data["schedules"].items()
            }
            data = {**data, "schedules": named}
        return data

    def get(self, name: str) -> Schedule:
        """The schedule called ``name``; a clear error listing the known ones otherwise."""
        try:
            return self.schedules[name]
        except KeyError:
            known = ", ".join(sorted(self.schedules))
            raise ScheduleConfigError(f"no schedule {name!r} (known: {known})") from None

    @property
    def enabled(self) -> list[Schedule]:
        """The schedules that run, in file order."""
        return [s for s in self.schedules.values() if s.enabled]


def check_cron(expression: str) -> str:
    """Return ``expression`` if it is a 5-field cron both cronsim and robfig/cron accept."""
    fields = expression.split()
    if len(fields) != len(_CRON_FIELDS):
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    for label, field in zip(_CRON_FIELDS, fields, strict=True):
        if not _CRON_FIELD.fullmatch(field):
            raise ValueError(f"{label} field {field!r}: only numbers, names, *, -, / and ,")
    try:
        CronSim(expression, _GAP_REFERENCE)
    except CronSimError as error:
        raise ValueError(f"{error} in {expression!r}") from None
    return " ".join(fields)


def check_step(step: Step) -> None:
    """A step is a churn command and its arguments; the scheduler adds ``--env`` itself."""
    if not step:
        raise ValueError("a step must name a churn command, e.g. [score]")
    if not _COMMAND.fullmatch(step[0]):
        raise ValueError(f"step {list(step)}: must start with a churn command, not {step[0]!r}")
    if step[0] == "schedule":
        raise ValueError("a schedule cannot run `churn schedule`")


def shortest_gap(cron: str, zone: ZoneInfo) -> timedelta:
    """The shortest time between two consecutive firings of ``cron`` (over a sample of them)."""
    firings = islice(CronSim(cron, _GAP_REFERENCE.astimezone(zone)), _GAP_SAMPLE)
    return min(later - earlier for earlier, later in pairwise(firings))


def command_line(step: Step, env: str | None = None) -> str:
    """``churn [--env ENV] <step>`` as one shell-quoted line."""
    import shlex

    prefix = ["churn", "--env", env] if env else ["churn"]
    return shlex.join([*prefix, *step])


def default_schedules_path() -> Path:
    """``schedules.yaml`` in the settings' config folder (``CHURN_CONFIG_DIR`` or the package's)."""
    return Path(os.environ.get("CHURN_CONFIG_DIR", PACKAGE_CONFIG_DIR)) / SCHEDULES_FILE


def load_schedules(path: Path | None = None) -> ScheduleFile:
    """Read and validate the schedules file; errors name the schedule and the field."""
    path = path or default_schedules_path()
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScheduleConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise ScheduleConfigError(f"{path}: not YAML: {error}") from None
    try:
        return ScheduleFile.model_validate(data or {})
    except ValidationError as error:
        raise ScheduleConfigError(f"{path}: {describe_errors(error)}") from None


def describe_errors(error: ValidationError) -> str:
    """Pydantic errors as ``schedule 'x', field 'cron': message`` parts joined by ``;``."""
    return "; ".join(_describe(e["loc"], e["msg"]) for e in error.errors())


def _describe(loc: tuple[int | str, ...], message: str) -> str:
    message = message.removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "schedules":
        where = f"schedule {loc[1]!r}"
        if len(loc) > 2:
            where += f", field {'.'.join(str(p) for p in loc[2:])!r}"
        return f"{where}: {message}"
    return f"field {'.'.join(str(p) for p in loc) or '(top level)'!r}: {message}"


def _aware(moment: datetime) -> datetime:
    """``moment`` with a time zone; a naive one is taken as UTC (as the CLI prints them)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
