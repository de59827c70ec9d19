"""HTTP request and response models; the feature fields are derived from the feature contract."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from churn_core.contract import FeatureContract, FeatureSpec
from churn_core.evaluation import CalibrationBin, LiftBin, ThresholdMetrics

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


# --- the web dashboard's read-only views (``/v1/dashboard/...``, role ``viewer``) -------------


class ScoredCustomer(BaseModel):
    """One customer's batch score: probability, label, top reasons and which slice it is from."""

    customer_id: str
    probability: float = Field(ge=0, le=1)
    churn: bool
    threshold: float | None = None
    reasons: list[Reason]
    snapshot_date: date
    model_version: int
    scored_at: datetime | None = None


class ScoresPage(BaseModel):
    """A page of the latest scoring slice, filtered and sorted on the server.

    ``snapshot_date`` and ``model_version`` name the slice (``None``: nothing scored yet);
    ``customers`` and ``at_risk`` count the slice within the caller's customer scope,
    ``matching`` the rows that pass the filters.
    """

    snapshot_date: date | None
    model_version: int | None
    scored_at: datetime | None
    threshold: float | None
    customers: int
    at_risk: int
    matching: int
    offset: int
    limit: int
    sort: str
    order: str
    items: list[ScoredCustomer]
    # Feature names a reason filter may name (the serving contract's).
    features: list[str]


class ScoreHistoryPoint(BaseModel):
    """The customer's score in one slice (snapshot, model version)."""

    snapshot_date: date
    model_version: int
    probability: float
    churn: bool
    scored_at: datetime | None = None


class CustomerDetail(BaseModel):
    """One customer: the current score, its history, the scored features and every feature's push.

    ``contributions`` are exact SHAP values (log-odds) of every contract feature for the features
    the score was computed from, explained by ``explained_by`` (the serving version);
    ``base_value`` + the contributions = the log-odds of ``explained_probability``.
    """

    customer_id: str
    score: ScoredCustomer
    history: list[ScoreHistoryPoint]
    features: dict[str, float | bool | str | None]
    contributions: list[Reason]
    base_value: float | None
    explained_by: int | None
    explained_probability: float | None


class VersionSummary(BaseModel):
    """A registered version as the model page lists it."""

    version: int
    created_at: datetime
    aliases: list[str]
    metrics: dict[str, float]
    threshold: float | None
    registered_by: str | None
    has_report: bool
    lineage: dict[str, Any]


class AliasMove(BaseModel):
    """One recorded move of an alias."""

    alias: str
    action: str
    from_version: int | None
    to_version: int
    at: datetime
    actor: str
    reason: str
    forced: bool


class ModelCatalog(BaseModel):
    """Every version of the served model, its aliases and their recent moves."""

    model_name: str
    serving_alias: str
    serving_version: int
    aliases: dict[str, int]
    versions: list[VersionSummary]
    alias_history: list[AliasMove]


class CurvePoints(BaseModel):
    """A curve (ROC: false/true positive rate; PR: recall/precision), subsampled."""

    x: list[float]
    y: list[float]


class ModelReport(BaseModel):
    """A version's evaluation report on its test split (``report.json`` stored with it)."""

    model_version: int
    n: int
    positives: int
    base_rate: float
    metrics: dict[str, float]
    roc: CurvePoints | None
    pr: CurvePoints | None
    # The evaluation's own records (churn_core.evaluation), as report.json stores them.
    calibration: list[CalibrationBin]
    lift: list[LiftBin]
    at_threshold: ThresholdMetrics | None
    # {"<segment>=<value>": {"n": ..., "roc_auc": ..., ...}}
    segments: dict[str, dict[str, float | None]]
    # {"gain" | "cover" | "weight" | "shap": {"<feature>": value}}
    importance: dict[str, dict[str, float]]
    notes: list[str]


class DriftPoint(BaseModel):
    """One feature's statistics in one drift run."""

    run_id: str
    run_at: datetime
    model_version: int
    n_reference: int
    n_current: int
    psi: float | None
    js_distance: float | None
    ks_pvalue: float | None
    chi2_pvalue: float | None
    status: str


class FeatureDriftSeries(BaseModel):
    """One feature (or the score) across drift runs, oldest first."""

    feature: str
    kind: str
    points: list[DriftPoint]


class DriftRunSummary(BaseModel):
    """One drift run: its window and what drifted."""

    run_id: str
    run_at: datetime
    model_version: int
    window_start: datetime
    window_end: datetime
    n_current: int
    drifted: list[str]
    insufficient: int


class DriftAlert(BaseModel):
    """An alert a drift run raised: one per drifted feature (what the job emails and posts)."""

    run_id: str
    run_at: datetime
    model_version: int
    feature: str
    kind: str
    reasons: list[str]
    psi: float | None
    js_distance: float | None


class DriftHistory(BaseModel):
    """The latest drift runs (newest first), per-feature series and the alerts they raised."""

    runs: list[DriftRunSummary]
    features: list[FeatureDriftSeries]
    alerts: list[DriftAlert]


class HistogramBucket(BaseModel):
    """Requests that took at most ``le`` seconds (cumulative; ``le`` None is +Inf)."""

    le: float | None
    count: float


class RouteStats(BaseModel):
    """One route's request counts by status and its latency histogram, since the replica began."""

    route: str
    requests: dict[str, float]
    latency_count: float
    latency_sum: float
    buckets: list[HistogramBucket]


class LiveStats(BaseModel):
    """The answering replica's own counters (cumulative since ``started_at``).

    Rates need two samples of the same ``replica``: behind HAProxy successive polls may reach
    different replicas, each with counters of its own.
    """

    replica: str
    started_at: datetime
    now: datetime
    model_version: int
    routes: list[RouteStats]
    cache: dict[str, float]
    predictions: dict[str, float]
    rate_limited: float
