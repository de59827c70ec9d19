"""Accuracy job: label assignment, de-duplication, metrics, verdicts, and one whole run.

Everything is real: Delta tables written with deltalake under tmp, the prediction log through
PredictionLogWriter, a LocalRegistry, an aiosmtpd SMTP server for the alert. No Spark, no Ray.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import typer
import yaml
from aiosmtpd.controller import Controller
from deltalake import write_deltalake
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from typer.testing import CliRunner

from churn_core.contract import FeatureContract
from churn_core.prediction_log import (
    PredictionLogWriter,
    prediction_log_schema,
    prediction_row,
    query_delta,
)
from churn_core.registry import LocalRegistry, ModelVersion
from churn_core.settings import PredictionLogSettings, Settings, SmtpSettings
from churn_core.tables import Tables
from monitoring.accuracy import (
    AccuracyError,
    AccuracyRow,
    LabelSource,
    assign_outcomes,
    check_version,
    count_logged,
    drop_alert,
    label_source,
    observed_through,
    period_bounds,
    read_latest_predictions,
    run_accuracy,
    score_versions,
)
from tests.conftest import free_port, make_settings
from tests.unit.conftest import TINY_CONTRACT

T = date(2025, 3, 1)
T0 = datetime(2025, 3, 1, tzinfo=UTC)  # the instant features for T describe
HORIZON = 60
END = T0 + timedelta(days=HORIZON)  # 2025-04-30 00:00 UTC, first instant after the horizon
MICRO = timedelta(microseconds=1)

# The tiny contract with an event label: same features, so the tiny model is a model of it.
EVENT_CONTRACT: dict[str, Any] = {
    **TINY_CONTRACT,
    "name": "tinyevents",
    "sources": {
        "people": {
            **TINY_CONTRACT["sources"]["people"],
            "order_by": "updated_at",
            "columns": {
                **TINY_CONTRACT["sources"]["people"]["columns"],
                "signup": "date",
                "cancelled_at": "timestamp",
                "updated_at": "timestamp",
            },
        }
    },
    "snapshot": {"dates": ["2025-03-01"], "horizon_days": HORIZON, "entity_since": "signup"},
    "label": {"kind": "event_within_horizon", "source": "people", "column": "cancelled_at"},
}


# -- labels ------------------------------------------------------------------------------------


def outcomes_of(
    events: dict[str, datetime | None],
    predictions: list[tuple[str, date]],
    observed: datetime | None,
) -> dict[str, str]:
    frame = pd.DataFrame(
        {"customer_id": [c for c, _ in predictions], "as_of": [d for _, d in predictions]}
    )
    known = pd.DataFrame(
        {"customer_id": list(events), "event_at": pd.to_datetime(list(events.values()), utc=True)}
    )
    labelled = assign_outcomes(frame, known, HORIZON, observed)
    return dict(zip(labelled["customer_id"], labelled["outcome"], strict=True))


def test_horizon_is_the_60_days_from_the_snapshot_instant_as_gold_labels_it() -> None:
    # Gold: eligible when cancelled_at >= T 00:00, positive when also < (T + 60 days) 00:00.
    events = {
        "at_snapshot_instant": T0,
        "just_before_snapshot": T0 - MICRO,
        "during_day_before": T0 - timedelta(hours=12),
        "last_instant_of_horizon": END - MICRO,
        "on_last_horizon_day": END - timedelta(hours=1),
        "first_instant_after": END,
        "long_after": END + timedelta(days=30),
        "never": None,
    }
    outcomes = outcomes_of(events, [(c, T) for c in events], observed=END)
    assert outcomes == {
        "at_snapshot_instant": "positive",
        "just_before_snapshot": "excluded",
        "during_day_before": "excluded",
        "last_instant_of_horizon": "positive",
        "on_last_horizon_day": "positive",
        "first_instant_after": "negative",
        "long_after": "negative",
        "never": "negative",
    }


def test_no_event_is_pending_until_the_source_is_observed_through_the_horizon() -> None:
    events: dict[str, datetime | None] = {"quiet": None}
    assert outcomes_of(events, [("quiet", T)], observed=END - MICRO) == {"quiet": "pending"}
    assert outcomes_of(events, [("quiet", T)], observed=END) == {"quiet": "negative"}
    assert outcomes_of(events, [("quiet", T)], observed=None) == {"quiet": "pending"}


def test_an_event_inside_an_unfinished_horizon_is_already_positive() -> None:
    events = {"left_early": T0 + timedelta(days=3), "stays": None}
    outcomes = outcomes_of(
        events, [("left_early", T), ("stays", T)], observed=T0 + timedelta(days=10)
    )
    assert outcomes == {"left_early": "positive", "stays": "pending"}


def test_customers_missing_from_the_source_are_unknown() -> None:
    outcomes = outcomes_of({"known": None}, [("known", T), ("ghost", T)], observed=END)
    assert outcomes == {"known": "negative", "ghost": "unknown"}


def test_event_times_are_compared_in_utc() -> None:
    # 00:30 on the snapshot day in Paris is 23:30 UTC the day before: already gone.
    paris = pd.Timestamp("2025-03-01T00:30:00+01:00")
    frame = pd.DataFrame({"customer_id": ["c"], "as_of": [T]})
    events = pd.DataFrame({"customer_id": ["c"], "event_at": pd.Series([paris])})
    assert assign_outcomes(frame, events, HORIZON, END)["outcome"].tolist() == ["excluded"]
    # A naive timestamp is taken as UTC (what Spark writes): 00:30 UTC is inside the horizon.
    naive = pd.DataFrame(
        {"customer_id": ["c"], "event_at": pd.Series([pd.Timestamp("2025-03-01T00:30")])}
    )
    assert assign_outcomes(frame, naive, HORIZON, END)["outcome"].tolist() == ["positive"]


def test_each_prediction_is_labelled_against_its_own_as_of() -> None:
    events = {"c": T0 + timedelta(days=70)}
    outcomes = assign_outcomes(
        pd.DataFrame(
            {
                "customer_id": ["c", "c", "c"],
                "as_of": [T, T + timedelta(days=30), date(2025, 5, 20)],
            }
        ),
        pd.DataFrame({"customer_id": ["c"], "event_at": pd.to_datetime([events["c"]], utc=True)}),
        HORIZON,
        END + timedelta(days=60),
    )
    assert outcomes["outcome"].tolist() == ["negative", "positive", "excluded"]


def test_only_event_labels_are_supported(tiny_contract: FeatureContract, tmp_path: Path) -> None:
    with pytest.raises(AccuracyError, match="label kind 'column' is not supported"):
        label_source(tiny_contract, Tables(tmp_path))
    source = label_source(FeatureContract.model_validate(EVENT_CONTRACT), Tables(tmp_path))
    assert source == LabelSource(
        name="people",
        path=tmp_path / "silver" / "people",
        key="id",
        event_column="cancelled_at",
        observed_column="updated_at",
        horizon_days=HORIZON,
    )


def test_an_event_label_needs_to_know_how_far_its_source_is_observed(tmp_path: Path) -> None:
    spec = json.loads(json.dumps(EVENT_CONTRACT))
    del spec["sources"]["people"]["order_by"]
    with pytest.raises(AccuracyError, match="no order_by"):
        label_source(FeatureContract.model_validate(spec), Tables(tmp_path))


def silver_people(path: Path, rows: list[dict[str, Any]]) -> None:
    schema = pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("cancelled_at", pa.timestamp("us", tz="UTC")),
            pa.field("updated_at", pa.timestamp("us", tz="UTC")),
            pa.field("_ingested_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=schema), mode="overwrite")


def test_observed_through_is_the_newest_change_capped_by_ingestion_and_now(tmp_path: Path) -> None:
    source = label_source(FeatureContract.model_validate(EVENT_CONTRACT), Tables(tmp_path))
    ingested = datetime(2025, 6, 2, tzinfo=UTC)
    newest = datetime(2025, 6, 1, 12, tzinfo=UTC)
    silver_people(
        source.path,
        [
            {"id": "a", "cancelled_at": None, "updated_at": newest, "_ingested_at": ingested},
            {"id": "b", "cancelled_at": T0, "updated_at": T0, "_ingested_at": ingested},
        ],
    )
    assert observed_through(source, now=datetime(2026, 1, 1, tzinfo=UTC)) == newest
    # A clock ahead of ours in the source (an updated_at in our future) is not trusted.
    assert observed_through(source, now=datetime(2025, 5, 1, tzinfo=UTC)) == datetime(
        2025, 5, 1, tzinfo=UTC
    )
    silver_people(
        source.path,
        [
            {
                "id": "a",
                "cancelled_at": None,
                "updated_at": ingested + timedelta(days=9),
                "_ingested_at": ingested,
            }
        ],
    )
    assert observed_through(source, now=datetime(2026, 1, 1, tzinfo=UTC)) == ingested


# -- de-duplication ----------------------------------------------------------------------------


def log_predictions(
    path: Path, contract: FeatureContract, rows: list[dict[str, Any]], spool: Path
) -> None:
    """Rows through the real writer: (version, customer, as_of, probability, logged_at[, name])."""
    writer = PredictionLogWriter(
        path, prediction_log_schema(contract), PredictionLogSettings(), spool
    )
    writer.append(
        [
            prediction_row(
                prediction_id=f"p{i}",
                logged_at=row["logged_at"],
                model_name=row.get("model_name", "churn-tinyevents"),
                model_version=row["version"],
                endpoint="predict",
                customer_id=row["customer"],
                features_from="request",
                as_of=row["as_of"],
                probability=row["probability"],
                churn=row["probability"] >= 0.5,
                threshold=0.5,
                features={},
            )
            for i, row in enumerate(rows)
        ]
    )
    result = writer.flush()
    assert result.written == len(rows) and result.spooled == 0


def test_the_latest_score_per_version_customer_and_as_of_counts_once(
    tiny_contract: FeatureContract, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    day = datetime(2025, 3, 1, 9, tzinfo=UTC)
    rows = [
        # Scored three times for the same snapshot by v1: the 11:00 score counts.
        {"version": 1, "customer": "c1", "as_of": T, "probability": 0.1, "logged_at": day},
        {
            "version": 1,
            "customer": "c1",
            "as_of": T,
            "probability": 0.9,
            "logged_at": day + timedelta(hours=2),
        },
        {
            "version": 1,
            "customer": "c1",
            "as_of": T,
            "probability": 0.5,
            "logged_at": day + timedelta(hours=1),
        },
        # Another snapshot, another version: separate predictions.
        {
            "version": 1,
            "customer": "c1",
            "as_of": date(2025, 4, 1),
            "probability": 0.2,
            "logged_at": day,
        },
        {"version": 2, "customer": "c1", "as_of": T, "probability": 0.3, "logged_at": day},
        # Without a customer id nothing can be labelled; another model is not ours.
        {"version": 1, "customer": None, "as_of": T, "probability": 0.4, "logged_at": day},
        {
            "version": 1,
            "customer": "c2",
            "as_of": T,
            "probability": 0.4,
            "logged_at": day,
            "model_name": "other",
        },
        # Logged long ago: outside a lookback.
        {
            "version": 1,
            "customer": "c3",
            "as_of": date(2024, 1, 1),
            "probability": 0.6,
            "logged_at": datetime(2024, 1, 1, tzinfo=UTC),
        },
    ]
    log_predictions(log, tiny_contract, rows, tmp_path / "spool")

    latest = read_latest_predictions(log, "churn-tinyevents", since=None)
    got = {
        (r.model_version, r.customer_id, r.as_of): (r.probability, r.copies)
        for r in latest.itertuples()
    }
    assert got == {
        (1, "c1", T): (0.9, 3),
        (1, "c1", date(2025, 4, 1)): (0.2, 1),
        (2, "c1", T): (0.3, 1),
        (1, "c3", date(2024, 1, 1)): (0.6, 1),
    }
    recent = read_latest_predictions(log, "churn-tinyevents", since=date(2025, 1, 1))
    assert sorted(recent["customer_id"]) == ["c1", "c1", "c1"]
    counts = count_logged(log, "churn-tinyevents", since=None).set_index("model_version")
    assert counts.loc[1, "logged"] == 6 and counts.loc[1, "anonymous"] == 1
    assert counts.loc[2, "logged"] == 1 and counts.loc[2, "anonymous"] == 0


# -- metrics -----------------------------------------------------------------------------------


def synthetic_outcomes(n: int, seed: int = 0) -> pd.DataFrame:
    """Two versions over two months: v1 informative, v2 noise; a share pending or excluded."""
    rng = np.random.default_rng(seed)
    version = rng.choice([1, 2], n)
    churned = rng.random(n) < 0.15
    signal = np.where(version == 1, 1.5, 0.0)
    probability = 1 / (1 + np.exp(-(rng.normal(-2.0, 1.0, n) + signal * churned)))
    status = rng.choice(["labelled", "pending", "excluded", "unknown"], n, p=[0.8, 0.1, 0.07, 0.03])
    outcome = np.where(status == "labelled", np.where(churned, "positive", "negative"), status)
    # Pending rows get scores that would move every metric if they were scored by mistake.
    probability = np.where(status == "pending", np.where(churned, 0.0, 1.0), probability)
    as_of = rng.choice([date(2025, 3, 1), date(2025, 3, 15), date(2025, 4, 1)], n)
    return pd.DataFrame(
        {
            "model_version": version,
            "customer_id": [f"c{i}" for i in range(n)],
            "as_of": as_of,
            "probability": probability,
            "threshold": 0.5,
            "outcome": outcome,
        }
    )


def test_metrics_match_scikit_learn_on_the_labelled_rows_only() -> None:
    outcomes = synthetic_outcomes(6000)
    rows = {(r.model_version, r.period): r for r in score_versions(outcomes, "month")}
    assert set(rows) == {(v, p) for v in (1, 2) for p in ("2025-03", "2025-04", "all")}
    for (version, period), row in rows.items():
        mask = outcomes["model_version"] == version
        if period != "all":
            months = pd.to_datetime(outcomes["as_of"]).dt.strftime("%Y-%m")
            mask &= months == period
        group = outcomes[mask]
        scored = group[group["outcome"].isin(["positive", "negative"])]
        y = (scored["outcome"] == "positive").to_numpy()
        p = scored["probability"].to_numpy()
        assert row.predictions == len(group)
        assert row.labelled == len(scored) and row.positives == int(y.sum())
        assert row.pending == int((group["outcome"] == "pending").sum())
        assert row.excluded == int((group["outcome"] == "excluded").sum())
        assert row.unknown == int((group["outcome"] == "unknown").sum())
        assert row.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert row.pr_auc == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert row.brier == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        assert row.observed_rate == pytest.approx(y.mean())
    assert rows[(1, "all")].roc_auc > 0.7 > rows[(2, "all")].roc_auc


def test_reliability_bins_are_deciles_of_the_labelled_scores() -> None:
    outcomes = synthetic_outcomes(3000, seed=1)
    row = next(
        r for r in score_versions(outcomes, "month") if (r.model_version, r.period) == (1, "all")
    )
    scored = outcomes[
        (outcomes["model_version"] == 1) & outcomes["outcome"].isin(["positive", "negative"])
    ]
    order = np.argsort(scored["probability"].to_numpy(), kind="stable")
    p = scored["probability"].to_numpy()[order]
    y = (scored["outcome"] == "positive").to_numpy()[order]
    chunks = np.array_split(np.arange(len(p)), 10)
    assert [b.n for b in row.calibration] == [len(c) for c in chunks]
    assert [b.mean_score for b in row.calibration] == pytest.approx([p[c].mean() for c in chunks])
    assert [b.observed_rate for b in row.calibration] == pytest.approx(
        [y[c].mean() for c in chunks]
    )
    expected_ece = sum(len(c) * abs(p[c].mean() - y[c].mean()) for c in chunks) / len(p)
    assert row.ece == pytest.approx(expected_ece)


def test_one_class_has_no_auc_and_says_why_and_pending_only_has_no_metrics() -> None:
    frame = pd.DataFrame(
        {
            "model_version": [1, 1, 1, 2, 2],
            "customer_id": ["a", "b", "c", "d", "e"],
            "as_of": [T] * 5,
            "probability": [0.1, 0.2, 0.3, 0.4, 0.5],
            "threshold": 0.5,
            "outcome": ["negative", "negative", "pending", "pending", "pending"],
        }
    )
    rows = {(r.model_version, r.period): r for r in score_versions(frame, "week")}
    one_class = rows[(1, "all")]
    assert one_class.roc_auc is None and one_class.pr_auc is None
    assert one_class.brier == pytest.approx((0.01 + 0.04) / 2)
    assert any("only non-churners" in note for note in one_class.notes)
    nothing = rows[(2, "all")]
    assert nothing.labelled == 0 and nothing.pending == 2 and nothing.roc_auc is None
    assert nothing.brier is None and nothing.calibration == []
    assert nothing.notes == ["no labelled predictions yet (2 pending)"]


def test_periods_are_iso_weeks_or_calendar_months() -> None:
    assert period_bounds(date(2025, 3, 5), "week") == (
        date(2025, 3, 3),
        date(2025, 3, 10),
        "2025-W10",
    )
    # The week of 2024-12-30 is ISO week 1 of 2025.
    assert period_bounds(date(2025, 1, 1), "week") == (
        date(2024, 12, 30),
        date(2025, 1, 6),
        "2025-W01",
    )
    assert period_bounds(date(2024, 12, 31), "month") == (
        date(2024, 12, 1),
        date(2025, 1, 1),
        "2024-12",
    )
    assert period_bounds(date(2024, 2, 29), "month") == (
        date(2024, 2, 1),
        date(2024, 3, 1),
        "2024-02",
    )


# -- verdicts ----------------------------------------------------------------------------------


def overall(roc_auc: float | None, labelled: int, positives: int) -> AccuracyRow:
    return AccuracyRow(
        model_version=3,
        period="all",
        period_start=None,
        period_end=None,
        predictions=labelled + 7,
        labelled=labelled,
        positives=positives,
        pending=7,
        excluded=0,
        unknown=0,
        roc_auc=roc_auc,
    )


def registered(roc_auc: float | None) -> ModelVersion:
    """A version's registry metadata with the test-split ROC-AUC it was registered with."""
    return ModelVersion(
        name="churn-saas",
        version=3,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        artifact_sha256="0" * 64,
        metrics={"roc_auc": roc_auc} if roc_auc is not None else {},
    )


