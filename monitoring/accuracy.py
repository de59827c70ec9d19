"""Accuracy tracking: logged predictions joined to the churn observed since, per model version.

A logged prediction says "customer c, described as of day T, churns with probability p". Once
the contract's horizon after T has been observed, the prediction has a label, computed exactly
as gold computes the training label (``pipelines/features.py``), so the job measures the model
on the target it was trained for. For a label of kind ``event_within_horizon`` (the only kind
supported so far) with event column ``e`` (e.g. ``cancelled_at``) and horizon ``h`` days, and
``T`` taken as the instant ``T 00:00 UTC`` (features for T use events strictly before it):

* ``excluded``  ``e < T``: the customer was gone before the prediction was about them (gold has
  no such row either); counted, not scored;
* ``positive``  ``T <= e < T + h days``;
* ``negative``  no event before ``T + h days``, and the source is observed through at least
  ``T + h days`` (or the event came later);
* ``pending``   otherwise: the horizon is not over yet; counted, not scored;
* ``unknown``   the customer id is not in the label source at all; counted, not scored.

"Observed through" is how far the label source is known to be complete: the newest change
timestamp in it (the source's ``order_by``, e.g. ``updated_at``, which is also the watermark
the incremental reader advances by), capped by the newest ingestion time of its silver rows and
by now, so a clock running ahead in the source cannot make an unfinished horizon look finished.

The same customer scored several times for the same ``as_of`` by the same version counts once
(the latest score). Results per model version and per week or month of ``as_of``, and per
version overall, go to the Delta table ``tables.accuracy`` (appended, one row per version and
period per run), to the registry's metric history (per version overall), to MongoDB when
``monitoring.mongodb_url`` is set, and to Prometheus through the job metrics. A version whose
ROC-AUC falls more than a tolerance below its registration (test split) ROC-AUC, measured on
enough labelled predictions, raises an ``accuracy`` alert.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from churn_core.contract import FeatureContract, load_contract
from churn_core.evaluation import CalibrationBin, evaluate, json_safe
from churn_core.job_metrics import JobMetrics
from churn_core.logging import get_logger
from churn_core.prediction_log import query_delta, table_exists
from churn_core.registry import Registry, RegistryError
from churn_core.settings import MonitoringSettings, Settings
from churn_core.tables import Tables
from monitoring.alerts import (
    Alert,
    AlertDispatcher,
    DispatchResult,
    dispatch_configured,
    undelivered,
)

if TYPE_CHECKING:
    from churn_core.registry import ModelVersion

log = get_logger(__name__)

Outcome = Literal["positive", "negative", "pending", "excluded", "unknown"]
Period = Literal["week", "month"]
Verdict = Literal["ok", "drop", "insufficient_labels", "undefined", "no_reference", "unregistered"]
OUTCOMES: tuple[Outcome, ...] = ("positive", "negative", "pending", "excluded", "unknown")
# The period label of a version's row over all its periods.
OVERALL = "all"
METRICS_SOURCE = "monitoring.accuracy"
MONGO_COLLECTION = "accuracy_runs"

CALIBRATION_TYPE = pa.list_(
    pa.struct(
        [
            pa.field("n", pa.int64()),
            pa.field("score_min", pa.float64()),
            pa.field("score_max", pa.float64()),
            pa.field("mean_score", pa.float64()),
            pa.field("observed_rate", pa.float64()),
        ]
    )
)
ACCURACY_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("run_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        # week | month: how as_of was grouped in this run.
        pa.field("period_unit", pa.string(), nullable=False),
        # "2025-03", "2025-W10", or "all" for the version's row over every period.
        pa.field("period", pa.string(), nullable=False),
        pa.field("period_start", pa.date32()),
        pa.field("period_end", pa.date32()),  # exclusive
        # Distinct (customer, as_of) predictions, and what became of them.
        pa.field("predictions", pa.int64(), nullable=False),
        pa.field("labelled", pa.int64(), nullable=False),
        pa.field("positives", pa.int64(), nullable=False),
        pa.field("pending", pa.int64(), nullable=False),
        pa.field("excluded", pa.int64(), nullable=False),
        pa.field("unknown", pa.int64(), nullable=False),
        # Metrics on the labelled predictions (null without labels, AUCs null with one class).
        pa.field("observed_rate", pa.float64()),
        pa.field("mean_score", pa.float64()),
        pa.field("roc_auc", pa.float64()),
        pa.field("pr_auc", pa.float64()),
        pa.field("brier", pa.float64()),
        pa.field("log_loss", pa.float64()),
        pa.field("ece", pa.float64()),
        pa.field("calibration", CALIBRATION_TYPE),
        pa.field("notes", pa.list_(pa.string())),
        pa.field("horizon_days", pa.int64(), nullable=False),
        pa.field("observed_through", pa.timestamp("us", tz="UTC")),
        pa.field("lookback_start", pa.date32()),
    ]
)


class AccuracyError(RuntimeError):
    """The accuracy job cannot run as configured (the message says what and where)."""


# -- labels ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSource:
    """Where a contract's outcomes are read from and how far that source is observed."""

    name: str
    path: Path
    key: str
    event_column: str
    observed_column: str
    horizon_days: int


