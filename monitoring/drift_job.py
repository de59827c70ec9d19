"""The drift job: the champion's training sample against a window of the prediction log.

One run (:func:`run_drift`):

1. resolves the serving alias (``serve.alias``, ``champion``) to a version and loads the
   reference sample stored with it (``reference.parquet``: training rows and their scores);
2. reads the prediction log's window ``[now - drift_window_hours, now)``, at most
   ``drift_max_rows`` of its newest rows (Delta through DataFusion, no Spark);
3. compares every contract feature over all rows of the window, and the score only over the
   rows of the reference's own version (another version's scores are another distribution);
4. appends one row per feature to the Delta drift table, and one document per run to MongoDB
   (``<monitoring.mongodb_database>.drift_runs``) when ``monitoring.mongodb_url`` is set;
5. exports ``churn_drift_psi``, ``churn_drift_js_distance``, ``churn_drift_status`` (0 ok,
   1 drift, 2 insufficient data) per feature and ``churn_drift_rows`` per window;
6. alerts (email, Slack) once per drifted feature, naming the statistics that alarmed with
   their values and thresholds. Nothing drifted, or too few rows: no alert.

Drift is a finding, not a failure: a run that found drift succeeded. A run fails when a result
store is unreachable or an alert reached no channel; every other step still runs first (an
alert must not be lost because MongoDB is down), and :attr:`DriftRun.problems` says what
failed, one line each.
"""

from __future__ import annotations

import io
import time
import typing
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from churn_core.contract import FeatureContract
from churn_core.job_metrics import JobMetrics
from churn_core.logging import get_logger
from churn_core.prediction_log import read_prediction_window
from churn_core.registry import ModelVersion, Registry
from churn_core.settings import MonitoringSettings, Settings
from churn_core.tables import Tables
from monitoring.alerts import (
    Alert,
    AlertDispatcher,
    dispatch_configured,
    undelivered,
)
from monitoring.drift import (
    DriftStatus,
    DriftThresholds,
    FeatureDrift,
    detect_drift,
    load_thresholds,
)

log = get_logger(__name__)

# Written by training/reference.py (monitoring may not import training; a unit test checks that
# both spell the same name).
REFERENCE_FILE = "reference.parquet"
# The score column of both the reference and the prediction log.
SCORE_COLUMN = "probability"
VERSION_COLUMN = "model_version"
MONGO_COLLECTION = "drift_runs"
# churn_drift_status values: ok 0, drift 1, insufficient_data 2 (DriftStatus's order, which
# monitoring/dashboards.py and the Prometheus rules read the same way).
STATUS_CODES: dict[str, int] = {
    status: code for code, status in enumerate(typing.get_args(DriftStatus))
}
_STATISTICS = ("psi", "js_distance", "ks_pvalue", "chi2_pvalue")


class DriftJobError(RuntimeError):
    """A drift run that cannot start or whose results did not all land (one line, no secrets)."""