@pytest.mark.parametrize(
    ("roc_auc", "labelled", "positives", "expected", "verdict"),
    [
        (0.70, 1000, 50, 0.80, "drop"),
        (0.76, 1000, 50, 0.80, "ok"),  # within the tolerance
        (0.90, 1000, 50, 0.80, "ok"),
        (0.50, 999, 50, 0.80, "insufficient_labels"),  # one label short
        (0.50, 5000, 49, 0.80, "insufficient_labels"),  # too few churners
        (None, 1000, 1000, 0.80, "undefined"),
        (0.50, 1000, 50, None, "no_reference"),
    ],
)
def test_verdicts(
    roc_auc: float | None, labelled: int, positives: int, expected: float | None, verdict: str
) -> None:
    settings = Settings().monitoring.model_copy(
        update={
            "accuracy_min_labels": 1000,
            "accuracy_min_positives": 50,
            "accuracy_drop_tolerance": 0.05,
        }
    )
    check = check_version(overall(roc_auc, labelled, positives), registered(expected), settings)
    assert check.verdict == verdict


def test_drop_alert_names_version_measured_expected_and_count_and_dedupes_on_identity() -> None:
    settings = Settings().monitoring.model_copy(
        update={"accuracy_min_labels": 10, "accuracy_min_positives": 1}
    )
    first = check_version(overall(0.55, 400, 40), registered(0.82), settings)
    later = check_version(overall(0.51, 900, 80), registered(0.82), settings)
    alert = drop_alert("churn-saas", first, 0.05)
    assert alert.kind == "accuracy"
    assert "churn-saas v3" in alert.title
    assert "0.550" in alert.summary and "0.820" in alert.summary and "400 labelled" in alert.summary
    assert alert.details["model_version"] == "3" and alert.details["labelled"] == 400
    # Same problem, other measurements: one fingerprint, so the cooldown holds.
    assert drop_alert("churn-saas", later, 0.05).fingerprint == alert.fingerprint