def label_source(contract: FeatureContract, tables: Tables) -> LabelSource:
    """The label source of ``contract``, or an :class:`AccuracyError` saying what is missing."""
    label = contract.label
    if label.kind != "event_within_horizon":
        raise AccuracyError(
            f"contract {contract.name}: label kind {label.kind!r} is not supported by the "
            "accuracy job yet (only 'event_within_horizon')"
        )
    if contract.snapshot is None:
        raise AccuracyError(f"contract {contract.name}: an event label needs snapshot.horizon_days")
    source = contract.sources[label.source]
    if source.role != "entity":
        raise AccuracyError(
            f"contract {contract.name}: label source {label.source!r} is an {source.role} "
            "source; the accuracy job reads the event time from the entity table"
        )
    observed = source.order_by or source.event_time
    if observed is None:
        raise AccuracyError(
            f"contract {contract.name}: label source {label.source!r} declares no order_by "
            "column, so how far it is observed is unknown"
        )
    return LabelSource(
        name=label.source,
        path=tables.silver(label.source),
        key=contract.entity_key,
        event_column=label.column,
        observed_column=observed,
        horizon_days=contract.snapshot.horizon_days,
    )


def _quote(identifier: str) -> str:
    # DataFusion folds unquoted identifiers to lower case ("customerID" would not be found).
    return '"' + identifier.replace('"', '""') + '"'


def _require_table(source: LabelSource) -> None:
    if not table_exists(source.path):
        raise AccuracyError(
            f"label source {source.name!r} has no silver table at {source.path} (run churn ingest)"
        )


def read_outcome_events(source: LabelSource) -> pd.DataFrame:
    """Every entity of the label source: ``customer_id`` and its ``event_at`` (NaT if none)."""
    _require_table(source)
    sql = (
        f"SELECT CAST({_quote(source.key)} AS VARCHAR) AS customer_id,"
        f" {_quote(source.event_column)} AS event_at FROM source"
    )
    frame = query_delta({"source": source.path}, sql).to_pandas()
    frame["event_at"] = as_utc(frame["event_at"])
    # Silver holds one row per key; guard anyway, a duplicate would duplicate predictions.
    return frame.drop_duplicates("customer_id", keep="last")


def observed_through(source: LabelSource, now: datetime) -> datetime | None:
    """How far the label source is known to be complete (None when it is empty)."""
    from deltalake import DeltaTable

    _require_table(source)
    columns = {f.name for f in DeltaTable(str(source.path)).schema().fields}
    parts = [f"MAX({_quote(source.observed_column)}) AS observed"]
    if "_ingested_at" in columns:
        parts.append('MAX("_ingested_at") AS ingested')
    row = query_delta({"source": source.path}, f"SELECT {', '.join(parts)} FROM source")
    values = [_to_utc(v) for v in row.to_pylist()[0].values()]
    if values[0] is None:
        return None
    return min([v for v in values if v is not None] + [now.astimezone(UTC)])


