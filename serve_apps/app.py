"""The Ray Serve application: one deployment holding the model and the whole HTTP API.

One deployment, not an ingress in front of a model deployment: on this hardware every hop
between deployments cost more than the model call itself (see the README's serving figures).
The model source is injected through ``bind`` (tests bind another); the FastAPI app is built
after the model is loaded because its request model follows the loaded model's contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

from churn_core.logging import LogSetup, log_setup
from churn_core.prediction_log import PredictionLogTarget, prediction_log_target
from churn_core.settings import ServeSettings, Settings, load_settings
from churn_core.tables import Tables
from serve_apps.api import create_api
from serve_apps.runtime import build_runtime
from serve_apps.service import ModelSource, RegistryLoader


@serve.deployment
@serve.ingress()
class ChurnAPI:
    """A replica serving the version its model source names, and following it when it moves."""

    def __init__(
        self,
        source: ModelSource,
        settings: ServeSettings,
        project_root: str,
        prediction_log: PredictionLogTarget | None = None,
        lake: str | None = None,
        logs: LogSetup | None = None,
    ) -> None:
        # The replica's entry point: its lines are the same JSON as every other process's
        # (Ray keeps its stderr in the session's log files; the file template applies too).
        if logs is not None:
            logs.apply()
        root = Path(project_root)
        self.runtime = build_runtime(
            settings,
            source,
            lambda p: p if p.is_absolute() else root / p,
            prediction_log=prediction_log,
            # The data set's tables, read by the dashboard's views (scores, drift).
            tables=Tables(Path(lake)) if lake else None,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Ray Serve calls this after ``__init__`` to get the replica's ASGI app."""
        # Serve's HTTP layer returns X-Request-ID itself.
        return create_api(self.runtime, echo_request_id=False)

    async def check_health(self) -> None:
        """Serve's health check: a replica without a model is replaced."""
        if self.runtime.service.model is None:  # pragma: no cover - defensive
            raise RuntimeError("no model loaded")


class AppArgs(BaseModel):
    """Arguments of the application in the Serve config (``args:``)."""

    model_config = ConfigDict(extra="forbid")

    env: str = "local"
    registry_root: str | None = None
    # Where the prediction log goes: <lake_dir>/<dataset>/monitoring/predictions.
    lake_dir: str | None = None
    dataset: str | None = None
    prediction_spool_dir: str | None = None
    model_name: str | None = None
    alias: str | None = None


def _with_locations(settings: Settings, args: AppArgs) -> Settings:
    """``settings`` with the lake, data set and spool folder the deployer chose."""
    update: dict[str, Any] = {}
    if args.lake_dir:
        update["lake_dir"] = Path(args.lake_dir)
    if args.dataset:
        update["dataset"] = args.dataset
    if args.prediction_spool_dir:
        monitoring = settings.monitoring
        log = monitoring.prediction_log.model_copy(
            update={"spool_dir": Path(args.prediction_spool_dir)}
        )
        update["monitoring"] = monitoring.model_copy(update={"prediction_log": log})
    return settings.model_copy(update=update) if update else settings


def build_app(args: dict[str, Any]) -> Application:
    """Application builder named by ``import_path`` in ``configs/serve/*.yaml``."""
    parsed = AppArgs.model_validate(args)
    settings = _with_locations(load_settings(parsed.env), parsed)
    registry = settings.registry
    if parsed.registry_root:
        registry = registry.model_copy(update={"root": Path(parsed.registry_root)})
    serve_settings = settings.serve
    if parsed.alias:
        serve_settings = serve_settings.model_copy(update={"alias": parsed.alias})
    root = str(settings.resolve(Path(".")))
    source = RegistryLoader(
        registry=registry,
        project_root=root,
        model_name=parsed.model_name or settings.model_name,
        alias=serve_settings.alias,
        encryption=settings.encryption,
    )
    log_target = prediction_log_target(settings)
    lake = str(settings.dataset_lake)
    logs = log_setup(settings, "serve")
    return ChurnAPI.bind(source, serve_settings, root, log_target, lake, logs)  # type: ignore[attr-defined, no-any-return]
