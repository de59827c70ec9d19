"""The registry on MongoDB (a real MongoDB-wire server, SecantusDB) and on its JSON files default.

Behaviour tests run on both metadata stores; the MongoDB-only ones cover what only a server can
get wrong: concurrent clients, a restart of the server, an unreachable server, the indexes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xgboost as xgb
from pydantic import SecretStr
from pymongo import MongoClient

from churn_core.contract import FeatureContract
from churn_core.model import FeatureEncoder
from churn_core.promotion import (
    BeatsChampionGate,
    CalibrationGate,
    MinMetricGate,
    PromotionPolicy,
    SegmentToleranceGate,
)
from churn_core.registry import (
    MongoMetadataStore,
    PromotionRefused,
    Registry,
    RegistryError,
    RegistryUnavailable,
    open_registry,
)
from churn_core.settings import RegistrySettings
from tests.fixtures.mongo import SecantusServer, free_port
from tests.unit.conftest import TINY_CONTRACT, tiny_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

POLICY = PromotionPolicy(
    gates=[
        MinMetricGate(min=0.6),
        CalibrationGate(max=0.1),
        BeatsChampionGate(margin=0.0),
        SegmentToleranceGate(tolerance=0.03, min_rows=100),
    ]
)
# A segment name holding a dot and brackets, as binned segments produce.
SEGMENTS: dict[str, dict[str, float | None]] = {
    "tenure_band=[0.5, 1)": {"n": 400.0, "positives": 90.0, "roc_auc": 0.71},
    "plan=basic": {"n": 800.0, "positives": 200.0, "roc_auc": None},
}


@pytest.fixture(scope="module")
def contract() -> FeatureContract:
    return FeatureContract.model_validate(TINY_CONTRACT)


@pytest.fixture(scope="module")
def model_bytes(contract: FeatureContract) -> bytes:
    frame = tiny_frame(500)
    encoder = FeatureEncoder(contract)
    dmatrix = encoder.dmatrix(encoder.encode_frame(frame), frame["churned"].to_numpy())
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1}, dmatrix, 5)
    return bytes(booster.save_raw("ubj"))


def mongo_settings(tmp_path: Path, url: str, database: str, **extra: Any) -> RegistrySettings:
    return RegistrySettings(
        root=tmp_path / "registry",
        metadata="mongodb",
        mongodb_url=SecretStr(url),
        mongodb_database=database,
        mongodb_timeout_s=30.0,  # the machine is shared: a loaded server answers slowly
        **extra,
    )


RegistryFactory = Callable[[], Registry]


@pytest.fixture(params=["files", "mongodb"])
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryFactory]:
    """Opens registries on one store (each call: a new client, as another process would)."""
    if request.param == "files":
        settings = RegistrySettings(root=tmp_path / "registry")
    else:
        server: SecantusServer = request.getfixturevalue("mongo_server")
        database: str = request.getfixturevalue("mongo_database")
        settings = mongo_settings(tmp_path, server.url, database)
    opened: list[Registry] = []

    def factory() -> Registry:
        opened.append(open_registry(settings, policy=POLICY))
        return opened[-1]

    yield factory
    for registry in opened:
        registry.close()


def register(
    registry: Registry,
    model: bytes,
    contract: FeatureContract,
    auc: float,
    ece: float = 0.02,
    **extra: Any,
) -> int:
    return registry.register(
        "m",
        model,
        contract,
        params={"max_depth": 2, "eta": 0.3},
        metrics={"roc_auc": auc, "ece": ece},
        lineage={"gold_delta_version": 7, "rows": {"train": 350, "test": 100}},
        feature_importance={"usage": 3.5, "plan": 0.5},
        **extra,
    ).version


def snapshot(registry: Registry) -> dict[str, Any]:
    """Everything readable about model ``m``."""
    return {
        "versions": registry.list("m"),
        "aliases": registry.aliases("m"),
        "history": registry.alias_history("m"),
        "metrics": registry.metric_history("m"),
        "models": {
            v: registry.read_file("m", v, "model.ubj") for v in registry.version_numbers("m")
        },
    }


# --- the same behaviour on both stores ------------------------------------------------------


def test_a_version_reads_back_exactly_as_registered(
    open_backend: RegistryFactory, model_bytes: bytes, contract: FeatureContract
) -> None:
    registry = open_backend()
    meta = registry.register(
        "m",
        model_bytes,
        contract,
        params={"max_depth": 2, "objective": "binary:logistic"},
        metrics={"roc_auc": 0.71, "ece": 0.02},
        lineage={"gold_delta_version": 7, "rows": {"train": 350}},
        feature_importance={"usage": 3.5},
        segments=SEGMENTS,
        files={"report.json": b'{"n": 100}', "plots/roc.png": b"\x89PNG"},
    )
    reader = open_backend()  # another client
    assert reader.get("m", meta.version) == meta
    assert reader.list("m") == [meta]
    assert reader.model_names() == ["m"]
    assert reader.get("m", 1).segments == SEGMENTS
    assert reader.read_file("m", 1, "plots/roc.png") == b"\x89PNG"
    assert reader.load_model("m", 1).contract == contract


def test_promotion_rollback_and_history(
    open_backend: RegistryFactory, model_bytes: bytes, contract: FeatureContract
) -> None:
    registry = open_backend()
    for auc in (0.70, 0.72, 0.71):
        register(registry, model_bytes, contract, auc)
    registry.promote("m", 1, reason="first", actor="alice")
    registry.promote("m", 2, reason="better", actor="bob")
    with pytest.raises(PromotionRefused, match=r"roc_auc 0.7100 < champion v2 0.7200"):
        registry.promote("m", 3, reason="worse")
    registry.set_alias("m", "challenger", 3, reason="shadow")
    assert registry.rollback("m", reason="v2 drifts").to_version == 1
    reader = open_backend()
    assert reader.aliases("m") == {"challenger": 3, "champion": 1}
    assert reader.load_model("m").version == 1
    champion = reader.alias_history("m", "champion")
    assert [(e.seq, e.action, e.from_version, e.to_version, e.actor) for e in champion] == [
        (1, "promote", None, 1, "alice"),
        (2, "promote", 1, 2, "bob"),
        (3, "rollback", 2, 1, champion[2].actor),
    ]
    assert champion[1].gates[0].message == "roc_auc 0.7200 >= 0.6000"
    assert [e.alias for e in reader.alias_history("m")] == [
        "champion",
        "champion",
        "challenger",
        "champion",
    ]
    diff = reader.compare("m", "challenger", "champion")
    assert {d.metric: d.delta for d in diff.metrics}["roc_auc"] == pytest.approx(-0.01)


def test_metric_history_is_appended(
    open_backend: RegistryFactory, model_bytes: bytes, contract: FeatureContract
) -> None:
    registry = open_backend()
    register(registry, model_bytes, contract, 0.70)
    registry.record_metrics("m", 1, {"roc_auc": 0.69}, source="accuracy", details={"labels": 80})
    registry.record_metrics("m", 1, {"roc_auc": 0.67}, source="accuracy")
    history = open_backend().metric_history("m", 1)
    assert [(r.source, r.metrics) for r in history] == [
        ("registration", {"roc_auc": 0.70, "ece": 0.02}),
        ("accuracy", {"roc_auc": 0.69}),
        ("accuracy", {"roc_auc": 0.67}),
    ]
    assert history[1].details == {"labels": 80}


def test_a_tampered_artifact_is_refused(
    open_backend: RegistryFactory, model_bytes: bytes, contract: FeatureContract, tmp_path: Path
) -> None:
    registry = open_backend()
    register(registry, model_bytes, contract, 0.70)
    artifact = tmp_path / "registry/m/versions/000001/model.ubj"
    artifact.write_bytes(artifact.read_bytes()[::-1])
    with pytest.raises(RegistryError, match=r"model\.ubj: checksum mismatch"):
        open_backend().load_model("m", 1)


def test_a_failed_registration_is_never_visible(
    open_backend: RegistryFactory,
    model_bytes: bytes,
    contract: FeatureContract,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = open_backend()

    def lost_insert(meta: object) -> None:
        raise OSError("lost")

    monkeypatch.setattr(registry.metadata, "insert_version", lost_insert)
    with pytest.raises(OSError, match="lost"):
        register(registry, model_bytes, contract, 0.70)
    monkeypatch.undo()
    assert registry.version_numbers("m") == []
    number = register(registry, model_bytes, contract, 0.70)
    assert registry.version_numbers("m") == [number]  # MongoDB skips the failed number


def test_concurrent_registrations_get_distinct_versions(
    open_backend: RegistryFactory, model_bytes: bytes, contract: FeatureContract
) -> None:
    registries = [open_backend() for _ in range(4)]
    numbers: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(registries))

    def work(registry: Registry) -> None:
        try:
            start.wait()
            numbers.extend(register(registry, model_bytes, contract, 0.7) for _ in range(5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 21))
    assert open_backend().version_numbers("m") == list(range(1, 21))


def test_concurrent_alias_moves_lose_no_event(
    open_backend: RegistryFactory, model_bytes: bytes, contract: FeatureContract
) -> None:
    setup = open_backend()
    for _ in range(4):
        register(setup, model_bytes, contract, 0.7)
    registries = [open_backend() for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(registries))

    def work(registry: Registry, index: int) -> None:
        try:
            start.wait()
            for round_ in range(4):
                # Each move changes the alias (alternating targets), so each is recorded.
                registry.set_alias("m", "challenger", 1 + (index + round_) % 4, reason=f"{index}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r, i)) for i, r in enumerate(registries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Conflicts beyond the retries surface as errors; lost or duplicated events must not.
    assert all("kept moving" in str(e) for e in errors)
    history = open_backend().alias_history("m", "challenger")
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version
    assert open_backend().aliases("m")["challenger"] == history[-1].to_version


# --- MongoDB only ---------------------------------------------------------------------------


def test_the_registry_survives_a_server_restart_with_nothing_lost(
    tmp_path: Path, model_bytes: bytes, contract: FeatureContract
) -> None:
    with SecantusServer(tmp_path / "mongo-data") as server:
        settings = mongo_settings(tmp_path, server.url, "churn_registry")
        registry = open_registry(settings, policy=POLICY)
        for auc in (0.70, 0.74, 0.72):
            register(registry, model_bytes, contract, auc, segments=SEGMENTS)
        registry.promote("m", 1, reason="first")
        registry.promote("m", 2, reason="better")
        registry.set_alias("m", "challenger", 3, reason="shadow")
        registry.rollback("m", reason="drift")
        registry.record_metrics("m", 1, {"roc_auc": 0.69}, source="accuracy")
        before = snapshot(registry)
        pid = server.pid

        assert server.stop() == 0  # SIGTERM: a clean shutdown
        server.start()  # same port, same storage
        assert server.pid != pid

        with open_registry(settings, policy=POLICY) as fresh:
            assert snapshot(fresh) == before
            assert fresh.load_model("m").version == 1
        # The client opened before the restart reconnects by itself.
        assert snapshot(registry) == before
        # Numbering and alias sequences continue where they were.
        assert register(registry, model_bytes, contract, 0.75, segments=SEGMENTS) == 4
        assert registry.promote("m", 4, reason="after restart").event.seq == 4  # type: ignore[union-attr]
        registry.close()


def test_an_unreachable_server_fails_with_one_line_and_no_password(tmp_path: Path) -> None:
    url = f"mongodb://churn:s3cret@127.0.0.1:{free_port()}/?authSource=admin"
    settings = mongo_settings(tmp_path, url, "churn_registry").model_copy(
        update={"mongodb_timeout_s": 0.5}
    )
    registry = open_registry(settings)  # connects lazily: nothing fails yet
    with pytest.raises(RegistryUnavailable) as caught:
        registry.aliases("m")
    message = str(caught.value)
    assert "\n" not in message and "s3cret" not in message
    assert message.startswith("registry metadata store mongodb://127.0.0.1:")
    assert "database 'churn_registry' unreachable" in message
    assert "s3cret" not in registry.description
    registry.close()


def test_collections_and_indexes(
    mongo_server: SecantusServer,
    mongo_database: str,
    tmp_path: Path,
    model_bytes: bytes,
    contract: FeatureContract,
) -> None:
    registry = open_registry(mongo_settings(tmp_path, mongo_server.url, mongo_database))
    register(registry, model_bytes, contract, 0.7, segments=SEGMENTS)
    registry.set_alias("m", "champion", 1)
    registry.record_metrics("m", 1, {"roc_auc": 0.7}, source="accuracy")
    client: MongoClient[dict[str, Any]]
    with mongo_server.client() as client:
        db = client[mongo_database]
        assert db[MongoMetadataStore.VERSIONS].index_information()["name_version"]["unique"]
        assert db[MongoMetadataStore.ALIASES].index_information()["name_alias"]["unique"]
        assert db[MongoMetadataStore.EVENTS].index_information()["name_alias_seq"]["unique"]
        document = db[MongoMetadataStore.VERSIONS].find_one({"name": "m", "version": 1})
        assert document is not None
        # Segment names are values, not keys: dots in them are safe on any MongoDB.
        assert document["segments"][0] == {
            "segment": "tenure_band=[0.5, 1)",
            "metrics": SEGMENTS["tenure_band=[0.5, 1)"],
        }
        assert db[MongoMetadataStore.COUNTERS].find_one({"_id": "m"}) == {"_id": "m", "seq": 1}
        # A counter lost or restored behind the versions does not hand out a used number.
        db[MongoMetadataStore.COUNTERS].delete_many({})
    assert register(registry, model_bytes, contract, 0.7) == 2
    registry.close()


def test_an_event_lost_between_the_two_alias_writes_is_recovered(
    mongo_server: SecantusServer,
    mongo_database: str,
    tmp_path: Path,
    model_bytes: bytes,
    contract: FeatureContract,
) -> None:
    registry = open_registry(mongo_settings(tmp_path, mongo_server.url, mongo_database))
    register(registry, model_bytes, contract, 0.7)
    register(registry, model_bytes, contract, 0.7)
    registry.set_alias("m", "champion", 1)
    registry.set_alias("m", "champion", 2, reason="moved")
    # A crash after the alias update, before the event insert: the event is missing.
    with mongo_server.client() as client:
        client[mongo_database][MongoMetadataStore.EVENTS].delete_one({"seq": 2})
    assert [e.seq for e in registry.alias_history("m")] == [1, 2]  # merged from the alias
    registry.rollback("m", reason="back")  # the next move re-inserts it
    with mongo_server.client() as client:
        seqs = client[mongo_database][MongoMetadataStore.EVENTS].distinct("seq")
    assert sorted(seqs) == [1, 2, 3]
    registry.close()