def as_utc(column: pd.Series) -> pd.Series:
    """A timestamp column in UTC (naive timestamps are taken as UTC, as Spark writes them)."""
    converted = pd.to_datetime(column)
    if converted.dt.tz is None:
        return converted.dt.tz_localize(UTC)
    return converted.dt.tz_convert(UTC)


def _to_utc(value: Any) -> datetime | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    moment = pd.Timestamp(value)
    moment = moment.tz_localize(UTC) if moment.tz is None else moment.tz_convert(UTC)
    converted: datetime = moment.to_pydatetime()
    return converted


def assign_outcomes(
    predictions: pd.DataFrame,
    events: pd.DataFrame,
    horizon_days: int,
    observed: datetime | None,
) -> pd.DataFrame:
    """``predictions`` with ``event_at`` and ``outcome`` (see the module docstring for the rules).

    ``predictions`` needs ``customer_id`` and ``as_of`` (dates); ``events`` is what
    :func:`read_outcome_events` returns.
    """
    known = events.assign(_known=True)
    frame = predictions.merge(known, on="customer_id", how="left", validate="many_to_one")
    start = pd.to_datetime(frame["as_of"]).dt.tz_localize(UTC)
    end = start + pd.Timedelta(days=horizon_days)
    event = as_utc(frame["event_at"])
    horizon_seen = (
        (end <= pd.Timestamp(observed)) if observed is not None else pd.Series(False, frame.index)
    )
    # np.select takes the first condition that holds; NaT compares False everywhere.
    outcome = np.select(
        [
            frame["_known"].isna().to_numpy(),
            (event < start).to_numpy(),
            ((event >= start) & (event < end)).to_numpy(),
            ((event >= end) | horizon_seen).to_numpy(),
        ],
        ["unknown", "excluded", "positive", "negative"],
        default="pending",
    )
    return frame.drop(columns="_known").assign(event_at=event, outcome=outcome)


# -- predictions -------------------------------------------------------------------------------


def _string_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _log_filter(model_name: str, since: date | None) -> str:
    condition = f"model_name = {_string_literal(model_name)}"
    if since is not None:
        # log_date is the partition column: older days are not read at all.
        condition += f" AND log_date >= DATE '{since.isoformat()}'"
    return condition


def read_latest_predictions(log_path: Path, model_name: str, since: date | None) -> pd.DataFrame:
    """One row per (model_version, customer_id, as_of): the latest logged score, and ``copies``.

    Rows without a customer id cannot be labelled and are left out (see :func:`count_logged`).
    """
    sql = f"""
        SELECT model_version, customer_id, as_of, probability, threshold, logged_at, copies
        FROM (
            SELECT model_version, customer_id, as_of, probability, threshold, logged_at,
                ROW_NUMBER() OVER (
                    PARTITION BY model_version, customer_id, as_of
                    ORDER BY logged_at DESC, prediction_id DESC
                ) AS latest,
                COUNT(*) OVER (PARTITION BY model_version, customer_id, as_of) AS copies
            FROM log
            WHERE {_log_filter(model_name, since)} AND customer_id IS NOT NULL
        ) AS ranked
        WHERE latest = 1
    """
    frame = query_delta({"log": log_path}, sql).to_pandas()
    frame["as_of"] = pd.to_datetime(frame["as_of"]).dt.date
    return frame


def count_logged(log_path: Path, model_name: str, since: date | None) -> pd.DataFrame:
    """Per model version: rows logged, and rows without a customer id (never labelled)."""
    sql = f"""
        SELECT model_version, COUNT(*) AS logged,
            SUM(CASE WHEN customer_id IS NULL THEN 1 ELSE 0 END) AS anonymous
        FROM log WHERE {_log_filter(model_name, since)}
        GROUP BY model_version
    """
    return query_delta({"log": log_path}, sql).to_pandas()


# -- periods and scores ------------------------------------------------------------------------


