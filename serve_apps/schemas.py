"""HTTP request and response models; the feature fields are derived from the feature contract."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from churn_core.contract import FeatureContract, FeatureSpec

# Customer ids are opaque keys: a tight pattern keeps them out of injection and log trouble.
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


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
        constraints.update(allow_inf_nan=False)
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


class _PredictBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _features_or_id(self) -> _PredictBase:
        if getattr(self, "features", None) is None and getattr(self, "customer_id", None) is None:
            raise ValueError("give features, or a customer_id to look them up")
        return self


class _BatchBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reasons: Literal["exact", "approximate", "none"] = Field(
        "exact",
        description="exact TreeSHAP (~75 us a row on 2 cores), approximate (Saabas, ~7 us a row, "
        "the same top feature for ~80% of rows) or none",
    )


def request_models(contract: FeatureContract) -> tuple[type[BaseModel], type[BaseModel]]:
    """The ``/predict`` and ``/batch_predict`` request models of ``contract``."""
    features = features_model(contract)
    single = create_model(
        "PredictRequest",
        __base__=_PredictBase,
        customer_id=(
            str | None,
            Field(None, pattern=CUSTOMER_ID_PATTERN, description="Look features up if absent."),
        ),
        features=(features | None, Field(None)),  # type: ignore[arg-type]
    )
    batch = create_model(
        "BatchPredictRequest",
        __base__=_BatchBase,
        records=(list[single], Field(..., min_length=1)),
    )
    return single, batch


class Reason(BaseModel):
    """One feature's push on the prediction, in log-odds (positive = toward churn)."""

    feature: str
    contribution: float


class Prediction(BaseModel):
    """A churn prediction."""

    # The prediction's row in the prediction log (quote it when reporting a wrong answer).
    prediction_id: str
    customer_id: str | None = None
    probability: float = Field(ge=0, le=1)
    churn: bool
    threshold: float
    model_version: int
    reasons: list[Reason]
    features_from: Literal["request", "redis", "postgres"]


class BatchPrediction(BaseModel):
    """Predictions for a batch, in request order."""

    model_version: int
    predictions: list[Prediction]


class ModelMetrics(BaseModel):
    """The serving model's evaluation metrics and live counters."""

    model_name: str
    model_version: int
    alias: str
    threshold: float
    metrics: dict[str, float]
    lineage: dict[str, Any]
    served: dict[str, int]


class FeatureImportance(BaseModel):
    """Global feature importance of one model version."""

    model_version: int
    importance_type: str
    importance: dict[str, float]


class PromoteRequest(BaseModel):
    """Move the serving alias to a version (through the promotion gates)."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    reason: str = Field("", max_length=500)


class ReloadResult(BaseModel):
    """What a reload did on the replica that answered."""

    model_version: int
    changed: bool
    error: str | None = None


class ErrorDetail(BaseModel):
    """One problem with a request, naming the field."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """Machine-readable error body of every 4xx/5xx answer."""

    error: str
    detail: list[ErrorDetail] = Field(default_factory=list)
