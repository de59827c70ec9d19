"""``churn schedule`` for real: the CLI runs a schedule's steps as ``churn`` subprocesses
against a temporary registry, reports each run's exit code and exits with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    churn = Path(sys.executable).with_name("churn")
    return subprocess.run(
        [str(churn), "--env", "test", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200", **env},
        cwd=REPO_ROOT,
    )


@pytest.fixture
def schedules_file(tmp_path: Path) -> Path:
    """Two cheap schedules over ``churn models``: one that works, one whose first step fails."""
    path = tmp_path / "schedules.yaml"
    declared = {
        "state_path": str(tmp_path / "state.json"),
        "schedules": {
            "probe": {"cron": "*/5 * * * *", "steps": [["models", "list"]], "timeout_s": 200},
            "broken": {
                "cron": "0 3 * * *",
                "steps": [["models", "show", "99"], ["models", "list"]],
                "timeout_s": 200,
            },
        },
    }
    path.write_text(yaml.safe_dump(declared))
    return path


@pytest.fixture
def registry_env(tmp_path: Path) -> dict[str, str]:
    return {"CHURN_REGISTRY__ROOT": str(tmp_path / "registry")}


def test_run_executes_the_steps_and_reports_success(
    schedules_file: Path, registry_env: dict[str, str]
) -> None:
    result = run_cli("schedule", "run", "probe", "--file", str(schedules_file), env=registry_env)
    assert result.returncode == 0, result.stderr
    assert "running probe: churn --env test models list" in result.stdout
    # The step's own output (the registry it was pointed at), then the scheduler's verdict.
    assert f"metadata files:{registry_env['CHURN_REGISTRY__ROOT']}" in result.stdout
    assert "finished probe  exit=0" in result.stdout


def test_a_failed_step_ends_the_run_with_its_exit_code(
    schedules_file: Path, registry_env: dict[str, str]
) -> None:
    result = run_cli("schedule", "run", "broken", "--file", str(schedules_file), env=registry_env)
    assert result.returncode == 1
    assert "churn models show failed: RegistryError" in result.stderr
    assert "failed broken  exit=1" in result.stderr
    assert "metadata files:" not in result.stdout  # the second step never ran
    assert "Traceback" not in result.stdout + result.stderr


def test_list_shows_next_runs_and_an_unknown_name_is_one_line(
    schedules_file: Path, registry_env: dict[str, str]
) -> None:
    listed = run_cli("schedule", "list", "--file", str(schedules_file), env=registry_env)
    assert listed.returncode == 0, listed.stderr
    for expected in ("probe", "*/5 * * * *", "models list", "broken", "0 3 * * *", "UTC"):
        assert expected in listed.stdout
    unknown = run_cli("schedule", "run", "nope", "--file", str(schedules_file), env=registry_env)
    assert unknown.returncode == 1
    assert "no schedule 'nope' (known: broken, probe)" in unknown.stderr


def test_the_committed_schedules_list(registry_env: dict[str, str]) -> None:
    result = run_cli("schedule", "list", env=registry_env)
    assert result.returncode == 0, result.stderr
    for name in ("nightly-scoring", "drift", "backup", "accuracy", "retrain"):
        assert name in result.stdout