def period_bounds(as_of: date, unit: Period) -> tuple[date, date, str]:
    """The period holding ``as_of``: start, end (exclusive) and label (``2025-03``, ``2025-W10``)."""
    if unit == "week":
        start = as_of - timedelta(days=as_of.weekday())
        year, week, _ = start.isocalendar()
        return start, start + timedelta(days=7), f"{year}-W{week:02d}"
    start = as_of.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end, f"{start.year}-{start.month:02d}"


@dataclass(frozen=True)
class AccuracyRow:
    """Accuracy of one model version over one period (``period == "all"``: every period)."""

    model_version: int
    period: str
    period_start: date | None
    period_end: date | None
    predictions: int
    labelled: int
    positives: int
    pending: int
    excluded: int
    unknown: int
    observed_rate: float | None = None
    mean_score: float | None = None
    roc_auc: float | None = None
    pr_auc: float | None = None
    brier: float | None = None
    log_loss: float | None = None
    ece: float | None = None
    calibration: list[CalibrationBin] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Defined metrics and the counts, as floats (what the registry records)."""
        values: dict[str, float | None] = {
            "roc_auc": self.roc_auc,
            "pr_auc": self.pr_auc,
            "brier": self.brier,
            "log_loss": self.log_loss,
            "ece": self.ece,
            "observed_rate": self.observed_rate,
            "mean_score": self.mean_score,
            "labelled": self.labelled,
            "positives": self.positives,
            "pending": self.pending,
            "excluded": self.excluded,
        }
        return {k: float(v) for k, v in values.items() if v is not None}


def _modal_threshold(thresholds: pd.Series) -> float:
    # A version records one threshold; the mode guards against a stray row logged otherwise.
    return float(thresholds.mode().iloc[0])


def score_group(
    group: pd.DataFrame,
    version: int,
    period: str,
    bounds: tuple[date | None, date | None],
) -> AccuracyRow:
    """Counts of each outcome and the metrics of the labelled rows of one group."""
    counts = group["outcome"].value_counts()
    labelled = group[group["outcome"].isin(["positive", "negative"])]
    base = AccuracyRow(
        model_version=version,
        period=period,
        period_start=bounds[0],
        period_end=bounds[1],
        predictions=len(group),
        labelled=len(labelled),
        positives=int(counts.get("positive", 0)),
        pending=int(counts.get("pending", 0)),
        excluded=int(counts.get("excluded", 0)),
        unknown=int(counts.get("unknown", 0)),
    )
    if labelled.empty:
        return replace(base, notes=[f"no labelled predictions yet ({base.pending} pending)"])
    labels = (labelled["outcome"] == "positive").to_numpy(dtype=np.int64)
    scores = labelled["probability"].to_numpy(dtype=np.float64)
    result = evaluate(labels, scores, _modal_threshold(labelled["threshold"]))
    return replace(
        base,
        observed_rate=result.base_rate,
        mean_score=result.mean_score,
        roc_auc=result.roc_auc,
        pr_auc=result.pr_auc,
        brier=result.brier,
        log_loss=result.log_loss,
        ece=result.ece,
        calibration=result.calibration,
        notes=result.notes,
    )


def score_versions(outcomes: pd.DataFrame, unit: Period) -> list[AccuracyRow]:
    """Per version: one row per period of ``as_of`` (oldest first), then the overall row."""
    if outcomes.empty:
        return []
    bounds = {day: period_bounds(day, unit) for day in outcomes["as_of"].unique()}
    frame = outcomes.assign(_period=outcomes["as_of"].map(lambda d: bounds[d][2]))
    rows: list[AccuracyRow] = []
    for version, by_version in frame.groupby("model_version", sort=True):
        for label, group in by_version.groupby("_period", sort=True):
            start, end, _ = bounds[group["as_of"].iloc[0]]
            rows.append(score_group(group, int(version), str(label), (start, end)))
        rows.append(score_group(by_version, int(version), OVERALL, (None, None)))
    return rows


# -- verdicts and alerts -----------------------------------------------------------------------


@dataclass(frozen=True)
class VersionCheck:
    """A version's overall ROC-AUC against the ROC-AUC it was registered with."""

    model_version: int
    labelled: int
    positives: int
    pending: int
    measured: float | None
    expected: float | None
    verdict: Verdict


