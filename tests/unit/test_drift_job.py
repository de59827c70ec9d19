"""The drift job on tiny data: reference sample, window, comparison, results, metrics, alerts.

Real pieces throughout: a local registry, a Delta prediction log written by the log writer,
the Delta drift table, textfile metrics, and a loopback HTTP server as the Slack webhook.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from deltalake import write_deltalake
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from typer.testing import CliRunner

from churn_core.contract import FeatureContract
from churn_core.model import ChurnModel
from churn_core.prediction_log import (
    PredictionLogWriter,
    new_prediction_id,
    prediction_log_schema,
    prediction_row,
    query_delta,
)
from churn_core.registry import LocalRegistry, Registry
from churn_core.settings import PredictionLogSettings, Settings, TrainingSettings
from churn_core.tables import Tables
from monitoring import drift_job
from monitoring.alerts import AlertSettings
from monitoring.drift_job import DriftJobError, DriftRun, drift_window, run_drift
from tests.conftest import free_port, make_settings
from tests.unit.conftest import tiny_frame
from tests.unit.test_alerts import Receiver, slack_settings
from training import reference as training_reference
from training.data import assign_splits
from training.reference import (
    REFERENCE_FILE,
    cap_rows,
    read_training_sample,
    reference_table,
    sample_fraction,
    sample_query,
    to_parquet_bytes,
    training_rows,
)

MODEL = "tiny"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
WINDOW_ROWS = 800  # above min_samples (500) of configs/monitoring.yaml


# -- helpers (the integration test uses them too) ---------------------------------------------


def with_ids(frame: pd.DataFrame, prefix: str = "c") -> pd.DataFrame:
    """``frame`` with an ``id`` entity key column."""
    return frame.assign(id=[f"{prefix}{i:06d}" for i in range(len(frame))])


def log_predictions(
    table_path: Path,
    spool_dir: Path,
    contract: FeatureContract,
    features: pd.DataFrame,
    scores: np.ndarray,
    *,
    model_name: str,
    version: int,
    end: datetime,
) -> None:
    """Append one prediction per row to the Delta log, logged in the minutes before ``end``."""
    records = features[contract.feature_names].to_dict("records")
    rows = [
        prediction_row(
            prediction_id=new_prediction_id(),
            logged_at=end - timedelta(seconds=1 + (i % 3000)),
            model_name=model_name,
            model_version=version,
            endpoint="predict",
            customer_id=None,
            features_from="request",
            as_of=None,
            probability=float(score),
            churn=bool(score >= 0.5),
            threshold=0.5,
            features=_plain(record),
        )
        for i, (record, score) in enumerate(zip(records, scores, strict=True))
    ]
    writer = PredictionLogWriter(
        table_path, prediction_log_schema(contract), PredictionLogSettings(), spool_dir
    )
    writer.append(rows)
    writer.close()
    assert writer.stats["written"] == len(rows), "the log write fell back to the spool"


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    # numpy scalars -> Python values, as a request's JSON would give.
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in record.items()}


def read_metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a textfile export: (name, sorted labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def drift_status(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], feature: str
) -> float:
    """``churn_drift_status{feature=...}`` of a parsed export."""
    return metrics[("churn_drift_status", (("feature", feature),))]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def reference_features(tiny_contract: FeatureContract) -> pd.DataFrame:
    frame = with_ids(tiny_frame(5000, seed=1))
    return cap_rows(training_rows(frame, tiny_contract, TrainingSettings()), tiny_contract, 3000, 7)


@pytest.fixture
def registry(
    tmp_path: Path,
    tiny_contract: FeatureContract,
    tiny_model_bytes: bytes,
    tiny_model: ChurnModel,
    reference_features: pd.DataFrame,
) -> LocalRegistry:
    """Version 1 of ``tiny`` with its reference sample, as champion."""
    registry = LocalRegistry(tmp_path / "registry")
    reference = to_parquet_bytes(reference_table(reference_features, tiny_contract, tiny_model))
    register(registry, tiny_model_bytes, tiny_contract, {REFERENCE_FILE: reference})
    registry.set_alias(MODEL, "champion", 1)
    return registry


def register(
    registry: Registry, model: bytes, contract: FeatureContract, files: dict[str, bytes]
) -> int:
    return registry.register(
        MODEL,
        model,
        contract,
        params={},
        metrics={"roc_auc": 0.8},
        lineage={},
        feature_importance={},
        files=files,
    ).version


@pytest.fixture
def settings(tmp_path: Path, registry: LocalRegistry) -> Settings:
    base = make_settings(tmp_path)
    return base.model_copy(
        update={"registry": base.registry.model_copy(update={"model_name": MODEL})}
    )


@pytest.fixture
def tables(tmp_path: Path) -> Tables:
    return Tables(tmp_path / "lake" / "tiny")


@pytest.fixture
def slack(receiver: Receiver, settings: Settings) -> Settings:
    """``settings`` with alerts going to a loopback Slack webhook."""
    alerts = AlertSettings(
        slack=slack_settings(receiver.url),
        state_path=settings.monitoring.alerts.state_path,
    )
    return settings.model_copy(
        update={"monitoring": settings.monitoring.model_copy(update={"alerts": alerts})}
    )


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


def log_window(
    settings: Settings,
    tables: Tables,
    contract: FeatureContract,
    model: ChurnModel,
    frame: pd.DataFrame,
    *,
    version: int = 1,
    end: datetime = NOW,
) -> None:
    spool = settings.resolve(settings.monitoring.prediction_log.spool_dir)
    scores = model.predict_frame(frame)
    log_predictions(
        tables.prediction_log,
        spool,
        contract,
        frame,
        scores,
        model_name=MODEL,
        version=version,
        end=end,
    )


def statuses(run: DriftRun) -> dict[str, str]:
    return {f.feature: f.status for f in run.features}


# -- the reference sample --------------------------------------------------------------------


def test_file_names_agree_between_training_and_monitoring() -> None:
    assert training_reference.REFERENCE_FILE == drift_job.REFERENCE_FILE == "reference.parquet"
    assert training_reference.SCORE_COLUMN == drift_job.SCORE_COLUMN == "probability"


def test_sample_fraction_reaches_the_cap_and_never_exceeds_one() -> None:
    assert sample_fraction(1_000_000, 20_000) == pytest.approx(0.0241)
    assert sample_fraction(10_000, 20_000) == 1.0
    assert sample_fraction(0, 20_000) == 0.0


def write_gold(path: Path, frame: pd.DataFrame) -> Path:
    """``frame`` as a Delta table (version 0) at ``path``."""
    write_deltalake(str(path), pa.Table.from_pandas(frame, preserve_index=False))
    return path


def test_only_training_rows_are_read(tiny_contract: FeatureContract, tmp_path: Path) -> None:
    frame = with_ids(tiny_frame(3000))
    train = frame[assign_splits(frame, tiny_contract, TrainingSettings()) == "train"]
    gold = write_gold(tmp_path / "gold", frame)

    sample = read_training_sample(
        gold, 0, tiny_contract, TrainingSettings(), train_rows=len(train), max_rows=5000, seed=7
    )

    expected = train.sort_values("id")[tiny_contract.feature_names].reset_index(drop=True)
    pd.testing.assert_frame_equal(sample, expected, check_dtype=False)


def test_the_hash_filter_keeps_its_fraction_in_the_scan(
    tiny_contract: FeatureContract, tmp_path: Path
) -> None:
    gold = write_gold(tmp_path / "gold", with_ids(tiny_frame(4000)))
    quarter = query_delta({"gold": gold}, sample_query(tiny_contract, 0.25, seed=7))
    assert 0.22 < quarter.num_rows / 4000 < 0.28
    assert quarter.column_names == ["id", *tiny_contract.feature_names]
    assert "WHERE" not in sample_query(tiny_contract, 1.0, seed=7)


def test_the_sample_depends_on_the_seed_not_on_row_order(
    tiny_contract: FeatureContract, tmp_path: Path
) -> None:
    frame = with_ids(tiny_frame(3000))
    gold = write_gold(tmp_path / "gold", frame)
    shuffled = write_gold(tmp_path / "shuffled", frame.sample(frac=1.0, random_state=3))
    train_rows = int((assign_splits(frame, tiny_contract, TrainingSettings()) == "train").sum())

    def sample(path: Path, seed: int) -> pd.DataFrame:
        return read_training_sample(
            path,
            0,
            tiny_contract,
            TrainingSettings(),
            train_rows=train_rows,
            max_rows=500,
            seed=seed,
        )

    first = sample(gold, 7)
    assert len(first) == 500
    assert list(first.columns) == tiny_contract.feature_names
    pd.testing.assert_frame_equal(first, sample(shuffled, 7))
    other = sample(gold, 8)
    # Another seed draws other rows: the samples share about 500 * 500 / train_rows of them.
    shared = first.merge(other, on=tiny_contract.feature_names)
    assert len(shared) < 250


def test_reference_is_typed_like_the_log_and_scored_by_the_model(
    tiny_contract: FeatureContract, tiny_model: ChurnModel, reference_features: pd.DataFrame
) -> None:
    table = reference_table(reference_features, tiny_contract, tiny_model)
    log_schema = prediction_log_schema(tiny_contract)
    for name in tiny_contract.feature_names:
        assert table.schema.field(name).type == log_schema.field(name).type
    read = pq.read_table(io.BytesIO(to_parquet_bytes(table))).to_pandas()
    assert len(read) == len(reference_features) == 3000
    np.testing.assert_allclose(read["probability"], tiny_model.predict_frame(reference_features))
    pd.testing.assert_series_equal(read["plan"], reference_features["plan"], check_dtype=False)


# -- the job ---------------------------------------------------------------------------------


def test_an_undrifted_window_is_ok_stored_and_exported(
    settings: Settings,
    registry: LocalRegistry,
    tables: Tables,
    tiny_contract: FeatureContract,
    tiny_model: ChurnModel,
) -> None:
    log_window(settings, tables, tiny_contract, tiny_model, tiny_frame(WINDOW_ROWS, seed=2))

    run = run_drift(settings, registry, tables, now=NOW)

    assert statuses(run) == dict.fromkeys([*tiny_contract.feature_names, "probability"], "ok")
    assert (run.n_reference, run.n_current, run.n_current_version) == (
        3000,
        WINDOW_ROWS,
        WINDOW_ROWS,
    )
    assert run.alerts == [] and run.problems == []
    stored = query_delta(
        {"drift": tables.drift_results},
        f"SELECT feature, status, n_current, model_version FROM drift WHERE run_id = '{run.run_id}'",
    ).to_pylist()
    assert {r["feature"]: r["status"] for r in stored} == statuses(run)
    assert {(r["n_current"], r["model_version"]) for r in stored} == {(WINDOW_ROWS, 1)}
    metrics = read_metrics(Path(run.metrics_target))
    assert all(drift_status(metrics, f) == 0 for f in statuses(run))
    assert metrics[("churn_drift_rows", (("window", "current"),))] == WINDOW_ROWS
    assert metrics[("churn_drift_rows", (("window", "reference"),))] == 3000
    assert ("churn_job_last_success_timestamp_seconds", (("job", "churn-drift"),)) in metrics


def test_a_drifted_feature_alerts_naming_statistic_value_and_threshold(
    slack: Settings,
    registry: LocalRegistry,
    tables: Tables,
    receiver: Receiver,
    tiny_contract: FeatureContract,
    tiny_model: ChurnModel,
) -> None:
    shifted = tiny_frame(WINDOW_ROWS, seed=2)
    shifted["fee"] *= 1.6
    log_window(slack, tables, tiny_contract, tiny_model, shifted)

    run = run_drift(slack, registry, tables, now=NOW)

    # The tiny model splits on fee a little, so its score may move too; nothing else may.
    assert run.drifted[0] == "fee" and set(run.drifted) <= {"fee", "probability"}
    assert run.alerts_sent == len(run.alerts) == len(run.drifted) and run.problems == []
    alert = next(a for a in run.alerts if a.details["feature"] == "fee")
    assert alert.title == "Drift on feature fee"
    fee = next(f for f in run.features if f.feature == "fee")
    assert fee.psi is not None and alert.details["psi"] == pytest.approx(fee.psi)
    assert alert.details["psi_threshold"] == 0.2
    assert f"psi {fee.psi:.3g} >= 0.2" in alert.summary
    assert len(receiver.bodies) == len(run.alerts)
    texts = [body["text"] for body in receiver.bodies]
    assert any("fee" in text and "psi" in text for text in texts)
    assert not any(name in text for text in texts for name in ("usage", "plan", "autopay"))
    assert drift_status(read_metrics(Path(run.metrics_target)), "fee") == 1
    assert drift_status(read_metrics(Path(run.metrics_target)), "usage") == 0


def test_too_few_rows_never_alert(
    slack: Settings,
    registry: LocalRegistry,
    tables: Tables,
    receiver: Receiver,
    tiny_contract: FeatureContract,
    tiny_model: ChurnModel,
) -> None:
    shifted = tiny_frame(100, seed=2)
    shifted["fee"] *= 3
    log_window(slack, tables, tiny_contract, tiny_model, shifted)

    run = run_drift(slack, registry, tables, now=NOW)

    assert set(statuses(run).values()) == {"insufficient_data"}
    fee = next(f for f in run.features if f.feature == "fee")
    assert fee.psi is not None and fee.psi > 1  # measured, but not judged
    assert run.alerts == [] and receiver.bodies == []
    assert drift_status(read_metrics(Path(run.metrics_target)), "fee") == 2


def test_the_score_is_compared_on_the_reference_version_only(
    settings: Settings,
    registry: LocalRegistry,
    tables: Tables,
    tiny_contract: FeatureContract,
    tiny_model: ChurnModel,
) -> None:
    log_window(settings, tables, tiny_contract, tiny_model, tiny_frame(WINDOW_ROWS, seed=2))
    # Another version's predictions on the same kind of rows, with a different score scale.
    other = tiny_frame(WINDOW_ROWS, seed=3)
    spool = settings.resolve(settings.monitoring.prediction_log.spool_dir)
    scores = 1 - tiny_model.predict_frame(other) ** 3
    log_predictions(
        tables.prediction_log,
        spool,
        tiny_contract,
        other,
        scores,
        model_name=MODEL,
        version=2,
        end=NOW,
    )

    run = run_drift(settings, registry, tables, now=NOW)

    score = next(f for f in run.features if f.feature == "probability")
    assert (score.status, score.n_current) == ("ok", WINDOW_ROWS)
    usage = next(f for f in run.features if f.feature == "usage")
    assert (usage.status, usage.n_current) == ("ok", 2 * WINDOW_ROWS)
    assert run.n_current_version == WINDOW_ROWS


def test_rows_outside_the_window_are_not_read(
    settings: Settings,
    registry: LocalRegistry,
    tables: Tables,
    tiny_contract: FeatureContract,
    tiny_model: ChurnModel,
) -> None:
    shifted = tiny_frame(WINDOW_ROWS, seed=2)
    shifted["fee"] *= 1.6
    # Drifted rows two days back; the window of NOW holds none of them.
    log_window(settings, tables, tiny_contract, tiny_model, shifted, end=NOW - timedelta(days=2))

    now_run = run_drift(settings, registry, tables, now=NOW)
    replay = run_drift(settings, registry, tables, now=NOW - timedelta(days=2))

    assert now_run.n_current == 0 and set(statuses(now_run).values()) == {"insufficient_data"}
    assert replay.n_current == WINDOW_ROWS and "fee" in replay.drifted


def test_the_window_ends_at_now_in_utc_and_must_be_positive() -> None:
    start, end = drift_window(datetime(2026, 3, 10, 12, 0), 24)  # naive: UTC
    assert (start, end) == (NOW - timedelta(hours=24), NOW)
    with pytest.raises(DriftJobError, match="must be positive"):
        drift_window(NOW, 0)


def test_no_prediction_log_reads_as_an_empty_window(
    settings: Settings, registry: LocalRegistry, tables: Tables
) -> None:
    run = run_drift(settings, registry, tables, now=NOW)
    assert run.n_current == 0
    assert set(statuses(run).values()) == {"insufficient_data"}
    assert run.problems == []


def test_a_version_without_reference_is_one_clear_error(
    settings: Settings,
    registry: LocalRegistry,
    tables: Tables,
    tiny_contract: FeatureContract,
    tiny_model_bytes: bytes,
) -> None:
    old = register(registry, tiny_model_bytes, tiny_contract, {})
    registry.set_alias(MODEL, "champion", old)
    with pytest.raises(DriftJobError) as info:
        run_drift(settings, registry, tables, now=NOW)
    message = str(info.value)
    assert "\n" not in message
    assert f"version {old} has no reference.parquet" in message and "retrain" in message


def test_unreachable_mongodb_is_a_problem_that_keeps_delta_and_alerts(
    slack: Settings,
    registry: LocalRegistry,
    tables: Tables,
    receiver: Receiver,
    tiny_contract: FeatureContract,
    tiny_model: ChurnModel,
) -> None:
    port = free_port()
    monitoring = slack.monitoring.model_copy(
        update={
            "mongodb_url": SecretStr(f"mongodb://drift:hunter2@127.0.0.1:{port}/"),
            "mongodb_timeout_s": 0.3,
        }
    )
    settings = slack.model_copy(update={"monitoring": monitoring})
    shifted = tiny_frame(WINDOW_ROWS, seed=2)
    shifted["fee"] *= 1.6
    log_window(settings, tables, tiny_contract, tiny_model, shifted)

    run = run_drift(settings, registry, tables, now=NOW)

    [problem] = run.problems
    assert f"mongodb://127.0.0.1:{port} database 'churn_monitoring'" in problem
    assert "hunter2" not in problem and "\n" not in problem
    assert len(receiver.bodies) == len(run.alerts) >= 1  # the alerts still went out
    stored = query_delta(
        {"drift": tables.drift_results},
        f"SELECT count(*) AS n FROM drift WHERE run_id = '{run.run_id}'",
    )
    assert stored.column("n").to_pylist() == [len(run.features)]
    metrics = read_metrics(Path(run.metrics_target))
    assert ("churn_job_last_success_timestamp_seconds", (("job", "churn-drift"),)) not in metrics


# -- the command -----------------------------------------------------------------------------


def test_command_prints_the_table_and_exits_zero_unless_asked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    registry: LocalRegistry,
    tiny_contract: FeatureContract,
    tiny_model: ChurnModel,
) -> None:
    from churn.drift_cli import DRIFT_FOUND_EXIT, drift_command
    from churn.failures import one_line_errors_for

    settings = make_settings(tmp_path)
    for name, value in {
        "CHURN_ENV": "test",
        "CHURN_ROOT": str(settings.root),
        "CHURN_REGISTRY__ROOT": str(tmp_path / "registry"),
        "CHURN_REGISTRY__MODEL_NAME": MODEL,
        "CHURN_LAKE_DIR": str(tmp_path / "lake"),
        "CHURN_MONITORING__METRICS_DIR": str(tmp_path / "metrics"),
        "CHURN_MONITORING__ALERTS__STATE_PATH": str(tmp_path / "alert_state.json"),
    }.items():
        monkeypatch.setenv(name, value)
    tables = Tables(tmp_path / "lake" / settings.dataset)
    shifted = tiny_frame(WINDOW_ROWS, seed=2)
    shifted["fee"] *= 1.6
    log_window(settings, tables, tiny_contract, tiny_model, shifted)
    app = typer.Typer()
    app.command()(one_line_errors_for("churn")(drift_command))
    when = NOW.strftime("%Y-%m-%dT%H:%M:%S")

    found = CliRunner().invoke(app, ["--now", when, "--window-hours", "2"], terminal_width=200)
    failing = CliRunner().invoke(app, ["--now", when, "--fail-on-drift"], terminal_width=200)
    empty = CliRunner().invoke(app, ["--now", "2020-01-01", "--fail-on-drift"], terminal_width=200)

    assert found.exit_code == 0, found.output
    fee_line = next(line for line in found.stdout.splitlines() if line.strip().startswith("fee"))
    assert "drift" in fee_line and "psi" in fee_line
    assert "psi >= 0.2" in found.stdout  # the thresholds, in the caption
    assert "drifted=fee" in found.stdout and f"current={WINDOW_ROWS}" in found.stdout
    assert failing.exit_code == DRIFT_FOUND_EXIT
    assert empty.exit_code == 0 and "drifted=0" in empty.stdout
