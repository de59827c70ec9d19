"""The Ray Serve application: one deployment holding the model, FastAPI built per replica.

The model loader is injected through ``bind`` (tests bind another loader); the FastAPI app is
built after the model is loaded because its request model follows the loaded model's contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

from churn_core.settings import ServeSettings, load_settings
from serve_apps.api import create_api
from serve_apps.service import ModelLoader, PredictionService, RegistryLoader


@serve.deployment
@serve.ingress()
class ChurnAPI:
    """A replica serving the model its loader returns."""

    def __init__(self, loader: ModelLoader, settings: ServeSettings) -> None:
        model, meta = loader()
        self.service = PredictionService(model=model, meta=meta, settings=settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Ray Serve calls this after ``__init__`` to get the replica's ASGI app."""
        return create_api(self.service)


class AppArgs(BaseModel):
    """Arguments of the application in the Serve config (``args:``)."""

    model_config = ConfigDict(extra="forbid")

    env: str = "local"
    registry_root: str | None = None
    model_name: str | None = None
    alias: str | None = None


def build_app(args: dict[str, Any]) -> Application:
    """Application builder named by ``import_path`` in ``configs/serve/*.yaml``."""
    parsed = AppArgs.model_validate(args)
    settings = load_settings(parsed.env)
    registry = settings.registry
    if parsed.registry_root:
        registry = registry.model_copy(update={"root": Path(parsed.registry_root)})
    loader = RegistryLoader(
        registry=registry,
        project_root=str(settings.resolve(Path("."))),
        model_name=parsed.model_name or settings.model_name,
        alias=parsed.alias or settings.serve.alias,
    )
    return ChurnAPI.bind(loader, settings.serve)  # type: ignore[attr-defined, no-any-return]