def check_version(
    row: AccuracyRow, registered: ModelVersion | None, settings: MonitoringSettings
) -> VersionCheck:
    """Whether ``row`` (a version's overall row) shows a drop beyond the tolerance."""
    expected = registered.metrics.get("roc_auc") if registered is not None else None
    verdict: Verdict
    if (
        row.labelled < settings.accuracy_min_labels
        or row.positives < settings.accuracy_min_positives
    ):
        verdict = "insufficient_labels"
    elif row.roc_auc is None:
        verdict = "undefined"  # one class only among the labelled predictions
    elif registered is None:
        verdict = "unregistered"
    elif expected is None:
        verdict = "no_reference"
    elif row.roc_auc < expected - settings.accuracy_drop_tolerance:
        verdict = "drop"
    else:
        verdict = "ok"
    return VersionCheck(
        model_version=row.model_version,
        labelled=row.labelled,
        positives=row.positives,
        pending=row.pending,
        measured=row.roc_auc,
        expected=expected,
        verdict=verdict,
    )


def is_sufficient(check: VersionCheck) -> bool:
    """Whether the version's metrics rest on enough labels (of both classes) to be judged."""
    return check.verdict not in ("insufficient_labels", "undefined")


def drop_alert(model_name: str, check: VersionCheck, tolerance: float) -> Alert:
    """The ``accuracy`` alert for a version whose ROC-AUC dropped."""
    assert check.measured is not None and check.expected is not None
    version = f"v{check.model_version}"
    return Alert(
        kind="accuracy",
        severity="critical",
        # Measured values stay out of the title: the fingerprint must not change with them.
        title=f"ROC-AUC of {model_name} {version} dropped below its registration value",
        summary=(
            f"{model_name} {version} scores ROC-AUC {check.measured:.3f} on "
            f"{check.labelled} labelled predictions ({check.positives} churned), against "
            f"{check.expected:.3f} on its test split at registration (tolerance "
            f"{tolerance:.3f}). Roll back to the previous champion or retrain."
        ),
        details={
            "model_name": model_name,
            "model_version": str(check.model_version),
            "measured_roc_auc": check.measured,
            "expected_roc_auc": check.expected,
            "tolerance": tolerance,
            "labelled": check.labelled,
            "positives": check.positives,
            "pending": check.pending,
        },
    )


@dataclass
class AccuracyRun:
    """What one accuracy run measured, stored and sent."""

    run_id: str
    run_at: datetime
    model_name: str
    period_unit: Period
    lookback_start: date | None
    rows: list[AccuracyRow] = field(default_factory=list)
    checks: list[VersionCheck] = field(default_factory=list)
    # Per label source: horizon and how far it is observed (usually one source).
    horizon_days: dict[int, int] = field(default_factory=dict)
    observed_through: dict[int, datetime | None] = field(default_factory=dict)
    logged: int = 0
    anonymous: int = 0
    alerts: list[Alert] = field(default_factory=list)
    dispatch: DispatchResult | None = None
    recorded_versions: list[int] = field(default_factory=list)
    mongo: str = "off"
    metrics_target: str = ""
    # Stores that could not be written: the run still measured and alerted (CLI exits 1).
    sink_errors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def overall(self) -> list[AccuracyRow]:
        """Each version's row over all its periods."""
        return [row for row in self.rows if row.period == OVERALL]

    def total(self, count: str) -> int:
        """A count (``predictions``, ``labelled``, ``pending`` ...) summed over the versions."""
        return sum(int(getattr(row, count)) for row in self.overall())


class _Stopwatch:
    def __init__(self, timings: dict[str, float]) -> None:
        self._timings = timings
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self._timings[phase] = round(now - self._last, 3)
        self._last = now