# -- a whole run -------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content))
        self.arrived.set()
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


def tiny_setup(
    tmp_path: Path, tiny_model_bytes: bytes, smtp_port: int
) -> tuple[Settings, LocalRegistry, Tables]:
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    (contracts / "tinyevents.yaml").write_text(yaml.safe_dump(EVENT_CONTRACT))
    settings = make_settings(tmp_path, dataset="tinyevents", contracts_dir=contracts)
    monitoring = settings.monitoring.model_copy(
        update={
            "accuracy_min_labels": 200,
            "accuracy_min_positives": 20,
            "accuracy_drop_tolerance": 0.05,
            "alerts": settings.monitoring.alerts.model_copy(
                update={
                    "smtp": SmtpSettings(
                        host="127.0.0.1",
                        port=smtp_port,
                        sender="churn@example.com",
                        recipients=["ml@example.com"],
                        timeout_s=5,
                    )
                }
            ),
        }
    )
    settings = settings.model_copy(update={"monitoring": monitoring})
    registry = LocalRegistry(tmp_path / "registry")
    contract = FeatureContract.model_validate(EVENT_CONTRACT)
    for _ in range(2):
        registry.register(
            settings.model_name,
            tiny_model_bytes,
            contract,
            params={},
            metrics={"roc_auc": 0.8},
            lineage={},
            feature_importance={},
        )
    return settings, registry, Tables(settings.dataset_lake)