class DriftRun(BaseModel):
    """What one drift run compared, found, stored and sent."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    run_at: datetime
    model_name: str
    model_version: int
    alias: str
    window_start: datetime
    window_end: datetime
    n_reference: int
    # Rows of the window (every version's); the score's sample is the reference version's only.
    n_current: int
    n_current_version: int
    features: list[FeatureDrift]
    thresholds: DriftThresholds
    results_table: str
    mongodb: str | None = None
    metrics_target: str = "not published"
    alerts: list[Alert] = Field(default_factory=list)
    alerts_sent: int = 0
    alerts_suppressed: int = 0
    seconds: float = 0.0
    # One line per failed step (result stores, alert delivery); empty when all went well.
    problems: list[str] = Field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        """Features (and the score) whose status is ``drift``, in report order."""
        return [f.feature for f in self.features if f.status == "drift"]

    @property
    def insufficient(self) -> list[str]:
        """Features (and the score) with too few rows on either side to judge."""
        return [f.feature for f in self.features if f.status == "insufficient_data"]


# -- the run ---------------------------------------------------------------------------------


def run_drift(
    settings: Settings,
    registry: Registry,
    tables: Tables,
    *,
    now: datetime | None = None,
    window_hours: float | None = None,
    dispatcher: AlertDispatcher | None = None,
) -> DriftRun:
    """Compare the serving version's reference with the prediction log's window ending ``now``.

    ``now`` (default: the current time; naive means UTC) replays a past window;
    ``window_hours`` overrides ``monitoring.drift_window_hours``; ``dispatcher`` replaces the
    one built from ``monitoring.alerts``. Raises when the run cannot start (no reference stored
    with the version, no such alias ...); failures after the comparison are listed in
    :attr:`DriftRun.problems` instead, once every step has run.
    """
    started = time.perf_counter()
    metrics = JobMetrics("churn-drift")
    run = measure_drift(settings, registry, tables, now=now, window_hours=window_hours)
    problems = store_results(run, settings.monitoring)
    record_metrics(metrics, run)
    if not problems:
        metrics.mark_success()
    target = metrics.publish(settings.monitoring, settings.resolve(Path(".")))
    alerts = drift_alerts(run)
    result = dispatch_configured(
        alerts,
        settings.monitoring.alerts,
        settings.resolve(settings.monitoring.alerts.state_path),
        dispatcher,
    )
    problems += undelivered(result)
    run = run.model_copy(
        update={
            "mongodb": describe_mongodb(settings.monitoring),
            "metrics_target": target,
            "alerts": alerts,
            "alerts_sent": len(result.sent) if result else 0,
            "alerts_suppressed": len(result.suppressed) if result else 0,
            "seconds": time.perf_counter() - started,
            "problems": problems,
        }
    )
    _log_run(run)
    return run


def measure_drift(
    settings: Settings,
    registry: Registry,
    tables: Tables,
    *,
    now: datetime | None = None,
    window_hours: float | None = None,
) -> DriftRun:
    """Resolve the version, load its reference, read the window, compare: nothing stored yet."""
    monitoring = settings.monitoring
    meta = registry.resolve(settings.model_name, settings.serve.alias)
    contract = registry.load_contract(meta.name, meta.version)
    thresholds = load_thresholds(settings.resolve(monitoring.thresholds_path))
    reference = load_reference(registry, meta)
    start, end = drift_window(
        now, monitoring.drift_window_hours if window_hours is None else window_hours
    )
    current = read_window(tables.prediction_log, contract, start, end, monitoring.drift_max_rows)
    features, version_rows = compare(contract, reference, current, thresholds, meta.version)
    return DriftRun(
        run_id=uuid.uuid4().hex,
        run_at=datetime.now(UTC),
        model_name=meta.name,
        model_version=meta.version,
        alias=settings.serve.alias,
        window_start=start,
        window_end=end,
        n_reference=len(reference),
        n_current=len(current),
        n_current_version=version_rows,
        features=features,
        thresholds=thresholds,
        results_table=str(tables.drift_results),
    )


def drift_window(now: datetime | None, hours: float) -> tuple[datetime, datetime]:
    """``(start, end)`` of the ``hours`` before ``now`` (default: the current time), in UTC."""
    if hours <= 0:
        raise DriftJobError(f"the drift window must be positive, got {hours} hours")
    end = _utc(now or datetime.now(UTC))
    return end - timedelta(hours=hours), end


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _log_run(run: DriftRun) -> None:
    log.info(
        "drift_run",
        run_id=run.run_id,
        model=f"{run.model_name} v{run.model_version}",
        window_start=run.window_start.isoformat(),
        window_end=run.window_end.isoformat(),
        n_reference=run.n_reference,
        n_current=run.n_current,
        drifted=run.drifted,
        insufficient=len(run.insufficient),
        alerts_sent=run.alerts_sent,
        seconds=round(run.seconds, 3),
        problems=run.problems,
    )


# -- inputs ----------------------------------------------------------------------------------


def load_reference(registry: Registry, meta: ModelVersion) -> pd.DataFrame:
    """The reference sample stored with ``meta`` (training features and the model's scores)."""
    if meta.file(REFERENCE_FILE) is None:
        raise DriftJobError(
            f"model {meta.name!r} version {meta.version} has no {REFERENCE_FILE}: it was "
            "registered before reference samples existed; retrain (`churn train`) to get one"
        )
    data = registry.read_file(meta.name, meta.version, REFERENCE_FILE)
    return pq.read_table(io.BytesIO(data)).to_pandas()


def read_window(
    table_path: Path, contract: FeatureContract, start: datetime, end: datetime, max_rows: int
) -> pd.DataFrame:
    """Feature, score and version columns of the logged predictions in ``[start, end)``.

    An absent or empty log gives an empty frame with those columns (every check then reports
    insufficient data rather than failing).
    """
    wanted = [*contract.feature_names, SCORE_COLUMN, VERSION_COLUMN]
    table = read_prediction_window(table_path, since=start, until=end, max_rows=max_rows)
    if table.num_columns == 0:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in wanted})
    # A feature the log lacks stays absent: detect_drift then names it instead of guessing.
    present = [name for name in wanted if name in table.column_names]
    return table.select(present).to_pandas()


