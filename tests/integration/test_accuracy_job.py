"""The accuracy job on the sample business: real silver and gold, the champion's scores, MongoDB.

Predictions are logged (PredictionLogWriter, a fresh Delta log under tmp) for gold rows of past
snapshots whose horizon the data fully covers. Gold computes its label column from the same
silver customers, in Spark: the job's labels, computed without Spark from the prediction log and
silver, must agree with it exactly, which checks the join independently.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr
from sklearn.metrics import roc_auc_score

from churn_core.prediction_log import (
    PredictionLogWriter,
    prediction_log_schema,
    prediction_row,
    query_delta,
)
from churn_core.registry import ARTIFACT_NAME, Registry, open_registry
from churn_core.settings import RegistrySettings, Settings, SmtpSettings
from churn_core.tables import Tables
from monitoring.accuracy import AccuracyRun, label_source, observed_through, run_accuracy
from tests.conftest import PipelineRun, free_port
from tests.fixtures.mongo import SecantusServer

pytestmark = pytest.mark.integration

MIN_LABELS = 300
TOLERANCE = 0.05


@dataclass(frozen=True)
class ScratchTables(Tables):
    """The pipeline run's silver and gold, with a prediction log and results of our own."""

    scratch: Path

    @property
    def prediction_log(self) -> Path:
        return self.scratch / "predictions"

    @property
    def accuracy(self) -> Path:
        return self.scratch / "accuracy"


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


@dataclass
class Env:
    settings: Settings
    registry: Registry
    tables: ScratchTables
    observed: datetime


@pytest.fixture
def env(
    saas_run: PipelineRun,
    tmp_path: Path,
    smtp: tuple[Mailbox, int],
    mongo_server: SecantusServer,
    mongo_database: str,
) -> Iterator[Env]:
    """A registry on MongoDB holding the champion's artifact twice (v1, v2), alerts by SMTP."""
    base = saas_run.settings
    mongo_url = SecretStr(mongo_server.url)
    registry_settings = RegistrySettings(
        root=tmp_path / "registry",
        metadata="mongodb",
        mongodb_url=mongo_url,
        mongodb_database=mongo_database,
    )
    alerts = base.monitoring.alerts.model_copy(
        update={
            "state_path": tmp_path / "alert_state.json",
            "smtp": SmtpSettings(
                host="127.0.0.1",
                port=smtp[1],
                sender="churn@example.com",
                recipients=["ml@example.com"],
                timeout_s=5,
            ),
        }
    )
    monitoring = base.monitoring.model_copy(
        update={
            "metrics_dir": tmp_path / "metrics",
            "accuracy_min_labels": MIN_LABELS,
            "accuracy_min_positives": 15,
            "accuracy_drop_tolerance": TOLERANCE,
            "mongodb_url": mongo_url,
            "mongodb_database": mongo_database,
            "alerts": alerts,
        }
    )
    settings = base.model_copy(update={"registry": registry_settings, "monitoring": monitoring})
    name = settings.model_name
    champion = saas_run.registry.resolve(name, "champion")
    artifact = saas_run.registry.read_file(name, "champion", ARTIFACT_NAME)
    contract = saas_run.registry.load_contract(name, "champion")
    tables = ScratchTables(saas_run.tables.root, tmp_path / "monitoring")
    source = label_source(contract, tables)
    with open_registry(registry_settings, settings.resolve) as registry:
        for _ in range(2):  # v1 is scored by the champion, v2 by a coin
            registry.register(
                name,
                artifact,
                contract,
                params=champion.params,
                metrics=champion.metrics,
                lineage={"copied_from": champion.version},
                feature_importance={},
            )
        observed = observed_through(source, datetime.now(UTC))
        assert observed is not None
        yield Env(settings, registry, tables, observed)


def observed_snapshots(run: PipelineRun, observed: datetime, count: int) -> list[date]:
    """The latest ``count`` snapshot dates whose horizon the data covers."""
    assert run.contract.snapshot is not None
    horizon = timedelta(days=run.contract.snapshot.horizon_days)
    covered = [
        d
        for d in run.contract.snapshot.dates
        if datetime(d.year, d.month, d.day, tzinfo=UTC) + horizon <= observed
    ]
    assert len(covered) >= count, f"only {covered} are observed through {observed}"
    return covered[-count:]