def test_a_run_scores_versions_stores_everywhere_and_alerts_on_the_dropped_one(
    tmp_path: Path, tiny_model_bytes: bytes, smtp: tuple[Mailbox, int]
) -> None:
    box, port = smtp
    settings, registry, tables = tiny_setup(tmp_path, tiny_model_bytes, port)
    contract = FeatureContract.model_validate(EVENT_CONTRACT)
    rng = np.random.default_rng(3)
    n = 1500
    churns = rng.random(n) < 0.2
    cancelled = [T0 + timedelta(days=int(rng.integers(0, HORIZON))) if c else None for c in churns]
    observed = datetime(2025, 6, 1, tzinfo=UTC)
    silver_people(
        tables.silver("people"),
        [
            {
                "id": f"c{i}",
                "cancelled_at": cancelled[i],
                "updated_at": observed,
                "_ingested_at": observed,
            }
            for i in range(n)
        ],
    )
    informative = 1 / (1 + np.exp(-(rng.normal(-1.5, 1.0, n) + 2.0 * churns)))
    logged_at = datetime(2025, 3, 1, 10, tzinfo=UTC)
    rows = [
        {
            "version": 1,
            "customer": f"c{i}",
            "as_of": T,
            "probability": float(informative[i]),
            "logged_at": logged_at,
        }
        for i in range(n)
    ] + [
        {
            "version": 2,
            "customer": f"c{i}",
            "as_of": T,
            "probability": float(rng.random()),
            "logged_at": logged_at,
        }
        for i in range(n)
    ]
    # A snapshot whose horizon is not over on 2025-06-01: counted as pending (none cancelled).
    rows += [
        {
            "version": 1,
            "customer": f"c{i}",
            "as_of": date(2025, 5, 1),
            "probability": 0.5,
            "logged_at": logged_at,
        }
        for i in range(n)
        if cancelled[i] is None
    ]
    log_predictions(tables.prediction_log, contract, rows, tmp_path / "spool")

    run = run_accuracy(settings, registry, tables, now=datetime(2025, 6, 2, tzinfo=UTC))

    checks = {c.model_version: c for c in run.checks}
    assert checks[1].verdict == "ok" and checks[1].measured is not None and checks[1].measured > 0.8
    assert checks[2].verdict == "drop" and checks[2].measured == pytest.approx(0.5, abs=0.06)
    overall_v1 = next(r for r in run.overall() if r.model_version == 1)
    assert overall_v1.labelled == n and overall_v1.positives == int(churns.sum())
    assert overall_v1.pending == int((~churns).sum())
    # The alert reached a real SMTP server and names the dropped version only.
    assert box.arrived.wait(10)
    assert len(box.messages) == 1
    subject = str(box.messages[0]["Subject"])
    assert "v2" in subject and "v1" not in subject
    body = box.messages[0].get_payload()
    assert f"{n} labelled" in str(body) and "0.800" in str(body)
    # Delta: one row per version and period, plus each version's overall row.
    stored = query_delta(
        {"acc": tables.accuracy},
        "SELECT model_version, period, labelled, pending, roc_auc, run_id FROM acc ORDER BY model_version, period",
    ).to_pylist()
    assert [(r["model_version"], r["period"]) for r in stored] == [
        (1, "2025-03"),
        (1, "2025-05"),
        (1, "all"),
        (2, "2025-03"),
        (2, "all"),
    ]
    assert {r["run_id"] for r in stored} == {run.run_id}
    assert stored[1]["labelled"] == 0 and stored[1]["roc_auc"] is None
    # Registry metric history: the measurement of each version, with its details.
    history = [
        r
        for r in registry.metric_history(settings.model_name, 2)
        if r.source == "monitoring.accuracy"
    ]
    assert len(history) == 1 and history[0].metrics["labelled"] == n
    assert history[0].metrics["roc_auc"] == pytest.approx(checks[2].measured)
    assert history[0].details["verdict"] == "drop"
    # Prometheus text file: AUCs of both versions (enough labels), counts.
    text = Path(run.metrics_target).read_text()
    assert 'churn_model_roc_auc{model_version="2"}' in text
    assert (
        f'churn_accuracy_pending_predictions{{model_version="1"}} {float(overall_v1.pending)}'
        in text
    )
    assert 'churn_job_last_success_timestamp_seconds{job="churn-accuracy"}' in text
    assert run.sink_errors == [] and run.mongo == "off"