# -- comparison ------------------------------------------------------------------------------


def compare(
    contract: FeatureContract,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: DriftThresholds,
    version: int,
) -> tuple[list[FeatureDrift], int]:
    """Drift of every feature over all of ``current``, and of the score over ``version``'s rows.

    Returns the results (features in contract order, then the score) and the number of rows
    the score was compared on.
    """
    own = current[current[VERSION_COLUMN] == version] if VERSION_COLUMN in current else current
    if len(own) == len(current):
        # Every row is the reference version's: one pass covers features and score.
        report = detect_drift(contract, reference, current, thresholds, SCORE_COLUMN)
        return list(report.features), len(own)
    features = detect_drift(contract, reference, current, thresholds, score_column=None)
    # detect_drift compares the features again on the version's rows; only its score is kept.
    scored = detect_drift(contract, reference, own, thresholds, SCORE_COLUMN)
    score = [f for f in scored.features if f.kind == "score"]
    return [*features.features, *score], len(own)


# -- results ---------------------------------------------------------------------------------


def results_schema() -> pa.Schema:
    """Columns of the Delta drift table: one row per feature (and the score) per run."""
    timestamp = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("run_at", timestamp, nullable=False),
            pa.field("model_name", pa.string(), nullable=False),
            pa.field("model_version", pa.int64(), nullable=False),
            pa.field("alias", pa.string(), nullable=False),
            pa.field("window_start", timestamp, nullable=False),
            pa.field("window_end", timestamp, nullable=False),
            pa.field("feature", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("n_reference", pa.int64(), nullable=False),
            pa.field("n_current", pa.int64(), nullable=False),
            pa.field("psi", pa.float64()),
            pa.field("js_distance", pa.float64()),
            pa.field("ks_statistic", pa.float64()),
            pa.field("ks_pvalue", pa.float64()),
            pa.field("chi2_statistic", pa.float64()),
            pa.field("chi2_pvalue", pa.float64()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("reasons", pa.list_(pa.string()), nullable=False),
        ]
    )


def result_rows(run: DriftRun) -> pa.Table:
    """The run as rows of the drift table."""
    header = {
        "run_id": run.run_id,
        "run_at": run.run_at,
        "model_name": run.model_name,
        "model_version": run.model_version,
        "alias": run.alias,
        "window_start": run.window_start,
        "window_end": run.window_end,
    }
    rows = [{**header, **feature.model_dump()} for feature in run.features]
    schema = results_schema()
    return pa.Table.from_pylist([{k: row[k] for k in schema.names} for row in rows], schema=schema)


def run_document(run: DriftRun) -> dict[str, Any]:
    """The run as one MongoDB document (``_id`` is the run id, so a retried insert is refused)."""
    return {
        "_id": run.run_id,
        "run_at": run.run_at,
        "model_name": run.model_name,
        "model_version": run.model_version,
        "alias": run.alias,
        "window_start": run.window_start,
        "window_end": run.window_end,
        "n_reference": run.n_reference,
        "n_current": run.n_current,
        "n_current_version": run.n_current_version,
        "drifted": run.drifted,
        "insufficient_data": run.insufficient,
        "features": [feature.model_dump() for feature in run.features],
    }


def store_results(run: DriftRun, monitoring: MonitoringSettings) -> list[str]:
    """Append the run to Delta, and to MongoDB when configured; one line per failed store."""
    problems = []
    try:
        write_results_delta(Path(run.results_table), result_rows(run))
    except Exception as error:
        problems.append(f"drift results to Delta {run.results_table} failed: {_one_line(error)}")
    if monitoring.mongodb_url is not None:
        try:
            write_results_mongo(monitoring, run_document(run))
        except DriftJobError as error:
            problems.append(str(error))
    for problem in problems:
        log.error("drift_results_not_stored", error=problem)
    return problems


def write_results_delta(path: Path, rows: pa.Table) -> None:
    """Append ``rows`` to the Delta drift table (created on first use)."""
    from deltalake import write_deltalake

    # schema_mode="merge": a later statistic adds a column instead of failing the append.
    write_deltalake(str(path), rows, mode="append", schema_mode="merge")


def describe_mongodb(monitoring: MonitoringSettings) -> str | None:
    """``mongodb://<host:port> database '<name>'`` of the results store (None: not configured).

    Never the credentials: the user info of the URL is dropped.
    """
    if monitoring.mongodb_url is None:
        return None
    netloc = urlsplit(monitoring.mongodb_url.get_secret_value()).netloc.rpartition("@")[2]
    return f"mongodb://{netloc} database {monitoring.mongodb_database!r}"


