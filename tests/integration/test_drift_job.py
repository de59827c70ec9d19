"""The drift job end to end: the pipeline's champion, a real Delta prediction log, real stores.

The champion of the session's pipeline run (``saas_run``) carries ``reference.parquet``. Each
test writes its own window into a fresh prediction log (through the log writer, real Delta):
rows drawn from the gold training split and scored by the champion, as serving would log them.
Alerts go to a real SMTP server (aiosmtpd) and a loopback Slack webhook receiver; results to
the Delta drift table and to a MongoDB-protocol server; metrics to the textfile export.
"""

from __future__ import annotations

import io
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr

from churn_core.model import ChurnModel
from churn_core.prediction_log import query_delta
from churn_core.settings import Settings
from churn_core.tables import Tables
from monitoring.alerts import AlertSettings
from monitoring.drift_job import DriftRun, run_drift
from tests.conftest import PipelineRun
from tests.fixtures.mongo import SecantusServer
from tests.unit.test_alerts import Mailbox, Receiver, free_port, slack_settings, smtp_settings
from tests.unit.test_drift_job import drift_status, log_predictions, read_metrics
from training.data import assign_splits

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WINDOW_ROWS = 1_000  # twice min_samples (500) of configs/monitoring.yaml
SMALL_ROWS = 100
SHIFTED = "monthly_fee"
# Each test logs its own window; runs look at the two hours before their own ``now``.
UNDRIFTED_AT = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
DRIFTED_AT = datetime(2026, 1, 11, 12, 0, tzinfo=UTC)
SMALL_AT = datetime(2026, 1, 12, 12, 0, tzinfo=UTC)
WINDOW_HOURS = 2.0


@dataclass(frozen=True)
class World:
    """What every test shares: the pipeline run, a fresh log and drift table, a Mongo database."""

    run: PipelineRun
    tables: Tables
    mongo: SecantusServer
    database: str
    training_rows: pd.DataFrame


@pytest.fixture(scope="module")
def world(
    saas_run: PipelineRun, mongo_server: SecantusServer, tmp_path_factory: pytest.TempPathFactory
) -> World:
    tables = Tables(tmp_path_factory.mktemp("drift") / "lake" / saas_run.settings.dataset)
    return World(
        run=saas_run,
        tables=tables,
        mongo=mongo_server,
        database=f"churn_drift_{secrets.token_hex(4)}",
        training_rows=gold_training_rows(saas_run),
    )


def gold_training_rows(run: PipelineRun) -> pd.DataFrame:
    """The gold rows of the training split (read through DataFusion, as the jobs read Delta)."""
    gold = query_delta({"gold": run.tables.gold_features}, "SELECT * FROM gold").to_pandas()
    splits = assign_splits(gold, run.contract, run.settings.training)
    return gold[splits == "train"].reset_index(drop=True)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@pytest.fixture