def test_a_second_run_within_the_cooldown_does_not_mail_again(
    tmp_path: Path, tiny_model_bytes: bytes, smtp: tuple[Mailbox, int]
) -> None:
    box, port = smtp
    settings, registry, tables = tiny_setup(tmp_path, tiny_model_bytes, port)
    contract = FeatureContract.model_validate(EVENT_CONTRACT)
    rng = np.random.default_rng(5)
    n = 600
    churns = rng.random(n) < 0.25
    silver_people(
        tables.silver("people"),
        [
            {
                "id": f"c{i}",
                "cancelled_at": T0 + timedelta(days=5) if churns[i] else None,
                "updated_at": END,
                "_ingested_at": END,
            }
            for i in range(n)
        ],
    )
    logged_at = datetime(2025, 3, 1, 10, tzinfo=UTC)
    rows = [
        {
            "version": 2,
            "customer": f"c{i}",
            "as_of": T,
            "probability": float(rng.random()),
            "logged_at": logged_at,
        }
        for i in range(n)
    ]
    log_predictions(tables.prediction_log, contract, rows, tmp_path / "spool")
    first = run_accuracy(settings, registry, tables)
    second = run_accuracy(settings, registry, tables)
    assert first.dispatch is not None and len(first.dispatch.sent) == 1
    assert second.dispatch is not None and len(second.dispatch.suppressed) == 1
    assert len(box.messages) == 1