def write_results_mongo(monitoring: MonitoringSettings, document: dict[str, Any]) -> None:
    """Insert ``document`` into ``drift_runs``; failures raise one line without credentials."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    from churn_core.tls import mongo_options

    assert monitoring.mongodb_url is not None
    url = monitoring.mongodb_url.get_secret_value()
    timeout_ms = int(monitoring.mongodb_timeout_s * 1000)
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname="churn-drift",
            **mongo_options(monitoring.mongodb_tls, "monitoring.mongodb_tls"),
        )
        with client:
            client[monitoring.mongodb_database][MONGO_COLLECTION].insert_one(document)
    except PyMongoError as error:
        reason = _redact(_short_mongo_error(error), url)
        where = describe_mongodb(monitoring)
        raise DriftJobError(f"drift results to {where} failed: {reason}") from None


def _short_mongo_error(error: Exception) -> str:
    # pymongo's selection errors append the whole topology description: keep the cause.
    text = str(error).split(", Timeout:")[0].split(" (configured timeouts")[0]
    return " ".join(text.split())[:300]


def _redact(text: str, url: str) -> str:
    parts = urlsplit(url)
    for secret in (url, parts.password):
        if secret:
            text = text.replace(secret, "***")
    return text


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


# -- metrics ---------------------------------------------------------------------------------


def record_metrics(metrics: JobMetrics, run: DriftRun) -> None:
    """Set the drift gauges of ``run`` (a statistic that could not be computed is left unset)."""
    psi = metrics.gauge("churn_drift_psi", "PSI of the feature against the reference.", ["feature"])
    js = metrics.gauge(
        "churn_drift_js_distance",
        "Jensen-Shannon distance (base 2) of the feature against the reference.",
        ["feature"],
    )
    status = metrics.gauge(
        "churn_drift_status",
        "Drift verdict of the feature: 0 ok, 1 drift, 2 insufficient data.",
        ["feature"],
    )
    rows = metrics.gauge("churn_drift_rows", "Rows compared, per window.", ["window"])
    for feature in run.features:
        status.labels(feature.feature).set(STATUS_CODES[feature.status])
        if feature.psi is not None:
            psi.labels(feature.feature).set(feature.psi)
        if feature.js_distance is not None:
            js.labels(feature.feature).set(feature.js_distance)
    rows.labels("reference").set(run.n_reference)
    rows.labels("current").set(run.n_current)


# -- alerts ----------------------------------------------------------------------------------


def drift_alerts(run: DriftRun) -> list[Alert]:
    """One alert per drifted feature (and the score); none for ok or insufficient data."""
    return [feature_alert(run, f) for f in run.features if f.status == "drift"]


def feature_alert(run: DriftRun, feature: FeatureDrift) -> Alert:
    """The alert of one drifted feature: which statistics alarmed, their values and thresholds.

    Identity (the cooldown fingerprint) is the feature and the model version; the measured
    values are numbers, so a drift that persists with wobbling values stays one problem.
    """
    window = (
        f"{run.window_start.isoformat(timespec='minutes')} to "
        f"{run.window_end.isoformat(timespec='minutes')}"
    )
    summary = (
        f"{feature.feature} of {run.model_name} v{run.model_version} drifted from its training "
        f"data: {'; '.join(feature.reasons)} ({feature.n_current} predictions from {window} "
        f"against {feature.n_reference} reference rows)."
    )
    details: dict[str, str | float | int] = {
        "feature": feature.feature,
        "kind": feature.kind,
        "model": run.model_name,
        "model_version": str(run.model_version),
    }
    for statistic in alarmed_statistics(feature):
        value = getattr(feature, statistic)
        if value is not None:
            details[statistic] = float(value)
            details[f"{statistic}_threshold"] = float(getattr(run.thresholds, statistic))
    details.update(n_current=feature.n_current, n_reference=feature.n_reference)
    return Alert(
        kind="drift",
        severity="warning",
        title=(
            f"Drift on the score ({feature.feature})"
            if feature.kind == "score"
            else f"Drift on feature {feature.feature}"
        ),
        summary=summary,
        details=details,
    )


def alarmed_statistics(feature: FeatureDrift) -> list[str]:
    """The statistics named by ``feature.reasons`` (each reason starts with its statistic)."""
    named = {reason.split(" ", 1)[0] for reason in feature.reasons}
    return [statistic for statistic in _STATISTICS if statistic in named]
