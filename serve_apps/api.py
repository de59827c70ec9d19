"""The HTTP API as a plain FastAPI app: run by Ray Serve in production, by TestClient in tests."""

# No `from __future__ import annotations`: FastAPI must see the request models built at runtime.

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from serve_apps.schemas import (
    BatchPrediction,
    ErrorBody,
    ErrorDetail,
    FeatureImportance,
    ModelMetrics,
    Prediction,
    features_model,
)
from serve_apps.service import PredictionService


def _request_models(service: PredictionService) -> tuple[type[BaseModel], type[BaseModel]]:
    features = features_model(service.model.contract)
    single = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        customer_id=(str | None, Field(None, max_length=128)),
        features=(features, ...),
    )
    batch = create_model(
        "BatchPredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(list[single], Field(..., min_length=1)),
    )
    return single, batch


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in location if p != "body"]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    body = ErrorBody(
        error="invalid_request",
        detail=[ErrorDetail(field=_field_name(e["loc"]), message=e["msg"]) for e in error.errors()],
    )
    return JSONResponse(status_code=422, content=body.model_dump())


def create_api(service: PredictionService) -> FastAPI:
    """Build the app for one loaded model (the request model follows that model's contract)."""
    single, batch = _request_models(service)
    limit = service.settings.max_batch_records
    router = APIRouter()

    @router.post("/predict", response_model=Prediction)
    async def predict(body: single) -> Prediction:  # type: ignore[valid-type]
        request: Any = body
        return service.predict([request.features.model_dump()], [request.customer_id])[0]

    @router.post(
        "/batch_predict",
        response_model=BatchPrediction,
        responses={413: {"model": ErrorBody}},
    )
    async def batch_predict(body: batch) -> Any:  # type: ignore[valid-type]
        records: Any = body.records  # type: ignore[attr-defined]
        if len(records) > limit:
            detail = ErrorDetail(
                field="records",
                message=f"{len(records)} records exceed the limit of {limit}; "
                "score large sets offline with the batch scoring job",
            )
            content = ErrorBody(error="batch_too_large", detail=[detail]).model_dump()
            return JSONResponse(status_code=413, content=content)
        predictions = service.predict(
            [r.features.model_dump() for r in records], [r.customer_id for r in records]
        )
        return BatchPrediction(model_version=service.version, predictions=predictions)

    @router.get("/model_metrics", response_model=ModelMetrics)
    async def model_metrics() -> ModelMetrics:
        return service.model_metrics()

    @router.get("/feature_importance", response_model=FeatureImportance)
    async def feature_importance() -> FeatureImportance:
        return service.feature_importance()

    @router.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_version": service.version}

    app = FastAPI(title="Churn prediction API", version="1", docs_url="/docs")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(router, prefix="/v1")
    # The unversioned paths are kept for the first clients; new clients use /v1.
    app.include_router(router, include_in_schema=False)
    return app
