"""The container image's recipe: hadolint, the rules of a production image (multi-stage,
pinned bases, non-root, health check, code baked in), the dependency lock against the tested
set, and the health check the image runs."""

from __future__ import annotations

import http.server
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from churn_core import healthcheck
from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK = REPO_ROOT / "requirements.lock"


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    import shutil

    binary = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).with_name("hadolint")
    )
    return subprocess.run([binary, str(path)], capture_output=True, text=True, check=False)


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def test_multi_stage_with_pinned_bases(dockerfile: DockerfileParser) -> None:
    args = {
        i["value"].split("=", 1)[0]: i["value"].split("=", 1)[1]
        for i in dockerfile.structure
        if i["instruction"] == "ARG" and "=" in i["value"]
    }
    bases = [i["value"].split()[0] for i in dockerfile.structure if i["instruction"] == "FROM"]
    resolved = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], b) for b in bases]
    assert len(resolved) >= 2  # at least a build stage and a slim runtime
    for image in resolved:
        _, _, tag = image.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+-[a-z]+-bookworm|\d+\.\d+\.\d+-bookworm-slim", tag), (
            image
        )
    # The runtime uses the same Python as the virtualenv built for it.
    assert resolved[-1] == resolved[-2]


def test_the_runtime_runs_as_a_non_root_user_with_a_health_check(
    dockerfile: DockerfileParser,
) -> None:
    runtime = dockerfile.structure[
        max(i for i, x in enumerate(dockerfile.structure) if x["instruction"] == "FROM") :
    ]
    users = [x["value"] for x in runtime if x["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    healthchecks = [x["value"] for x in runtime if x["instruction"] == "HEALTHCHECK"]
    assert healthchecks and "churn_core.healthcheck" in healthchecks[-1]
    # Code and settings are in the image: nothing is fetched when a pod starts.
    copies = " ".join(x["value"] for x in runtime if x["instruction"] == "COPY")
    assert "/opt/venv" in copies and "configs" in copies


def test_the_build_stage_installs_the_lock_with_hashes(dockerfile: DockerfileParser) -> None:
    runs = " ".join(x["value"] for x in dockerfile.structure if x["instruction"] == "RUN")
    assert "--require-hashes" in runs and "requirements.lock" in runs


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_the_lock_has_a_hash_for_every_pin() -> None:
    text = LOCK.read_text()
    entries = re.split(r"\n(?=\S)", text.strip())
    packages = [e for e in entries if "==" in e.split("\n", 1)[0]]
    assert packages and all("--hash=sha256:" in e for e in packages)


def test_the_lock_matches_pyproject_and_the_tested_environment() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    for requirement in project["dependencies"]:
        name, pinned = requirement.split("==")
        key = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
        assert pins.get(key) == pinned, (
            f"{key}: pyproject {pinned}, lock {pins.get(key)} (make lock)"
        )
    # Every locked package is what the tests run with, so the image ships the tested set.
    differing = {}
    for name, pinned in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a platform-only dependency not on this machine
        if installed != pinned:
            differing[name] = (pinned, installed)
    assert differing == {}, f"lock vs installed: {differing} (make lock, make install)"


# --- the health check -------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 503
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_the_health_check_passes_on_2xx_and_fails_otherwise(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert healthcheck.main([f"http://{server}/healthz"]) == 0
    assert healthcheck.main([f"http://{server}/broken"]) == 1
    assert "answered 503" in capsys.readouterr().err
    assert healthcheck.main(["--tcp", server]) == 0


def test_the_health_check_fails_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert healthcheck.main([f"http://127.0.0.1:{port}/healthz", "--timeout", "1"]) == 1
    assert healthcheck.main(["--tcp", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    assert healthcheck.main(["file:///etc/passwd"]) == 1
    err = capsys.readouterr().err
    assert "unreachable" in err and "refused" in err and "not an http(s) URL" in err
