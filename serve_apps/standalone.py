"""The same API in plain uvicorn, without Ray: the serving benchmark's baseline.

``python -m serve_apps.standalone --env local --port 8001`` serves the registry's champion with
the same runtime (auth, cache, limits, metrics, prediction log) as the Serve deployment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from churn_core.logging import configure_logging
from churn_core.prediction_log import prediction_log_target
from churn_core.settings import Settings, load_settings
from serve_apps.api import create_api
from serve_apps.runtime import build_runtime
from serve_apps.service import RegistryLoader


def create_standalone_app(settings: Settings) -> FastAPI:
    """The API for ``settings``' registry and serve settings."""
    source = RegistryLoader(
        registry=settings.registry,
        project_root=str(settings.resolve(Path("."))),
        model_name=settings.model_name,
        alias=settings.serve.alias,
    )
    runtime = build_runtime(
        settings.serve,
        source,
        settings.resolve,
        prediction_log=prediction_log_target(settings),
    )
    return create_api(runtime)


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", default="local")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    settings = load_settings(args.env)
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(
        create_standalone_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