def gold_rows(run: PipelineRun, snapshots: list[date]) -> pd.DataFrame:
    dates = ", ".join(f"DATE '{d.isoformat()}'" for d in snapshots)
    sql = f"SELECT * FROM gold WHERE snapshot_date IN ({dates}) ORDER BY customer_id, snapshot_date"
    frame = query_delta({"gold": run.tables.gold_features}, sql).to_pandas()
    frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"]).dt.date
    return frame


def log_scores(
    env: Env,
    run: PipelineRun,
    gold: pd.DataFrame,
    version: int,
    scores: np.ndarray,
    logged_at: list[datetime],
) -> None:
    """One prediction per gold row through the real writer, with the row's features."""
    contract = run.contract
    writer = PredictionLogWriter(
        env.tables.prediction_log,
        prediction_log_schema(contract),
        env.settings.monitoring.prediction_log,
        env.tables.scratch / "spool",
    )
    records = gold[contract.feature_names].to_dict("records")
    rows = [
        prediction_row(
            prediction_id=f"v{version}-{i}-{logged_at[i].timestamp()}",
            logged_at=logged_at[i],
            model_name=env.settings.model_name,
            model_version=version,
            endpoint="batch_scoring",
            customer_id=str(gold["customer_id"].iloc[i]),
            features_from="gold",
            as_of=gold["snapshot_date"].iloc[i],
            probability=float(scores[i]),
            churn=bool(scores[i] >= 0.5),
            threshold=0.5,
            features=records[i],
        )
        for i in range(len(gold))
    ]
    writer.append(rows)
    result = writer.flush()
    assert result.written == len(rows) and result.spooled == 0


def scored_at(gold: pd.DataFrame, hours: int) -> list[datetime]:
    """When each row was scored: ``hours`` after its snapshot began."""
    return [
        datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(hours=hours)
        for d in gold["snapshot_date"]
    ]


def by_key(run: AccuracyRun) -> dict[tuple[int, str], Any]:
    return {(row.model_version, row.period): row for row in run.rows}