def test_an_alert_no_channel_delivered_is_a_sink_error_after_everything_else_ran(
    tmp_path: Path, tiny_model_bytes: bytes
) -> None:
    settings, registry, tables = tiny_setup(tmp_path, tiny_model_bytes, free_port())  # no server
    contract = FeatureContract.model_validate(EVENT_CONTRACT)
    n = 400
    silver_people(
        tables.silver("people"),
        [
            {
                "id": f"c{i}",
                "cancelled_at": T0 + timedelta(days=1) if i % 4 == 0 else None,
                "updated_at": END,
                "_ingested_at": END,
            }
            for i in range(n)
        ],
    )
    rows = [
        {"version": 1, "customer": f"c{i}", "as_of": T, "probability": 0.2, "logged_at": T0}
        for i in range(n)
    ]
    log_predictions(tables.prediction_log, contract, rows, tmp_path / "spool")
    run = run_accuracy(settings, registry, tables)
    assert run.checks[0].verdict == "drop"  # constant scores: AUC 0.5
    assert len(run.sink_errors) == 1
    assert run.sink_errors[0].startswith("alert 'ROC-AUC of churn-tinyevents v1 dropped")
    assert "not delivered: email via 127.0.0.1:" in run.sink_errors[0]
    # The rest was done: stored, recorded, exported.
    assert query_delta({"a": tables.accuracy}, "SELECT count(*) AS n FROM a").to_pylist() == [
        {"n": 2}
    ]
    assert run.recorded_versions == [1]
    # Exported, but not as a success: a run that exits 1 must not look fresh.
    text = Path(run.metrics_target).read_text()
    assert 'churn_accuracy_labelled_predictions{model_version="1"} 400.0' in text
    assert 'churn_job_last_success_timestamp_seconds{job="churn-accuracy"}' not in text