def _run_clock(now: datetime | None) -> datetime:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    # Milliseconds: what MongoDB keeps, so the registry record and the Delta row agree.
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _version_metadata(registry: Registry, name: str, version: int) -> ModelVersion | None:
    try:
        return registry.get(name, version)
    except RegistryError as error:
        log.warning(
            "accuracy_version_not_registered", model=name, version=version, error=str(error)
        )
        return None


def version_contracts(
    registry: Registry,
    name: str,
    registered: Mapping[int, ModelVersion | None],
    contract_path: Path,
) -> dict[int, FeatureContract]:
    """Each version's own contract: its predictions mean what its label definition meant.

    A version the registry does not know is labelled with the data set's current contract.
    """
    contracts: dict[int, FeatureContract] = {}
    for version, meta in registered.items():
        if meta is not None:
            contracts[version] = registry.load_contract(name, version)
        else:
            contracts[version] = load_contract(contract_path)
    return contracts


def label_predictions(
    predictions: pd.DataFrame,
    contracts: Mapping[int, FeatureContract],
    tables: Tables,
    now: datetime,
    run: AccuracyRun,
) -> pd.DataFrame:
    """Outcomes of every prediction, each version labelled by its own contract's definition."""
    frames = []
    cache: dict[LabelSource, tuple[pd.DataFrame, datetime | None]] = {}
    for version, group in predictions.groupby("model_version", sort=True):
        source = label_source(contracts[int(version)], tables)
        if source not in cache:
            cache[source] = (read_outcome_events(source), observed_through(source, now))
        events, observed = cache[source]
        run.horizon_days[int(version)] = source.horizon_days
        run.observed_through[int(version)] = observed
        frames.append(assign_outcomes(group, events, source.horizon_days, observed))
    return pd.concat(frames, ignore_index=True) if frames else predictions.assign(outcome=[])


def run_accuracy(
    settings: Settings,
    registry: Registry,
    tables: Tables,
    *,
    now: datetime | None = None,
    dispatcher: AlertDispatcher | None = None,
) -> AccuracyRun:
    """Label the logged predictions, score them per version and period, store, alert, export.

    ``now`` fixes the run's clock (lookback window, observation cap, timestamps); ``dispatcher``
    replaces the one built from ``monitoring.alerts``. Raises :class:`AccuracyError` when the
    label definition or its source is unusable; a store other than Delta that fails is
    reported in ``sink_errors`` after everything else was done.
    """
    monitoring = settings.monitoring
    run_at = _run_clock(now)
    lookback = monitoring.accuracy_lookback_days
    run = AccuracyRun(
        run_id=uuid.uuid4().hex,
        run_at=run_at,
        model_name=settings.model_name,
        period_unit=monitoring.accuracy_period,
        lookback_start=(run_at - timedelta(days=lookback)).date() if lookback else None,
    )
    started = time.perf_counter()
    metrics = JobMetrics("churn-accuracy")  # from the start: its duration gauge times the whole run
    watch = _Stopwatch(run.timings)
    predictions = _read_log(tables.prediction_log, run)
    watch.lap("read")
    registered = {
        v: _version_metadata(registry, run.model_name, v)
        for v in sorted(predictions["model_version"].unique().tolist())
    }
    contracts = version_contracts(registry, run.model_name, registered, settings.contract_path)
    outcomes = label_predictions(predictions, contracts, tables, run_at, run)
    watch.lap("label")
    run.rows = score_versions(outcomes, run.period_unit)
    run.checks = [check_version(r, registered[r.model_version], monitoring) for r in run.overall()]
    run.alerts = [
        drop_alert(run.model_name, c, monitoring.accuracy_drop_tolerance)
        for c in run.checks
        if c.verdict == "drop"
    ]
    watch.lap("score")
    _store(run, settings, registry, tables, registered)
    watch.lap("store")
    run.dispatch = dispatch_configured(
        run.alerts,
        settings.monitoring.alerts,
        settings.resolve(settings.monitoring.alerts.state_path),
        dispatcher,
    )
    run.sink_errors.extend(undelivered(run.dispatch))
    watch.lap("alert")
    run.metrics_target = publish_metrics(run, settings, metrics)
    run.timings["total"] = round(time.perf_counter() - started, 3)
    log.info(
        "accuracy_run_done",
        run_id=run.run_id,
        versions=len(run.checks),
        predictions=run.total("predictions"),
        labelled=run.total("labelled"),
        pending=run.total("pending"),
        alerts=len(run.alerts),
        seconds=run.timings["total"],
    )
    return run