def test_accuracy_of_the_champion_and_of_a_random_version_with_an_alert_for_the_latter(
    saas_run: PipelineRun, env: Env, smtp: tuple[Mailbox, int], mongo_server: SecantusServer
) -> None:
    box = smtp[0]
    snapshots = observed_snapshots(saas_run, env.observed, count=3)
    gold = gold_rows(saas_run, snapshots)
    labels = gold[saas_run.contract.label.name].to_numpy()
    champion = saas_run.registry.load_model(env.settings.model_name, "champion")
    scores = champion.predict_frame(gold)
    rng = np.random.default_rng(17)
    # v1: first a batch of junk scores, then the champion's scores of the same rows later the
    # same day; de-duplication must keep only the later ones.
    log_scores(env, saas_run, gold, 1, rng.random(len(gold)), scored_at(gold, 2))
    log_scores(env, saas_run, gold, 1, scores, scored_at(gold, 5))
    log_scores(env, saas_run, gold, 2, rng.random(len(gold)), scored_at(gold, 5))

    run = run_accuracy(env.settings, env.registry, env.tables)

    rows = by_key(run)
    v1, v2 = rows[(1, "all")], rows[(2, "all")]
    # Every gold row is eligible and observed: all labelled, with gold's own labels.
    assert v1.predictions == v1.labelled == len(gold)
    assert v1.pending == v1.excluded == v1.unknown == 0
    assert v1.positives == int(labels.sum())
    assert v1.roc_auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert v1.roc_auc > 0.7
    for snapshot in snapshots:
        period = f"{snapshot.year}-{snapshot.month:02d}"
        mask = (gold["snapshot_date"] == snapshot).to_numpy()
        assert rows[(1, period)].labelled == int(mask.sum())
        assert rows[(1, period)].roc_auc == pytest.approx(
            roc_auc_score(labels[mask], scores[mask]), abs=1e-9
        )
    assert v2.labelled == len(gold) and v2.roc_auc == pytest.approx(0.5, abs=0.1)

    checks = {c.model_version: c for c in run.checks}
    expected = saas_run.registry.resolve(env.settings.model_name, "champion").metrics["roc_auc"]
    assert checks[2].verdict == "drop" and checks[2].expected == pytest.approx(expected)
    assert checks[1].verdict == "ok"
    # The alert reached the SMTP server and names v2, its AUC, the expected AUC and the count.
    assert box.arrived.wait(10)
    assert len(box.messages) == 1
    message = box.messages[0]
    assert f"{env.settings.model_name} v2" in str(message["Subject"])
    body = str(message.get_payload())
    assert f"ROC-AUC {v2.roc_auc:.3f}" in body and f"{expected:.3f}" in body
    assert f"{len(gold)} labelled predictions" in body

    # Delta: the run's rows, one per version and month, plus each version's overall row.
    stored = query_delta(
        {"acc": env.tables.accuracy},
        "SELECT model_version, period, labelled, roc_auc FROM acc ORDER BY model_version, period",
    ).to_pylist()
    months = [f"{d.year}-{d.month:02d}" for d in snapshots]
    assert [(r["model_version"], r["period"]) for r in stored] == [
        (v, p) for v in (1, 2) for p in [*months, "all"]
    ]
    assert stored[len(months)]["roc_auc"] == pytest.approx(v1.roc_auc)
    # The registry's metric history (in MongoDB) has each version's measurement.
    for version, row in ((1, v1), (2, v2)):
        history = env.registry.metric_history(env.settings.model_name, version)
        measured = [r for r in history if r.source == "monitoring.accuracy"]
        assert len(measured) == 1
        assert measured[0].metrics["roc_auc"] == pytest.approx(row.roc_auc)
        assert measured[0].metrics["labelled"] == len(gold)
        assert [p["period"] for p in measured[0].details["periods"]] == months
    # And one document per run in accuracy_runs.
    with mongo_server.client() as client:
        database = client[env.settings.monitoring.mongodb_database]
        documents = list(database["accuracy_runs"].find())
    assert [d["_id"] for d in documents] == [run.run_id]
    assert {c["model_version"]: c["verdict"] for c in documents[0]["checks"]} == {
        1: "ok",
        2: "drop",
    }
    assert run.sink_errors == [] and run.mongo.endswith(".accuracy_runs")


def test_predictions_whose_horizon_is_not_over_are_pending_not_scored(
    saas_run: PipelineRun, env: Env
) -> None:
    # Ten days before the data ends: a 60-day horizon cannot be over.
    as_of = env.observed.date() - timedelta(days=10)
    start = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)
    customers = query_delta(
        {"c": saas_run.tables.silver("customers")},
        "SELECT customer_id, cancelled_at FROM c",
    ).to_pandas()
    cancelled = pd.to_datetime(customers["cancelled_at"], utc=True)
    stays = customers[cancelled.isna()]
    left_since = customers[cancelled >= start]
    gone_before = customers[cancelled < start]
    assert len(stays) and len(left_since) and len(gone_before)
    sample = pd.concat([stays.head(200), left_since, gone_before.head(50)])
    frame = pd.DataFrame(
        {
            "customer_id": sample["customer_id"].to_numpy(),
            "snapshot_date": as_of,
            **{name: None for name in saas_run.contract.feature_names},
        }
    )
    scores = np.random.default_rng(3).random(len(frame))
    log_scores(env, saas_run, frame, 1, scores, scored_at(frame, 8))

    run = run_accuracy(env.settings, env.registry, env.tables)

    row = by_key(run)[(1, "all")]
    assert row.predictions == len(sample)
    assert row.pending == 200
    # Churn already seen inside the horizon is known now; churn before as_of is excluded.
    assert row.positives == row.labelled == len(left_since)
    assert row.excluded == 50 and row.unknown == 0
    assert row.roc_auc is None and any("only churners" in note for note in row.notes)
    assert run.checks[0].verdict == "insufficient_labels" and run.alerts == []
