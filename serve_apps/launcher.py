"""Deploy the Serve config file on the running Ray cluster, as ``serve run`` and KubeRay do.

The config file is the single description of the deployments (``serveConfigV2`` on KubeRay);
settings only fill in where to listen and where the registry is.
"""

from __future__ import annotations

import time
from typing import Any

import yaml

from churn_core.settings import Settings


class ServeStartError(RuntimeError):
    """The application did not reach RUNNING."""


def load_serve_config(
    settings: Settings, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Serve config of ``settings`` with host, port and app args filled from settings."""
    path = settings.resolve(settings.serve.config_path)
    if not path.exists():
        raise FileNotFoundError(f"Serve config not found: {path}")
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config.setdefault("http_options", {}).update(host=settings.serve.host, port=settings.serve.port)
    for app in config.get("applications", []):
        app.setdefault("args", {}).update(
            env=settings.env,
            registry_root=str(settings.resolve(settings.registry.root)),
            model_name=settings.model_name,
            alias=settings.serve.alias,
            **(overrides or {}),
        )
    return config


def deploy(settings: Settings, timeout_s: float = 180.0) -> str:
    """Deploy every application of the config and wait until all run; return the base URL."""
    from ray.serve import status
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(load_serve_config(settings))
    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(), proxy_location=config.proxy_location
    )
    client.deploy_apps(config, _blocking=False)
    deadline = time.monotonic() + timeout_s
    names = [app.name for app in config.applications]
    while True:
        apps = status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        if all(s == "RUNNING" for s in states.values()):
            break
        failed = {
            n: apps[n].message for n in names if n in apps and apps[n].status == "DEPLOY_FAILED"
        }
        if failed:
            raise ServeStartError(f"Serve deploy failed: {failed}")
        if time.monotonic() > deadline:
            raise ServeStartError(f"Serve apps not running after {timeout_s:.0f} s: {states}")
        time.sleep(0.5)
    return f"http://{settings.serve.host}:{settings.serve.port}"