def _read_log(log_path: Path, run: AccuracyRun) -> pd.DataFrame:
    if not table_exists(log_path):
        log.info("accuracy_no_prediction_log", path=str(log_path))
        return pd.DataFrame(
            {
                "model_version": pd.Series(dtype="int64"),
                "customer_id": pd.Series(dtype="object"),
                "as_of": pd.Series(dtype="object"),
                "probability": pd.Series(dtype="float64"),
                "threshold": pd.Series(dtype="float64"),
            }
        )
    counts = count_logged(log_path, run.model_name, run.lookback_start)
    run.logged = int(counts["logged"].sum())
    run.anonymous = int(counts["anonymous"].fillna(0).sum())
    return read_latest_predictions(log_path, run.model_name, run.lookback_start)


# -- stores ------------------------------------------------------------------------------------


def accuracy_table(run: AccuracyRun) -> pa.Table:
    """The run's rows in the Delta accuracy table's schema."""
    records = [
        {
            **asdict(row),
            "calibration": [asdict(b) for b in row.calibration],
            "run_id": run.run_id,
            "run_at": run.run_at,
            "model_name": run.model_name,
            "period_unit": run.period_unit,
            "horizon_days": run.horizon_days.get(row.model_version, 0),
            "observed_through": run.observed_through.get(row.model_version),
            "lookback_start": run.lookback_start,
        }
        for row in run.rows
    ]
    columns = {name: [r[name] for r in records] for name in ACCURACY_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=ACCURACY_SCHEMA)


def write_accuracy_table(path: Path, table: pa.Table) -> None:
    """Append the run's rows to the Delta accuracy table (created on first write)."""
    from deltalake import write_deltalake

    if table.num_rows:
        write_deltalake(str(path), table, mode="append")


def _store(
    run: AccuracyRun,
    settings: Settings,
    registry: Registry,
    tables: Tables,
    registered: Mapping[int, ModelVersion | None],
) -> None:
    write_accuracy_table(tables.accuracy, accuracy_table(run))
    try:
        run.recorded_versions = record_in_registry(run, registry, registered)
    except Exception as error:
        run.sink_errors.append(f"registry metric history not written: {_describe(error)}")
    run.mongo = _store_in_mongo(run, settings.monitoring)


def record_in_registry(
    run: AccuracyRun, registry: Registry, registered: Mapping[int, ModelVersion | None]
) -> list[int]:
    """Each registered version's overall metrics into the registry's metric history."""
    checks = {c.model_version: c for c in run.checks}
    periods = {
        v: [r for r in run.rows if r.model_version == v and r.period != OVERALL] for v in checks
    }
    recorded = []
    for row in run.overall():
        if row.labelled == 0 or registered.get(row.model_version) is None:
            continue
        check = checks[row.model_version]
        registry.record_metrics(
            run.model_name,
            row.model_version,
            row.metrics(),
            source=METRICS_SOURCE,
            at=run.run_at,
            details=json_safe(
                {
                    "run_id": run.run_id,
                    "verdict": check.verdict,
                    "expected_roc_auc": check.expected,
                    "period_unit": run.period_unit,
                    "horizon_days": run.horizon_days.get(row.model_version),
                    "observed_through": _iso(run.observed_through.get(row.model_version)),
                    "lookback_start": _iso(run.lookback_start),
                    "periods": [
                        {
                            "period": p.period,
                            "labelled": p.labelled,
                            "positives": p.positives,
                            "pending": p.pending,
                            "roc_auc": p.roc_auc,
                            "brier": p.brier,
                            "ece": p.ece,
                        }
                        for p in periods[row.model_version]
                    ],
                }
            ),
        )
        recorded.append(row.model_version)
    return recorded


