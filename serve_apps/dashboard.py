"""What the web dashboard reads: batch scores, drift runs, evaluation reports, live counters.

Everything here is read-only. Delta tables are read with DataFusion through
:func:`churn_core.prediction_log.query_delta` (never ``DeltaTable.to_pyarrow_*``, which can
abort the interpreter at exit), filtered, sorted and paginated in SQL so a replica never holds
a whole slice in memory. Every value that reaches SQL is either a typed number, a date, a
contract feature name or a string limited to the customer-id alphabet, and string literals are
quoted by :func:`sql_string` besides.

The calls block (file I/O, DataFusion): the API runs them off the event loop.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import TypeAdapter

from churn_core.evaluation import CalibrationBin, LiftBin, ThresholdMetrics
from churn_core.model import ChurnModel
from churn_core.prediction_log import query_delta, table_exists
from churn_core.tables import Tables
from serve_apps.metrics import ServeMetrics
from serve_apps.schemas import (
    CurvePoints,
    DriftAlert,
    DriftHistory,
    DriftPoint,
    DriftRunSummary,
    FeatureDriftSeries,
    HistogramBucket,
    LiveStats,
    ModelReport,
    Reason,
    RouteStats,
    ScoredCustomer,
    ScoreHistoryPoint,
    ScoresPage,
)

# Written by training/report.py with each version (serve_apps may not import training).
REPORT_FILE = "report.json"
SortKey = Literal["probability", "customer_id"]
SortOrder = Literal["asc", "desc"]


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _finite(value: Any) -> float | None:
    """A float, or None for null, NaN and infinities (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_reasons(text: str | None) -> list[Reason]:
    """The scores table's reasons column (JSON text) as reasons; unreadable text gives none."""
    if not text:
        return []
    try:
        loaded = json.loads(text)
    except ValueError:
        return []
    if not isinstance(loaded, list):
        return []
    return [
        Reason(feature=str(item["feature"]), contribution=float(item["contribution"]))
        for item in loaded
        if isinstance(item, dict) and "feature" in item and "contribution" in item
    ]


def scope_condition(scope: Sequence[str], column: str = "customer_id") -> str | None:
    """SQL limiting rows to a principal's customer-id prefixes (None: every customer)."""
    if not scope or "*" in scope:
        return None
    tests = [f"starts_with({column}, {sql_string(prefix)})" for prefix in scope]
    return "(" + " OR ".join(tests) + ")"


@dataclass(frozen=True)
class ScoreFilters:
    """The customers table's filters, validated by the route before they get here."""

    search: str | None = None  # a substring of the customer id
    min_probability: float | None = None
    churn_only: bool = False
    reason: str | None = None  # a contract feature among the customer's top reasons

    def conditions(self) -> list[str]:
        """The filters as SQL conditions over the scores table."""
        found: list[str] = []
        if self.search:
            found.append(f"strpos(customer_id, {sql_string(self.search)}) > 0")
        if self.min_probability is not None:
            found.append(f"probability >= {float(self.min_probability)!r}")
        if self.churn_only:
            found.append("churn")
        if self.reason:
            # reasons is JSON text written by pipelines/scoring.py:reasons_json, whose shape
            # ('{"feature":<json string>,') is fixed; json.dumps quotes the name the same way.
            needle = '{"feature":' + json.dumps(self.reason) + ","
            found.append(f"strpos(reasons, {sql_string(needle)}) > 0")
        return found


@dataclass(frozen=True)
class ScoreSlice:
    """One (snapshot, model version) slice of the scores table."""

    snapshot_date: date
    model_version: int
    scored_at: datetime | None


def _where(conditions: Iterable[str | None]) -> str:
    present = [c for c in conditions if c]
    return " WHERE " + " AND ".join(present) if present else ""


@dataclass
class DashboardData:
    """Reads the data set's scores, gold and drift tables; remembers small immutable answers."""

    tables: Tables
    entity_key: str
    _slice: tuple[int, ScoreSlice | None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- scores -------------------------------------------------------------------------

    def latest_slice(self) -> ScoreSlice | None:
        """The newest snapshot's most recently scored slice (None: nothing scored yet).

        Remembered per Delta table version, so the group-by runs once per scoring commit.
        """
        path = self.tables.scores
        if not table_exists(path):
            return None
        from deltalake import DeltaTable

        version = DeltaTable(str(path)).version()
        with self._lock:
            if self._slice is not None and self._slice[0] == version:
                return self._slice[1]
        rows = query_delta(
            {"s": path},
            "SELECT snapshot_date, model_version, max(scored_at) AS scored_at FROM s "
            "GROUP BY snapshot_date, model_version "
            "ORDER BY snapshot_date DESC, scored_at DESC, model_version DESC LIMIT 1",
        ).to_pylist()
        found = (
            ScoreSlice(
                rows[0]["snapshot_date"], int(rows[0]["model_version"]), rows[0]["scored_at"]
            )
            if rows
            else None
        )
        with self._lock:
            self._slice = (version, found)
        return found

    def scores(
        self,
        filters: ScoreFilters,
        scope: Sequence[str],
        *,
        sort: SortKey,
        order: SortOrder,
        limit: int,
        offset: int,
        features: list[str],
    ) -> ScoresPage:
        """A page of the latest slice, filtered, sorted (ties by customer id) and counted."""
        latest = self.latest_slice()
        empty = ScoresPage(
            snapshot_date=None,
            model_version=None,
            scored_at=None,
            threshold=None,
            customers=0,
            at_risk=0,
            matching=0,
            offset=offset,
            limit=limit,
            sort=sort,
            order=order,
            items=[],
            features=features,
        )
        if latest is None:
            return empty
        in_slice = (
            f"snapshot_date = DATE '{latest.snapshot_date.isoformat()}' "
            f"AND model_version = {int(latest.model_version)}"
        )
        scoped = [in_slice, scope_condition(scope)]
        matching = " AND ".join(filters.conditions()) or "TRUE"
        counts = query_delta(
            {"s": self.tables.scores},
            "SELECT count(*) AS customers, "
            "coalesce(sum(CASE WHEN churn THEN 1 ELSE 0 END), 0) AS at_risk, "
            f"coalesce(sum(CASE WHEN {matching} THEN 1 ELSE 0 END), 0) AS matching, "
            "max(threshold) AS threshold "
            f"FROM s{_where(scoped)}",
        ).to_pylist()[0]
        direction = "DESC" if order == "desc" else "ASC"
        ordering = (
            f"probability {direction}, customer_id ASC"
            if sort == "probability"
            else f"customer_id {direction}"
        )
        rows = query_delta(
            {"s": self.tables.scores},
            "SELECT customer_id, probability, churn, threshold, reasons, snapshot_date, "
            f"model_version, scored_at FROM s{_where([*scoped, *filters.conditions()])} "
            f"ORDER BY {ordering} LIMIT {int(limit)} OFFSET {int(offset)}",
        ).to_pylist()
        return empty.model_copy(
            update={
                "snapshot_date": latest.snapshot_date,
                "model_version": latest.model_version,
                "scored_at": _utc(latest.scored_at),
                "threshold": _finite(counts["threshold"]),
                "customers": int(counts["customers"]),
                "at_risk": int(counts["at_risk"]),
                "matching": int(counts["matching"]),
                "items": [self._scored(row) for row in rows],
            }
        )

    @staticmethod
    def _scored(row: Mapping[str, Any]) -> ScoredCustomer:
        return ScoredCustomer(
            customer_id=str(row["customer_id"]),
            probability=float(row["probability"]),
            churn=bool(row["churn"]),
            threshold=_finite(row.get("threshold")),
            reasons=parse_reasons(row.get("reasons")),
            snapshot_date=row["snapshot_date"],
            model_version=int(row["model_version"]),
            scored_at=_utc(row.get("scored_at")),
        )

    def customer_scores(
        self, customer_id: str
    ) -> tuple[ScoredCustomer, list[ScoreHistoryPoint]] | None:
        """The customer's current score (the latest slice's, else the newest) and its history."""
        if not table_exists(self.tables.scores):
            return None
        rows = query_delta(
            {"s": self.tables.scores},
            "SELECT customer_id, probability, churn, threshold, reasons, snapshot_date, "
            f"model_version, scored_at FROM s WHERE customer_id = {sql_string(customer_id)} "
            "ORDER BY snapshot_date DESC, scored_at DESC, model_version DESC",
        ).to_pylist()
        if not rows:
            return None
        latest = self.latest_slice()
        current = next(
            (
                row
                for row in rows
                if latest is not None
                and row["snapshot_date"] == latest.snapshot_date
                and int(row["model_version"]) == latest.model_version
            ),
            rows[0],
        )
        history = [
            ScoreHistoryPoint(
                snapshot_date=row["snapshot_date"],
                model_version=int(row["model_version"]),
                probability=float(row["probability"]),
                churn=bool(row["churn"]),
                scored_at=_utc(row["scored_at"]),
            )
            for row in reversed(rows)
        ]
        return self._scored(current), history

    def gold_features(
        self, customer_id: str, snapshot: date, feature_names: Sequence[str]
    ) -> dict[str, Any] | None:
        """The customer's gold features at ``snapshot``: what the batch score was computed from."""
        path = self.tables.gold_features
        if not table_exists(path):
            return None
        rows = query_delta(
            {"g": path},
            f"SELECT * FROM g WHERE snapshot_date = DATE '{snapshot.isoformat()}' "
            f'AND "{self.entity_key}" = {sql_string(customer_id)} LIMIT 1',
        ).to_pylist()
        if not rows:
            return None
        return {name: _json_value(rows[0].get(name)) for name in feature_names}

    # --- drift --------------------------------------------------------------------------

    def drift(self, runs: int) -> DriftHistory:
        """The latest ``runs`` drift runs: summaries (newest first), series, alerts raised."""
        path = self.tables.drift_results
        if not table_exists(path):
            return DriftHistory(runs=[], features=[], alerts=[])
        rows = query_delta(
            {"d": path},
            "SELECT run_id, run_at, model_version, window_start, window_end, feature, kind, "
            "n_reference, n_current, psi, js_distance, ks_pvalue, chi2_pvalue, status, reasons "
            "FROM d WHERE run_id IN (SELECT run_id FROM d GROUP BY run_id "
            f"ORDER BY max(run_at) DESC LIMIT {int(runs)}) ORDER BY run_at, feature",
        ).to_pylist()
        return drift_history(rows)


def _json_value(value: Any) -> float | bool | str | None:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return _finite(value)
    return str(value)


def drift_history(rows: Sequence[Mapping[str, Any]]) -> DriftHistory:
    """Drift-table rows (oldest first) as run summaries, per-feature series and alerts."""
    runs: dict[str, DriftRunSummary] = {}
    series: dict[str, FeatureDriftSeries] = {}
    alerts: list[DriftAlert] = []
    for row in rows:
        run_at = _utc(row["run_at"])
        assert run_at is not None  # the column is not nullable
        summary = runs.get(row["run_id"])
        if summary is None:
            summary = runs[row["run_id"]] = DriftRunSummary(
                run_id=row["run_id"],
                run_at=run_at,
                model_version=int(row["model_version"]),
                window_start=_utc(row["window_start"]) or run_at,
                window_end=_utc(row["window_end"]) or run_at,
                n_current=int(row["n_current"]),
                drifted=[],
                insufficient=0,
            )
        if row["kind"] != "score":
            # The score's sample is the version's rows only; the window's size is a feature's.
            summary.n_current = max(summary.n_current, int(row["n_current"]))
        if row["status"] == "drift":
            summary.drifted.append(row["feature"])
            alerts.append(
                DriftAlert(
                    run_id=row["run_id"],
                    run_at=run_at,
                    model_version=int(row["model_version"]),
                    feature=row["feature"],
                    kind=row["kind"],
                    reasons=list(row["reasons"] or []),
                    psi=_finite(row["psi"]),
                    js_distance=_finite(row["js_distance"]),
                )
            )
        elif row["status"] == "insufficient_data":
            summary.insufficient += 1
        feature = series.setdefault(
            row["feature"], FeatureDriftSeries(feature=row["feature"], kind=row["kind"], points=[])
        )
        feature.points.append(
            DriftPoint(
                run_id=row["run_id"],
                run_at=run_at,
                model_version=int(row["model_version"]),
                n_reference=int(row["n_reference"]),
                n_current=int(row["n_current"]),
                psi=_finite(row["psi"]),
                js_distance=_finite(row["js_distance"]),
                ks_pvalue=_finite(row["ks_pvalue"]),
                chi2_pvalue=_finite(row["chi2_pvalue"]),
                status=row["status"],
            )
        )
    ordered = sorted(runs.values(), key=lambda r: r.run_at, reverse=True)
    alerts.sort(key=lambda a: a.run_at, reverse=True)
    # Features in the order the job reports them would need the contract; by name is stable,
    # with the score last like the job's own report.
    features = sorted(series.values(), key=lambda s: (s.kind == "score", s.feature))
    return DriftHistory(runs=ordered, features=features, alerts=alerts)


# report.json's bins are churn_core.evaluation's records, written with dataclasses.asdict.
_CALIBRATION = TypeAdapter(list[CalibrationBin])
_LIFT = TypeAdapter(list[LiftBin])
_AT_THRESHOLD = TypeAdapter(ThresholdMetrics)


def parse_report(version: int, document: Mapping[str, Any]) -> ModelReport:
    """``report.json`` (training/report.py's layout, schema 1) as a :class:`ModelReport`."""
    evaluation: Mapping[str, Any] = document.get("evaluation") or {}

    def curve(name: str) -> CurvePoints | None:
        found = evaluation.get(name)
        if not found:
            return None
        return CurvePoints(x=[float(v) for v in found["x"]], y=[float(v) for v in found["y"]])

    at_threshold = evaluation.get("at_threshold")
    metrics = {
        k: float(v) for k, v in (document.get("metrics") or {}).items() if _finite(v) is not None
    }
    importance = {
        measure: {f: float(v) for f, v in values.items() if _finite(v) is not None}
        for measure, values in (document.get("importance") or {}).items()
    }
    segments = {
        key: {k: _finite(v) for k, v in values.items() if isinstance(v, int | float) or v is None}
        for key, values in (document.get("segments") or {}).items()
    }
    return ModelReport(
        model_version=version,
        n=int(evaluation.get("n", 0)),
        positives=int(evaluation.get("positives", 0)),
        base_rate=float(evaluation.get("base_rate", 0.0)),
        metrics=metrics,
        roc=curve("roc_curve"),
        pr=curve("pr_curve"),
        calibration=_CALIBRATION.validate_python(evaluation.get("calibration", [])),
        lift=_LIFT.validate_python(evaluation.get("lift", [])),
        at_threshold=_AT_THRESHOLD.validate_python(at_threshold) if at_threshold else None,
        segments=segments,
        importance=importance,
        notes=[str(n) for n in evaluation.get("notes", [])],
    )


def explain(model: ChurnModel, features: Mapping[str, Any]) -> tuple[list[Reason], float, float]:
    """Every feature's exact SHAP contribution (largest push first), the bias, the probability."""
    matrix = model.encoder.encode_records([features])
    contributions = np.asarray(
        model.booster.predict(model.encoder.dmatrix(matrix), pred_contribs=True)
    )[0]
    names = model.contract.feature_names
    values = contributions[:-1]  # the last column is the bias
    order = np.argsort(-np.abs(values))
    reasons = [Reason(feature=names[i], contribution=float(values[i])) for i in order]
    probability = float(model.predict_matrix(matrix)[0])
    return reasons, float(contributions[-1]), probability


def live_stats(
    metrics: ServeMetrics, replica: str, started_at: datetime, model_version: int
) -> LiveStats:
    """This replica's request, latency, cache and prediction counters, read from its registry."""
    requests: dict[str, dict[str, float]] = {}
    latency: dict[str, dict[str, Any]] = {}
    cache: dict[str, float] = {}
    predictions: dict[str, float] = {}
    rate_limited = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "churn_http_requests_total":
                requests.setdefault(labels["route"], {})[labels["status"]] = sample.value
            elif sample.name.startswith("churn_http_request_duration_seconds"):
                entry = latency.setdefault(
                    labels["route"], {"buckets": [], "count": 0.0, "sum": 0.0}
                )
                if sample.name.endswith("_bucket"):
                    bound = float(labels["le"])
                    entry["buckets"].append(
                        HistogramBucket(
                            le=bound if math.isfinite(bound) else None, count=sample.value
                        )
                    )
                elif sample.name.endswith("_count"):
                    entry["count"] = sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] = sample.value
            elif sample.name == "churn_prediction_cache_total":
                cache[labels["result"]] = sample.value
            elif sample.name == "churn_predictions_total":
                predictions[labels["label"]] = sample.value
            elif sample.name == "churn_rate_limited_requests_total":
                rate_limited = sample.value
    routes = [
        RouteStats(
            route=route,
            requests=requests.get(route, {}),
            latency_count=float(latency.get(route, {}).get("count", 0.0)),
            latency_sum=float(latency.get(route, {}).get("sum", 0.0)),
            buckets=latency.get(route, {}).get("buckets", []),
        )
        for route in sorted(requests.keys() | latency.keys())
    ]
    return LiveStats(
        replica=replica,
        started_at=started_at,
        now=datetime.now(UTC),
        model_version=model_version,
        routes=routes,
        cache={"hit": cache.get("hit", 0.0), "miss": cache.get("miss", 0.0)},
        predictions=predictions,
        rate_limited=rate_limited,
    )


def ui_status(ui_dir: Path | None) -> str:
    """``ok`` when the dashboard's build is there, else what is missing and how to build it."""
    if ui_dir is None:
        return "not configured"
    if (ui_dir / "index.html").is_file():
        return "ok"
    return f"not built: {ui_dir / 'index.html'} is missing (make dashboard builds it)"