def test_no_alert_below_the_minimum_label_count(
    tmp_path: Path, tiny_model_bytes: bytes, smtp: tuple[Mailbox, int]
) -> None:
    box, port = smtp
    settings, registry, tables = tiny_setup(tmp_path, tiny_model_bytes, port)
    contract = FeatureContract.model_validate(EVENT_CONTRACT)
    n = 150  # below accuracy_min_labels=200
    silver_people(
        tables.silver("people"),
        [
            {
                "id": f"c{i}",
                "cancelled_at": T0 + timedelta(days=1) if i % 3 == 0 else None,
                "updated_at": END,
                "_ingested_at": END,
            }
            for i in range(n)
        ],
    )
    # Perfectly wrong scores: AUC 0, yet too few labels to judge.
    rows = [
        {
            "version": 2,
            "customer": f"c{i}",
            "as_of": T,
            "probability": 0.1 if i % 3 == 0 else 0.9,
            "logged_at": T0,
        }
        for i in range(n)
    ]
    log_predictions(tables.prediction_log, contract, rows, tmp_path / "spool")
    run = run_accuracy(settings, registry, tables)
    assert run.checks[0].verdict == "insufficient_labels" and run.checks[0].measured == 0.0
    assert run.alerts == [] and run.dispatch is None and box.messages == []
    # Not exported either: Prometheus alerts on churn_model_roc_auc alone.
    text = Path(run.metrics_target).read_text()
    assert "churn_model_roc_auc{" not in text
    assert 'churn_accuracy_labelled_predictions{model_version="2"} 150.0' in text


def test_a_missing_label_source_is_one_clear_error(
    tmp_path: Path, tiny_model_bytes: bytes, smtp: tuple[Mailbox, int]
) -> None:
    settings, registry, tables = tiny_setup(tmp_path, tiny_model_bytes, smtp[1])
    contract = FeatureContract.model_validate(EVENT_CONTRACT)
    row = {"version": 1, "customer": "c1", "as_of": T, "probability": 0.3, "logged_at": T0}
    log_predictions(tables.prediction_log, contract, [row], tmp_path / "spool")
    with pytest.raises(
        AccuracyError, match=r"label source 'people' has no silver table at .*churn ingest"
    ):
        run_accuracy(settings, registry, tables)