def mailbox(smtp_server: tuple[Mailbox, int]) -> Mailbox:
    return smtp_server[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recv = Receiver()
    thread = threading.Thread(target=recv.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield recv
    finally:
        recv.server.shutdown()
        recv.server.server_close()


@pytest.fixture
def settings(
    world: World, smtp_server: tuple[Mailbox, int], receiver: Receiver, tmp_path: Path
) -> Settings:
    """The run's settings, alerting by email and Slack, results also to MongoDB."""
    base = world.run.settings
    alerts = AlertSettings(
        smtp=smtp_settings(smtp_server[1]),
        slack=slack_settings(receiver.url),
        state_path=tmp_path / "alert_state.json",
    )
    monitoring = base.monitoring.model_copy(
        update={
            "alerts": alerts,
            "metrics_dir": tmp_path / "metrics",
            "mongodb_url": SecretStr(world.mongo.url),
            "mongodb_database": world.database,
            "mongodb_timeout_s": 30.0,  # the machine is shared: a loaded server answers slowly
        }
    )
    return base.model_copy(update={"monitoring": monitoring})


def champion(world: World) -> tuple[ChurnModel, int]:
    registry, name = world.run.registry, world.run.settings.model_name
    version = registry.resolve(name, "champion").version
    return registry.load_model(name, version), version


def log_window(world: World, settings: Settings, rows: pd.DataFrame, end: datetime) -> None:
    """Score ``rows`` with the champion and log them in the minutes before ``end``."""
    model, version = champion(world)
    log_predictions(
        world.tables.prediction_log,
        settings.resolve(settings.monitoring.prediction_log.spool_dir),
        world.run.contract,
        rows,
        model.predict_frame(rows),
        model_name=world.run.settings.model_name,
        version=version,
        end=end,
    )


def sample(world: World, n: int, seed: int) -> pd.DataFrame:
    return world.training_rows.sample(n=n, random_state=seed).reset_index(drop=True)


def shifted(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(**{SHIFTED: rows[SHIFTED] * 1.6})


def drift_once(world: World, settings: Settings, at: datetime) -> DriftRun:
    return run_drift(settings, world.run.registry, world.tables, now=at, window_hours=WINDOW_HOURS)


def stored_statuses(world: World, run: DriftRun) -> dict[str, str]:
    rows = query_delta(
        {"drift": world.tables.drift_results},
        f"SELECT feature, status FROM drift WHERE run_id = '{run.run_id}'",
    ).to_pylist()
    return {row["feature"]: row["status"] for row in rows}


def mongo_document(world: World, run: DriftRun) -> dict[str, object] | None:
    with world.mongo.client() as client:
        return client[world.database]["drift_runs"].find_one({"_id": run.run_id})


def body(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


# -- the reference stored at registration ----------------------------------------------------


def test_the_champion_stores_its_training_sample_scored_by_itself(world: World) -> None:
    registry, name = world.run.registry, world.run.settings.model_name
    meta = registry.resolve(name, "champion")
    model, _ = champion(world)
    reference = pq.read_table(
        io.BytesIO(registry.read_file(name, meta.version, "reference.parquet"))
    ).to_pandas()

    assert list(reference.columns) == [*world.run.contract.feature_names, "probability"]
    train_rows = meta.lineage["rows"]["train"]
    assert len(reference) == min(train_rows, world.run.settings.monitoring.reference_max_rows)
    features = reference[world.run.contract.feature_names]
    np.testing.assert_allclose(reference["probability"], model.predict_frame(features), rtol=1e-6)


# -- the done-when: no drift is silent, drift alerts, too few rows never alert ---------------


def test_an_undrifted_window_is_ok_everywhere_and_sends_nothing(
    world: World, settings: Settings, mailbox: Mailbox, receiver: Receiver
) -> None:
    log_window(world, settings, sample(world, WINDOW_ROWS, seed=11), UNDRIFTED_AT)

    run = drift_once(world, settings, UNDRIFTED_AT)

    expected = [*world.run.contract.feature_names, "probability"]
    assert {f.feature: f.status for f in run.features} == dict.fromkeys(expected, "ok")
    assert run.n_current == run.n_current_version == WINDOW_ROWS
    assert run.problems == [] and run.alerts == []
    assert mailbox.messages == [] and receiver.bodies == []
    assert stored_statuses(world, run) == dict.fromkeys(expected, "ok")
    document = mongo_document(world, run)
    assert document is not None and document["drifted"] == []
    metrics = read_metrics(Path(run.metrics_target))
    assert {drift_status(metrics, feature) for feature in expected} == {0}


def test_a_drifted_feature_is_emailed_and_posted_naming_the_statistic(
    world: World, settings: Settings, mailbox: Mailbox, receiver: Receiver
) -> None:
    log_window(world, settings, shifted(sample(world, WINDOW_ROWS, seed=11)), DRIFTED_AT)

    run = drift_once(world, settings, DRIFTED_AT)

    # The fee moves the score too; every other feature stays where it was.
    unchanged = [name for name in world.run.contract.feature_names if name != SHIFTED]
    statuses = {f.feature: f.status for f in run.features}
    assert statuses[SHIFTED] == "drift"
    assert {statuses[name] for name in unchanged} == {"ok"}
    assert run.problems == [] and run.alerts_sent == len(run.drifted)
    fee = next(f for f in run.features if f.feature == SHIFTED)
    assert fee.psi is not None and fee.psi >= 0.2

    titles = {f"[churn][warning] {alert.title}" for alert in run.alerts}
    assert mailbox.arrived.wait(10)
    subjects = {message["Subject"] for message in mailbox.messages}
    assert subjects == titles and f"[churn][warning] Drift on feature {SHIFTED}" in subjects
    email = next(m for m in mailbox.messages if SHIFTED in m["Subject"])
    assert f"psi {fee.psi:.3g} >= 0.2" in body(email)  # statistic, value and threshold
    assert "psi_threshold" in body(email)
    slack = [b["text"] for b in receiver.bodies]
    assert len(slack) == len(run.alerts)
    assert any(SHIFTED in text and "psi" in text for text in slack)
    named = " ".join([*subjects, *slack])
    assert not [name for name in unchanged if f"feature {name}" in named or f"{name} of" in named]

    assert stored_statuses(world, run)[SHIFTED] == "drift"
    document = mongo_document(world, run)
    assert document is not None and SHIFTED in document["drifted"]  # type: ignore[operator]
    assert len(document["features"]) == len(run.features)  # type: ignore[arg-type]
    assert drift_status(read_metrics(Path(run.metrics_target)), SHIFTED) == 1


def test_a_small_drifted_window_is_insufficient_data_and_silent(
    world: World, settings: Settings, mailbox: Mailbox, receiver: Receiver
) -> None:
    log_window(world, settings, shifted(sample(world, SMALL_ROWS, seed=12)), SMALL_AT)

    run = drift_once(world, settings, SMALL_AT)

    assert run.n_current == SMALL_ROWS
    assert {f.status for f in run.features} == {"insufficient_data"}
    assert run.alerts == [] and mailbox.messages == [] and receiver.bodies == []
    assert set(stored_statuses(world, run).values()) == {"insufficient_data"}
    assert drift_status(read_metrics(Path(run.metrics_target)), SHIFTED) == 2
