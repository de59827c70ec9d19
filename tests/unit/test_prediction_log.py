"""The prediction log: rows reach Delta from the API, close() loses nothing, the spool replays once."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from churn_core.contract import FeatureContract
from churn_core.model import ChurnModel
from churn_core.prediction_log import (
    PredictionLogTarget,
    PredictionLogWriter,
    new_prediction_id,
    prediction_log_schema,
    prediction_row,
    query_delta,
    read_prediction_window,
)
from churn_core.settings import PredictionLogSettings
from serve_apps.api import create_api
from serve_apps.runtime import build_runtime
from tests.unit.test_api import GOOD, MemorySource, meta, serve_settings, token


def row(contract: FeatureContract, when: datetime, **features: object) -> dict[str, object]:
    return prediction_row(
        prediction_id=new_prediction_id(),
        logged_at=when,
        model_name="m",
        model_version=1,
        endpoint="predict",
        customer_id="C1",
        features_from="request",
        as_of=None,
        probability=0.25,
        churn=False,
        threshold=0.5,
        features={**GOOD, **features},
    )


def read_all(path: Path) -> pa.Table:
    return query_delta({"log": path}, "SELECT * FROM log ORDER BY logged_at")


def test_the_schema_follows_the_contract(tiny_contract: FeatureContract) -> None:
    schema = prediction_log_schema(tiny_contract)
    assert schema.field("usage").type == pa.float64()
    assert schema.field("plan").type == pa.string()
    assert schema.field("autopay").type == pa.bool_()
    assert schema.names[-len(tiny_contract.features) :] == tiny_contract.feature_names


def test_the_api_logs_every_answer_with_its_features(
    tiny_model: ChurnModel, tmp_path: Path
) -> None:
    table = tmp_path / "log"
    # A flush interval longer than the test: only closing the app can write the rows.
    target = PredictionLogTarget(
        str(table), str(tmp_path / "spool"), PredictionLogSettings(flush_interval_s=3600)
    )
    source = MemorySource(tiny_model, {1: meta(1, threshold=0.3)})
    runtime = build_runtime(serve_settings(tmp_path), source, lambda p: p, prediction_log=target)
    with TestClient(create_api(runtime)) as client:
        headers = token(client, "predictor-client")
        single = client.post("/v1/predict", json={"features": GOOD}, headers=headers).json()
        other = {**GOOD, "fee": 95.0, "plan": "premium"}
        batch = client.post(
            "/v1/batch_predict",
            json={"records": [{"features": other}, {"customer_id": "C9", "features": GOOD}]},
            headers=headers,
        ).json()
        assert runtime.prediction_log is not None
        assert runtime.prediction_log.buffered == 3
        assert not table.exists()
    logged = {r["prediction_id"]: r for r in read_all(table).to_pylist()}
    answers = [single, *batch["predictions"]]
    assert set(logged) == {a["prediction_id"] for a in answers}
    for answer, endpoint, features in zip(
        answers, ["predict", "batch_predict", "batch_predict"], [GOOD, other, GOOD], strict=True
    ):
        entry = logged[answer["prediction_id"]]
        assert entry["endpoint"] == endpoint
        assert entry["probability"] == pytest.approx(answer["probability"])
        assert entry["churn"] == answer["churn"]
        assert entry["customer_id"] == answer["customer_id"]
        assert entry["model_version"] == 1 and entry["threshold"] == 0.3
        assert {k: entry[k] for k in features} == features
        assert entry["as_of"] == entry["log_date"] == entry["logged_at"].date()


def test_concurrent_appends_are_all_written_once(
    tiny_contract: FeatureContract, tmp_path: Path
) -> None:
    writer = PredictionLogWriter(
        tmp_path / "log",
        prediction_log_schema(tiny_contract),
        PredictionLogSettings(flush_rows=50, flush_interval_s=0.01),
        tmp_path / "spool",
    )
    writer.start()
    ids: list[str] = []
    lock = threading.Lock()

    def produce() -> None:
        for _ in range(300):
            entry = row(tiny_contract, datetime.now(UTC))
            with lock:
                ids.append(str(entry["prediction_id"]))
            writer.append([entry])

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    written = read_all(tmp_path / "log").column("prediction_id").to_pylist()
    assert sorted(written) == sorted(ids)
    assert writer.stats["written"] == 1200 and writer.buffered == 0


def test_a_failed_write_is_spooled_and_replayed_exactly_once(
    tiny_contract: FeatureContract, tmp_path: Path
) -> None:
    schema = prediction_log_schema(tiny_contract)
    spool = tmp_path / "spool"
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the table should be")
    failing = PredictionLogWriter(blocked / "log", schema, PredictionLogSettings(), spool)
    lost = [row(tiny_contract, datetime.now(UTC)) for _ in range(5)]
    failing.append(lost)
    result = failing.flush()
    assert (result.written, result.spooled) == (0, 5)
    assert len(list(spool.glob("*.arrow"))) == 1

    table = tmp_path / "log"
    healthy = PredictionLogWriter(table, schema, PredictionLogSettings(), spool)
    # A replay that died after its commit but before deleting the file is replayed again.
    spooled = next(spool.glob("*.arrow"))
    copy = spool / "copy.arrow"
    copy.write_bytes(spooled.read_bytes())
    healthy.append([row(tiny_contract, datetime.now(UTC))])
    assert healthy.flush().replayed == 10
    ids = read_all(table).column("prediction_id").to_pylist()
    assert len(ids) == 6 and len(set(ids)) == 6
    assert {str(r["prediction_id"]) for r in lost} <= set(ids)
    assert list(spool.iterdir()) == []


def test_a_window_reads_only_its_own_rows(tiny_contract: FeatureContract, tmp_path: Path) -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    writer = PredictionLogWriter(
        tmp_path / "log",
        prediction_log_schema(tiny_contract),
        PredictionLogSettings(),
        tmp_path / "spool",
    )
    hours = [1, 5, 30, 80]
    writer.append([row(tiny_contract, now - timedelta(hours=h), usage=float(h)) for h in hours])
    writer.flush()
    window = read_prediction_window(tmp_path / "log", now - timedelta(hours=24), now)
    assert sorted(window.column("usage").to_pylist()) == [1.0, 5.0]
    newest = read_prediction_window(tmp_path / "log", now - timedelta(days=5), now, max_rows=3)
    assert newest.column("usage").to_pylist() == [1.0, 5.0, 30.0]
    assert read_prediction_window(tmp_path / "absent", now - timedelta(days=1)).num_rows == 0
    assert window.column("log_date").to_pylist() == [date(2026, 3, 10)] * 2
