"""The GitHub Actions workflow stays in step with .ci/run and the Makefile: it runs the same
`make test` (lint, types, audit, tests), builds the image, validates the chart, and pins what
it uses."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def commands(lines: str) -> list[str]:
    return [
        line.strip()
        for line in lines.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def make_prerequisites(target: str) -> list[str]:
    for line in (REPO_ROOT / "Makefile").read_text().splitlines():
        if line.startswith(f"{target}:"):
            return line.split(":", 1)[1].split()
    raise AssertionError(f"no make target {target}")


def steps_run(job: dict[str, Any]) -> list[str]:
    return [c for step in job["steps"] if "run" in step for c in commands(step["run"])]


def test_ci_run_is_make_test_and_make_test_includes_lint_and_audit() -> None:
    ci_run = commands((REPO_ROOT / ".ci" / "run").read_text())
    assert [c for c in ci_run if not c.startswith(("set ", "cd "))] == ["make test"]
    assert {"install", "services", "lint", "audit"} <= set(make_prerequisites("test"))


def test_the_workflow_runs_ci_run_with_a_real_vulnerability_check(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["test"]
    assert ".ci/run" in steps_run(job)
    assert job["env"]["AUDIT_FLAGS"] == "--require-vulnerability-data"
    assert "$(AUDIT_FLAGS)" in (REPO_ROOT / "Makefile").read_text()
    # The services the integration tests expect on loopback.
    assert {"postgres", "redis"} <= set(job["services"])


def test_the_workflow_builds_the_image_and_validates_the_chart(workflow: dict[str, Any]) -> None:
    image = workflow["jobs"]["image"]
    build = next(
        s for s in image["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")
    )
    assert build["with"]["context"] == "."
    chart = steps_run(workflow["jobs"]["chart"])
    assert ".venv/bin/python -m kuberay.validate" in chart
    # The same KubeRay commit as the CRDs on the development machines.
    crd_readme = (REPO_ROOT.parent / "shared" / "kuberay-crds" / "README.md").read_text()
    commit = re.search(r"commit ([0-9a-f]{7,40})", crd_readme)
    assert commit and any(commit.group(1) in c for c in chart)


def test_actions_and_images_are_pinned(workflow: dict[str, Any]) -> None:
    uses = [s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "uses" in s]
    assert uses and all(
        re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", u) for u in uses
    ), uses
    images = [
        s["image"] for job in workflow["jobs"].values() for s in job.get("services", {}).values()
    ]
    assert images and all(re.search(r":\d+\.\d+", i) for i in images), images
    assert workflow["permissions"] == {"contents": "read"}