def mongo_document(run: AccuracyRun) -> dict[str, Any]:
    """The run as one MongoDB document (``accuracy_runs``)."""
    document: dict[str, Any] = json_safe(
        {
            "run_id": run.run_id,
            "model_name": run.model_name,
            "period_unit": run.period_unit,
            "lookback_start": _iso(run.lookback_start),
            "logged": run.logged,
            "anonymous": run.anonymous,
            "horizon_days": {str(k): v for k, v in run.horizon_days.items()},
            "observed_through": {str(k): _iso(v) for k, v in run.observed_through.items()},
            "rows": [
                {
                    **asdict(row),
                    "period_start": _iso(row.period_start),
                    "period_end": _iso(row.period_end),
                }
                for row in run.rows
            ],
            "checks": [asdict(c) for c in run.checks],
            "alerts": [a.title for a in run.alerts],
        }
    )
    # A real date, so runs can be queried and indexed by time.
    document["run_at"] = run.run_at
    document["_id"] = run.run_id
    return document


def _store_in_mongo(run: AccuracyRun, settings: MonitoringSettings) -> str:
    if settings.mongodb_url is None:
        return "off"
    from pymongo import MongoClient

    from churn_core.tls import mongo_options

    client: MongoClient[dict[str, Any]] | None = None
    try:
        client = MongoClient(
            settings.mongodb_url.get_secret_value(),
            serverSelectionTimeoutMS=int(settings.mongodb_timeout_s * 1000),
            **mongo_options(settings.mongodb_tls, "monitoring.mongodb_tls"),
        )
        client[settings.mongodb_database][MONGO_COLLECTION].insert_one(mongo_document(run))
    except Exception as error:
        # The URL may carry a password: the error's type and pymongo's text, never the URL.
        message = _describe(error).replace(settings.mongodb_url.get_secret_value(), "***")
        target = f"{settings.mongodb_database}.{MONGO_COLLECTION}"
        run.sink_errors.append(f"mongodb {target} not written: {message}")
        return "failed"
    finally:
        if client is not None:
            client.close()
    return f"{settings.mongodb_database}.{MONGO_COLLECTION}"


def publish_metrics(run: AccuracyRun, settings: Settings, metrics: JobMetrics) -> str:
    """The run's Prometheus metrics; quality gauges only for versions with enough labels.

    The success time is set only when every store and alert went through: a run that exits
    non-zero must not look fresh to a staleness alert.
    """
    version = ["model_version"]
    roc_auc = metrics.gauge(
        "churn_model_roc_auc", "ROC-AUC on labelled predictions (enough labels only).", version
    )
    brier = metrics.gauge(
        "churn_model_brier_score", "Brier score on labelled predictions.", version
    )
    ece = metrics.gauge(
        "churn_model_calibration_error",
        "Expected calibration error (equal-frequency deciles) on labelled predictions.",
        version,
    )
    labelled = metrics.gauge(
        "churn_accuracy_labelled_predictions", "Predictions whose outcome is known.", version
    )
    pending = metrics.gauge(
        "churn_accuracy_pending_predictions", "Predictions whose horizon is not over.", version
    )
    rows = {row.model_version: row for row in run.overall()}
    for check in run.checks:
        row, label = rows[check.model_version], str(check.model_version)
        labelled.labels(label).set(row.labelled)
        pending.labels(label).set(row.pending)
        # ChurnModelAccuracyDrop fires on churn_model_roc_auc alone: an AUC of a few labels
        # would page someone on noise, so it is exported only once it is worth judging.
        if not is_sufficient(check):
            continue
        _set_if_defined(roc_auc, label, row.roc_auc)
        _set_if_defined(brier, label, row.brier)
        _set_if_defined(ece, label, row.ece)
    if not run.sink_errors:
        metrics.mark_success()
    return metrics.publish(settings.monitoring, settings.resolve(Path(".")))


def _set_if_defined(gauge: Any, label: str, value: float | None) -> None:
    if value is not None:
        gauge.labels(label).set(value)


def _iso(value: date | datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _describe(error: BaseException) -> str:
    message = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
