"""HTTP request and response models; the feature fields are derived from the feature contract."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from churn_core.contract import FeatureContract, FeatureSpec


def _field_definition(spec: FeatureSpec) -> tuple[Any, Any]:
    annotation: Any
    constraints: dict[str, Any] = {"description": spec.description or None}
    if spec.type == "categorical":
        annotation = Literal[tuple(spec.categories or [])]
    elif spec.type == "boolean":
        annotation = bool
    else:
        annotation = float
        if spec.range:
            constraints.update(ge=spec.range[0], le=spec.range[1])
    if spec.missing == "reject":
        return annotation, Field(..., **constraints)
    # Optional: missing values are imputed or left to the model's learned default branch.
    return annotation | None, Field(None, **constraints)


def features_model(contract: FeatureContract) -> type[BaseModel]:
    """A pydantic model of one customer's features: types, ranges, categories from the contract."""
    fields: dict[str, Any] = {spec.name: _field_definition(spec) for spec in contract.features}
    return create_model(
        f"{contract.name.title()}Features",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


class Reason(BaseModel):
    """One feature's push on the prediction, in log-odds (positive = toward churn)."""

    feature: str
    contribution: float


class Prediction(BaseModel):
    """A churn prediction."""

    customer_id: str | None = None
    probability: float = Field(ge=0, le=1)
    churn: bool
    threshold: float
    model_version: int
    reasons: list[Reason]


class BatchPrediction(BaseModel):
    """Predictions for a batch, in request order."""

    model_version: int
    predictions: list[Prediction]


class ModelMetrics(BaseModel):
    """The serving model's evaluation metrics and live counters."""

    model_name: str
    model_version: int
    alias: str
    metrics: dict[str, float]
    lineage: dict[str, Any]
    served: dict[str, int]


class FeatureImportance(BaseModel):
    """Global feature importance of the serving model version."""

    model_version: int
    importance_type: str
    importance: dict[str, float]


class ErrorDetail(BaseModel):
    """One problem with a request, naming the field."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """Machine-readable error body of every 4xx answer."""

    error: str
    detail: list[ErrorDetail] = Field(default_factory=list)
