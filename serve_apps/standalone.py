"""The same API in plain uvicorn, without Ray: the serving benchmark's baseline.

``python -m serve_apps.standalone --env local --port 8001`` serves the registry's champion with
the same runtime (auth, cache, limits, metrics, prediction log) as the Serve deployment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from churn_core.logging import configure_from_settings
from churn_core.prediction_log import prediction_log_target
from churn_core.settings import Settings, load_settings
from churn_core.tables import Tables
from churn_core.tls import TlsConfigError, server_ssl_options
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
        encryption=settings.encryption,
    )
    runtime = build_runtime(
        settings.serve,
        source,
        settings.resolve,
        prediction_log=prediction_log_target(settings),
        tables=Tables(settings.dataset_lake),
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
    configure_from_settings(settings, "serve")
    # Checked before the model loads: a missing certificate fails in one line naming it.
    try:
        tls = standalone_tls_options(settings)
    except TlsConfigError as error:
        raise SystemExit(f"serve_apps.standalone: {error}") from None
    uvicorn.run(
        create_standalone_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=tls.get("ssl_certfile"),
        ssl_keyfile=tls.get("ssl_keyfile"),
    )


def standalone_tls_options(settings: Settings) -> dict[str, str]:
    """uvicorn's ``ssl_certfile``/``ssl_keyfile`` from ``serve.tls_*`` (empty: plain HTTP).

    Without an ingress in front, this server terminates TLS itself; relative paths are taken
    from the project root like every other path setting.
    """
    serve = settings.serve
    if serve.tls_cert_file is None or serve.tls_key_file is None:
        return {}
    return server_ssl_options(
        settings.resolve(serve.tls_cert_file), settings.resolve(serve.tls_key_file)
    )


if __name__ == "__main__":
    main()
