"""Transactions ingested from a real Kafka-protocol broker (Tansu): exactly once, through faults.

Offsets live in the bronze rows themselves, so they commit atomically with the data; the
consumer group's offsets are written afterwards for lag dashboards only. The fault tests kill
the real ``churn ingest`` process at named failpoints and check that the next run neither loses
nor duplicates a message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from deltalake import DeltaTable

from churn_core.contract import load_contract
from churn_core.faults import FAILPOINT_EXIT_CODE
from churn_core.settings import IngestSettings, KafkaSourceSettings
from churn_core.tables import Tables
from pipelines.ingest import IngestError, ingest_with_retries
from pipelines.sample_data import generate_sample_data
from pipelines.silver import build_source_silver
from pipelines.sources.kafka import produce_records
from tests.conftest import REPO_ROOT

if TYPE_CHECKING:
    from tests.fixtures.kafka import ProxiedKafka, TansuBroker

pytestmark = pytest.mark.integration
CONTRACT = load_contract(REPO_ROOT / "configs" / "contracts" / "saas.yaml")
SPEC = CONTRACT.sources["transactions"]
PARTITIONS = 3


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stream") / "raw"
    generate_sample_data(folder, 50, seed=5, chunk_size=50, page_size=100)
    return folder


def message_lines(raw: Path) -> list[str]:
    return [
        line
        for path in sorted((raw / "transactions").glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]


_topics = Counter[str]()


def fresh_topic(name: str) -> str:
    _topics[name] += 1
    return f"{name}-{_topics[name]}"


def publish(bootstrap: str, topic: str, lines: list[str]) -> None:
    produce_records(bootstrap, topic, lines, partitions=PARTITIONS)


def kafka_settings(bootstrap: str, topic: str, **extra: object) -> KafkaSourceSettings:
    return KafkaSourceSettings(
        bootstrap_servers=bootstrap, topic=topic, idle_timeout_s=0.5, **extra
    )


def bronze(tables: Tables) -> pd.DataFrame:
    return DeltaTable(str(tables.bronze("transactions"))).to_pandas()


def assert_exactly_once(tables: Tables, lines: list[str]) -> None:
    """Bronze holds every message once: offsets 0..n-1 per partition, raw texts as sent."""
    rows = bronze(tables)
    assert len(rows) == len(lines)
    assert rows["_record_id"].is_unique
    for _, group in rows.groupby("_partition"):
        assert sorted(group["_offset"]) == list(range(len(group)))
    assert Counter(rows["_raw"]) == Counter(lines)


def test_a_topic_is_ingested_exactly_once_and_then_incrementally(
    spark: object, kafka_broker: TansuBroker, raw: Path, tmp_path: Path
) -> None:
    tables = Tables(tmp_path / "lake")
    topic = fresh_topic("tx")
    lines = message_lines(raw)
    first, rest = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    publish(kafka_broker.bootstrap, topic, first)
    settings = kafka_settings(kafka_broker.bootstrap, topic)
    policy = IngestSettings()

    one = ingest_with_retries(spark, "transactions", SPEC, settings, raw, tables, policy)  # type: ignore[arg-type]
    assert one.read == one.appended == len(first)
    publish(kafka_broker.bootstrap, topic, rest)
    two = ingest_with_retries(spark, "transactions", SPEC, settings, raw, tables, policy)  # type: ignore[arg-type]
    assert two.read == two.appended == len(rest)  # only the new messages were read
    three = ingest_with_retries(spark, "transactions", SPEC, settings, raw, tables, policy)  # type: ignore[arg-type]
    assert three.read == 0
    assert_exactly_once(tables, lines)

    silver = build_source_silver(spark, CONTRACT, tables, "transactions")  # type: ignore[arg-type]
    unique = {json.loads(line)["event_id"] for line in lines}
    assert silver.read == len(lines) and silver.accepted == len(unique)
    assert silver.reasons == {"duplicate_key": len(lines) - len(unique)}


def run_ingest(
    raw: Path, lake: Path, bootstrap: str, topic: str, failpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``churn ingest`` as its own process, transactions from Kafka, the rest from files."""
    env = {
        **os.environ,
        "CHURN_RAW_DIR": str(raw),
        "CHURN_LAKE_DIR": str(lake),
        "CHURN_SOURCES__TRANSACTIONS__KIND": "kafka",
        "CHURN_SOURCES__TRANSACTIONS__BOOTSTRAP_SERVERS": bootstrap,
        "CHURN_SOURCES__TRANSACTIONS__TOPIC": topic,
        "CHURN_SOURCES__TRANSACTIONS__IDLE_TIMEOUT_S": "0.5",
        "CHURN_SOURCES__TRANSACTIONS__CONSUMER_GROUP": f"churn-{topic}",
    }
    env.pop("CHURN_FAILPOINTS", None)
    if failpoint:
        env["CHURN_FAILPOINTS"] = failpoint
    churn = Path(sys.executable).with_name("churn")
    return subprocess.run(
        [str(churn), "--env", "test", "ingest"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO_ROOT,
    )


def group_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = consumer.committed(parts, timeout=10)
        return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
    finally:
        consumer.close()


@pytest.fixture
def killed_lake(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "lake"


@pytest.mark.parametrize(
    "failpoint",
    [
        "bronze.after_stage.transactions",  # read from Kafka, nothing committed to bronze
        "bronze.after_commit.transactions",  # bronze committed, group offsets not yet
        "silver.after_quarantine.transactions",  # quarantine written, silver not
        "silver.after_upsert.transactions",  # silver written, reconciliation not
    ],
)
def test_a_job_killed_at_any_point_resumes_without_loss_or_duplicates(
    kafka_broker: TansuBroker, raw: Path, killed_lake: Path, failpoint: str
) -> None:
    topic = fresh_topic("killed")
    lines = message_lines(raw)
    publish(kafka_broker.bootstrap, topic, lines)

    killed = run_ingest(raw, killed_lake, kafka_broker.bootstrap, topic, failpoint)
    assert killed.returncode == FAILPOINT_EXIT_CODE, killed.stderr[-2000:]
    tables = Tables(killed_lake / "saas")
    group = f"churn-{topic}"
    if failpoint.startswith("bronze.after_stage"):
        assert not tables.bronze("transactions").exists()
    else:  # the kill came after the bronze commit
        assert len(bronze(tables)) == len(lines)
    if failpoint.startswith("bronze."):
        assert group_offsets(kafka_broker.bootstrap, topic, group) == {}
    if failpoint.startswith("silver."):
        ledger = DeltaTable(str(tables.reconciliation)).to_pandas()
        assert "transactions" not in set(ledger["source"])  # killed before reconciling
        assert tables.quarantine("transactions").exists()
        assert tables.silver("transactions").exists() == failpoint.startswith("silver.after_upsert")
    resumed = run_ingest(raw, killed_lake, kafka_broker.bootstrap, topic)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    assert_exactly_once(tables, lines)
    ledger = DeltaTable(str(tables.reconciliation)).to_pandas()
    tx = ledger[ledger["source"] == "transactions"]
    assert tx["reconciled"].all()
    assert tx["read"].sum() == len(lines) == tx["accepted"].sum() + tx["quarantined"].sum()
    silver = DeltaTable(str(tables.silver("transactions"))).to_pandas()
    assert silver["event_id"].is_unique
    assert set(silver["event_id"]) == {json.loads(x)["event_id"] for x in lines}
    # After the resumed run the group's offsets (for lag dashboards) caught up too.
    counts = bronze(tables).groupby("_partition").size()
    expected = {int(p): int(n) for p, n in counts.items()}
    assert group_offsets(kafka_broker.bootstrap, topic, group) == expected


def test_group_offsets_ahead_of_bronze_do_not_skip_messages(
    kafka_broker: TansuBroker, raw: Path, tmp_path: Path
) -> None:
    """The reverse order: a consumer group committed past what bronze holds (a crash between an
    offset commit and the write, in a design that commits offsets first). Bronze wins."""
    from pipelines.sources.kafka import commit_consumer_offsets

    topic = fresh_topic("ahead")
    lines = message_lines(raw)
    publish(kafka_broker.bootstrap, topic, lines)
    ahead = kafka_settings(kafka_broker.bootstrap, topic, consumer_group=f"churn-{topic}")
    commit_consumer_offsets(ahead, dict.fromkeys(range(PARTITIONS), 10_000))
    result = run_ingest(raw, tmp_path / "lake", kafka_broker.bootstrap, topic)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_exactly_once(Tables(tmp_path / "lake" / "saas"), lines)


def test_a_broker_cut_mid_read_fails_the_attempt_and_the_rerun_is_exact(
    spark: object, proxied_kafka: ProxiedKafka, raw: Path, tmp_path: Path
) -> None:
    tables = Tables(tmp_path / "lake")
    topic = fresh_topic("cut")
    lines = message_lines(raw)
    publish(proxied_kafka.bootstrap, topic, lines)
    settings = kafka_settings(proxied_kafka.bootstrap, topic)
    once = IngestSettings(max_attempts=1)

    proxied_kafka.proxy.cut_after(2_000)  # dies inside a fetch response
    with pytest.raises(IngestError, match="transactions"):
        ingest_with_retries(spark, "transactions", SPEC, settings, raw, tables, once)  # type: ignore[arg-type]
    assert not tables.bronze("transactions").exists()
    proxied_kafka.proxy.restore()
    summary = ingest_with_retries(spark, "transactions", SPEC, settings, raw, tables, once)  # type: ignore[arg-type]
    assert summary.appended == len(lines)
    assert_exactly_once(tables, lines)


def test_a_broker_stopped_mid_ingest_then_restarted(
    spark: object, proxied_kafka: ProxiedKafka, raw: Path, tmp_path: Path
) -> None:
    """The broker hangs (SIGSTOP) after the first batch; the next attempt fails, nothing is
    half-written; once it is back (SIGCONT) ingestion resumes from bronze's offsets."""
    tables = Tables(tmp_path / "lake")
    topic = fresh_topic("paused")
    lines = message_lines(raw)
    half = len(lines) // 2
    publish(proxied_kafka.bootstrap, topic, lines[:half])
    settings = kafka_settings(proxied_kafka.bootstrap, topic)
    once = IngestSettings(max_attempts=1)
    first = ingest_with_retries(spark, "transactions", SPEC, settings, raw, tables, once)  # type: ignore[arg-type]
    assert first.appended == half

    publish(proxied_kafka.bootstrap, topic, lines[half:])
    proxied_kafka.broker.pause()
    try:
        with pytest.raises(IngestError):
            ingest_with_retries(spark, "transactions", SPEC, settings, raw, tables, once)  # type: ignore[arg-type]
    finally:
        proxied_kafka.broker.resume()
    assert len(bronze(tables)) == half  # the failed attempt committed nothing
    second = ingest_with_retries(spark, "transactions", SPEC, settings, raw, tables, once)  # type: ignore[arg-type]
    assert second.appended == len(lines) - half
    assert_exactly_once(tables, lines)