def test_an_empty_log_is_an_empty_run(
    tmp_path: Path, tiny_model_bytes: bytes, smtp: tuple[Mailbox, int]
) -> None:
    settings, registry, tables = tiny_setup(tmp_path, tiny_model_bytes, smtp[1])
    run = run_accuracy(settings, registry, tables)
    assert run.rows == [] and run.checks == [] and run.alerts == []
    assert not tables.accuracy.exists()


# -- the command -------------------------------------------------------------------------------


def accuracy_app() -> typer.Typer:
    from churn.accuracy_cli import accuracy_command
    from churn.failures import one_line_errors_for

    app = typer.Typer()
    app.command()(one_line_errors_for("churn")(accuracy_command))
    return app


def summary_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("done accuracy"))


def test_the_command_prints_each_version_and_period_and_exits_0_on_a_drop(
    tmp_path: Path,
    tiny_model_bytes: bytes,
    smtp: tuple[Mailbox, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, _registry, tables = tiny_setup(tmp_path, tiny_model_bytes, smtp[1])
    for name, value in {
        "CHURN_ENV": "test",
        "CHURN_ROOT": str(settings.root),
        "CHURN_DATASET": "tinyevents",
        "CHURN_CONTRACTS_DIR": str(tmp_path / "contracts"),
        "CHURN_LAKE_DIR": str(tmp_path / "lake"),
        "CHURN_REGISTRY__ROOT": str(tmp_path / "registry"),
        "CHURN_MONITORING__METRICS_DIR": str(tmp_path / "metrics"),
        "CHURN_MONITORING__ALERTS__STATE_PATH": str(tmp_path / "alert_state.json"),
        "CHURN_MONITORING__ACCURACY_MIN_LABELS": "200",
        "CHURN_MONITORING__ACCURACY_MIN_POSITIVES": "20",
    }.items():
        monkeypatch.setenv(name, value)
    contract = FeatureContract.model_validate(EVENT_CONTRACT)
    n = 400
    silver_people(
        tables.silver("people"),
        [
            {
                "id": f"c{i}",
                "cancelled_at": T0 + timedelta(days=2) if i % 4 == 0 else None,
                "updated_at": END,
                "_ingested_at": END,
            }
            for i in range(n)
        ],
    )
    rng = np.random.default_rng(11)
    rows = [
        {
            "version": 2,
            "customer": f"c{i}",
            "as_of": as_of,
            "probability": float(rng.random()),
            "logged_at": T0,
        }
        for i in range(n)
        for as_of in (T, date(2025, 3, 10))
    ]
    log_predictions(tables.prediction_log, contract, rows, tmp_path / "spool")

    ran = CliRunner().invoke(
        accuracy_app(), ["--period", "week", "--now", "2025-06-01"], terminal_width=200
    )
    assert ran.exit_code == 0, ran.output
    lines = ran.stdout.splitlines()
    assert any("v2" in line and "2025-W09" in line for line in lines)
    assert any("v2" in line and "2025-W11" in line for line in lines)
    # The table fits 80 columns (what rich assumes when writing to a log file).
    table = lines[lines.index("accuracy of churn-tinyevents by week of as_of") :]
    table = table[: next(i for i, line in enumerate(table) if line.startswith("v2: "))]
    assert len(table) == 6 and all(len(line) <= 80 for line in table)
    verdict = next(line for line in lines if line.startswith("v2: ROC-AUC"))
    # No SMTP configured through the environment: the drop is shown, and counted as unsent.
    assert "(registered 0.800) on 400 labelled, 100 churned, 300 pending: drop" in verdict
    summary = summary_line(lines)
    assert f"predictions={2 * n}" in summary and f"labelled={n}" in summary
    assert "alerts=1" in summary and "sent=0" in summary and "total_s=" in summary

    # A configured MongoDB that does not answer: results shown, one error line, exit 1.
    monkeypatch.setenv("CHURN_MONITORING__MONGODB_URL", f"mongodb://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CHURN_MONITORING__MONGODB_TIMEOUT_S", "0.3")
    failed = CliRunner().invoke(accuracy_app(), [], terminal_width=200)
    assert failed.exit_code == 1
    assert "done accuracy" in failed.stdout
    assert failed.stderr.count("\n") == 1
    assert failed.stderr.startswith(
        "churn accuracy failed: AccuracyError: mongodb churn_monitoring.accuracy_runs not written"
    )
