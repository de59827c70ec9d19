"""The Kafka batch source on embedded Sail against a real Tansu broker (and a cuttable proxy).

Pass/fail never hangs on timing: reads that must fail are bounded by generous limits, and
faults are placed by the proxy (cut after N bytes of fetch responses) or by SIGSTOP while a
read is provably still running (its idle timeout is far longer than the fault's delay).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from churn_core.settings import KafkaSourceSettings
from pipelines.sources.kafka import (
    commit_consumer_offsets,
    list_partitions,
    parse_fields,
    produce_records,
    read_kafka_batch,
)

if TYPE_CHECKING:
    from tests.fixtures.kafka import ProxiedKafka, TansuBroker

# The broker fixtures (kafka_broker, proxied_kafka) live with the broker helpers.

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

COLUMNS = ["customer_id", "amount", "paid", "event_id"]
PARTITIONS = 3
# Short: every "caught up" is also confirmed by the broker's end-of-partition answer.
IDLE_S = 0.5
REQUEST_TIMEOUT_S = 3.0
# Generous bound for "fails within a bounded time" (the design bound is ~idle + 2 x request).
FAIL_WITHIN_S = 60.0


def new_topic() -> str:
    return f"events-{uuid.uuid4().hex[:10]}"


def event(i: int) -> str:
    # "12.50" on purpose: the amount's text must survive verbatim.
    return (
        f'{{"event_id": "e{i:05d}", "customer_id": "C{i % 7:03d}", '
        f'"amount": {i}.50, "paid": {"true" if i % 2 else "false"}}}'
    )


def settings_for(bootstrap: str, topic: str, **updates: Any) -> KafkaSourceSettings:
    values: dict[str, Any] = {"idle_timeout_s": IDLE_S, **updates}
    return KafkaSourceSettings(bootstrap_servers=bootstrap, topic=topic, **values)


def read_rows(
    spark: Any,
    settings: KafkaSourceSettings,
    start_offsets: Mapping[int, int] | None = None,
    columns: Sequence[str] = COLUMNS,
) -> list[Any]:
    frame = read_kafka_batch(
        spark, settings, columns, start_offsets or {}, request_timeout_s=REQUEST_TIMEOUT_S
    )
    return list(frame.collect())


def positions(rows: Sequence[Any]) -> list[tuple[int, int]]:
    return [(row["_partition"], row["_offset"]) for row in rows]


def assert_exactly(rows: Sequence[Any], expected: set[tuple[int, int]]) -> None:
    seen = Counter(positions(rows))
    duplicates = {p: n for p, n in seen.items() if n > 1}
    assert not duplicates, f"read twice: {sorted(duplicates)[:10]}"
    assert set(seen) == expected, (
        f"missing {sorted(expected - set(seen))[:10]}, unexpected {sorted(set(seen) - expected)[:10]}"
    )


@pytest.fixture(scope="module")
def events_topic(kafka_broker: TansuBroker) -> tuple[str, list[str], list[tuple[int, int]]]:
    """60 JSON events round-robin over 3 partitions (20 each): topic, values, placements."""
    topic = new_topic()
    values = [event(i) for i in range(60)]
    placed = produce_records(kafka_broker.bootstrap, topic, values, partitions=PARTITIONS)
    return topic, values, placed


def test_every_message_exactly_once_with_columns(
    spark: Any,
    kafka_broker: TansuBroker,
    events_topic: tuple[str, list[str], list[tuple[int, int]]],
) -> None:
    topic, values, placed = events_topic
    assert sorted(Counter(p for p, _ in placed).values()) == [20, 20, 20]

    rows = read_rows(spark, settings_for(kafka_broker.bootstrap, topic))

    assert_exactly(rows, set(placed))
    by_position = {pos: values[i] for i, pos in enumerate(placed)}
    for row in rows:
        raw = by_position[(row["_partition"], row["_offset"])]
        assert row["_raw"] == raw
        source = json.loads(raw)
        i = int(source["event_id"][1:])
        assert row["event_id"] == f"e{i:05d}"
        assert row["customer_id"] == f"C{i % 7:03d}"
        # Numbers and booleans come out as their JSON text, not re-formatted.
        assert row["amount"] == f"{i}.50"
        assert row["paid"] == ("true" if i % 2 else "false")
    # Offsets of each partition are contiguous from 0.
    for partition in range(PARTITIONS):
        offsets = sorted(o for p, o in positions(rows) if p == partition)
        assert offsets == list(range(20))


def test_start_offsets_read_from_the_middle(
    spark: Any,
    kafka_broker: TansuBroker,
    events_topic: tuple[str, list[str], list[tuple[int, int]]],
) -> None:
    topic, _, placed = events_topic
    # Partition 1 is absent: it starts at the earliest offset. Partition 2 starts at its end.
    start = {0: 5, 2: 20}

    rows = read_rows(spark, settings_for(kafka_broker.bootstrap, topic), start)

    expected = {(p, o) for p, o in placed if o >= start.get(p, 0)}
    assert_exactly(rows, expected)
    assert min(o for p, o in positions(rows) if p == 0) == 5
    assert not [r for r in rows if r["_partition"] == 2]


def test_max_records_bounds_batches_and_resume_has_no_gap_or_overlap(
    spark: Any,
    kafka_broker: TansuBroker,
    events_topic: tuple[str, list[str], list[tuple[int, int]]],
) -> None:
    topic, _, placed = events_topic
    settings = settings_for(kafka_broker.bootstrap, topic, max_records_per_partition=7)
    start: dict[int, int] = {}
    batches: list[list[Any]] = []
    for _ in range(10):  # 20 per partition in batches of 7: 3 batches, then an empty one
        rows = read_rows(spark, settings, start)
        if not rows:
            break
        per_partition = Counter(r["_partition"] for r in rows)
        assert max(per_partition.values()) <= 7
        for partition in per_partition:
            offsets = sorted(o for p, o in positions(rows) if p == partition)
            first = start.get(partition, 0)
            # Contiguous from exactly where the previous batch ended.
            assert offsets == list(range(first, first + len(offsets)))
            start[partition] = offsets[-1] + 1
        batches.append(rows)
    else:
        pytest.fail("batches never ran dry")

    assert [len(b) for b in batches] == [21, 21, 18]
    assert_exactly([r for b in batches for r in b], set(placed))


def test_values_that_are_not_json_objects_keep_raw_with_null_columns(
    spark: Any, kafka_broker: TansuBroker
) -> None:
    topic = new_topic()
    values: list[bytes | str] = [
        '{"customer_id": "C1", "amount": 1e3, "meta": {"a": 1.50, "b": [true, null]}}',
        "not json",
        "[1, 2]",
        '"just a string"',
        "",
        '{"customer_id": "C2", "amount": NaN}',
        b'\xff\xfe{"customer_id": "C3"}',
        '{"customer_id": null, "amount": -0}',
    ]
    placed = produce_records(kafka_broker.bootstrap, topic, values, partitions=1)

    rows = read_rows(
        spark,
        settings_for(kafka_broker.bootstrap, topic),
        columns=["customer_id", "amount", "meta"],
    )

    assert_exactly(rows, set(placed))
    by_offset = {r["_offset"]: r for r in rows}
    nested = by_offset[0]
    assert (nested["customer_id"], nested["amount"]) == ("C1", "1e3")
    assert nested["meta"] == '{"a":1.50,"b":[true,null]}'
    for offset in (1, 2, 3, 4, 5):
        row = by_offset[offset]
        assert (row["customer_id"], row["amount"], row["meta"]) == (None, None, None)
        assert row["_raw"] == values[offset]
    # Invalid UTF-8: a readable copy (U+FFFD) for quarantine, and no half-parsed fields.
    corrupt = by_offset[6]
    assert corrupt["customer_id"] is None
    assert corrupt["_raw"].startswith("\ufffd") and '"customer_id": "C3"' in corrupt["_raw"]
    nulls = by_offset[7]
    assert (nulls["customer_id"], nulls["amount"], nulls["meta"]) == (None, "-0", None)


def test_key_and_timestamp_on_request(spark: Any, kafka_broker: TansuBroker) -> None:
    topic = new_topic()
    values = [event(i) for i in range(12)]
    placed = produce_records(
        kafka_broker.bootstrap,
        topic,
        values,
        partitions=PARTITIONS,
        key_fn=lambda v: json.loads(v)["customer_id"],
    )
    before = time.time()

    frame = read_kafka_batch(
        spark,
        settings_for(kafka_broker.bootstrap, topic),
        ["customer_id"],
        {},
        include_key_and_timestamp=True,
    )
    rows = frame.collect()

    assert dict(frame.dtypes)["_timestamp"] == "timestamp"
    assert_exactly(rows, set(placed))
    partition_of_key: dict[str, int] = {}
    for row in rows:
        assert row["_key"] == row["customer_id"]
        # The same key always lands in the same partition.
        assert partition_of_key.setdefault(row["_key"], row["_partition"]) == row["_partition"]
        assert abs(row["_timestamp"].timestamp() - before) < 600


def test_list_partitions_and_commit_offsets_for_lag(kafka_broker: TansuBroker) -> None:
    from confluent_kafka import Consumer, TopicPartition

    topic = new_topic()
    produce_records(kafka_broker.bootstrap, topic, [event(i) for i in range(6)], partitions=3)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    settings = settings_for(kafka_broker.bootstrap, topic, consumer_group=group)

    assert list_partitions(settings) == [0, 1, 2]
    commit_consumer_offsets(settings, {0: 2, 2: 1})

    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": group})
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in range(3)], timeout=REQUEST_TIMEOUT_S * 3
        )
    finally:
        consumer.close()
    assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == {0: 2, 2: 1}


def test_commit_without_group_is_a_no_op() -> None:
    from tests.fixtures.kafka import free_port

    # Nothing listens there: a no-op must not even try to connect.
    settings = settings_for(f"127.0.0.1:{free_port()}", "anything")
    started = time.monotonic()
    commit_consumer_offsets(settings, {0: 10})
    assert time.monotonic() - started < 1.0


def test_unknown_topic_is_an_error_not_an_empty_batch(
    spark: Any, kafka_broker: TansuBroker
) -> None:
    topic = new_topic()
    with pytest.raises(Exception, match="Unknown topic") as failure:
        read_rows(spark, settings_for(kafka_broker.bootstrap, topic))
    assert topic in str(failure.value)


def test_unreachable_broker_fails_fast_with_a_clear_error(spark: Any) -> None:
    from tests.fixtures.kafka import free_port

    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens
    started = time.monotonic()
    with pytest.raises(Exception, match="Kafka metadata request failed") as failure:
        read_rows(spark, settings_for(bootstrap, "orders"))
    assert time.monotonic() - started < FAIL_WITHIN_S
    assert bootstrap in str(failure.value) and "'orders'" in str(failure.value)


def _produce_bulk(kafka: ProxiedKafka, topic: str, n: int) -> set[tuple[int, int]]:
    # ~130 bytes per value: n = 30_000 is ~4 MB of fetch responses, far beyond the cut point.
    values = [json.dumps({"event_id": f"e{i}", "pad": "x" * 100}) for i in range(n)]
    return set(produce_records(kafka.bootstrap, topic, values, partitions=PARTITIONS))


def test_network_cut_mid_read_fails_and_a_reread_returns_everything_once(
    spark: Any, proxied_kafka: ProxiedKafka
) -> None:
    kafka = proxied_kafka
    topic = new_topic()
    expected = _produce_bulk(kafka, topic, 30_000)
    settings = settings_for(kafka.bootstrap, topic)
    start = {0: 1_000}  # resume mid-partition, as ingestion does
    expected = {(p, o) for p, o in expected if not (p == 0 and o < 1_000)}

    # Cut in the middle of the fetch responses: ~0.5 MB of ~4 MB.
    kafka.proxy.cut_after(500_000)
    started = time.monotonic()
    with pytest.raises(Exception, match="Kafka read failed") as failure:
        read_rows(spark, settings, start)
    assert time.monotonic() - started < FAIL_WITHIN_S
    assert kafka.proxy.tripped.is_set(), "the cut did not happen during the read"
    message = str(failure.value)
    assert kafka.bootstrap in message and topic in message and "partition" in message

    kafka.proxy.restore()
    rows = read_rows(spark, settings, start)
    assert_exactly(rows, expected)


def test_broker_refusing_connections_then_back(spark: Any, proxied_kafka: ProxiedKafka) -> None:
    kafka = proxied_kafka
    topic = new_topic()
    produce_records(kafka.bootstrap, topic, [event(i) for i in range(30)], partitions=3)
    settings = settings_for(kafka.bootstrap, topic)

    kafka.proxy.cut()  # as the client sees a stopped broker: connection refused
    with pytest.raises(Exception, match=r"brokers are down|Kafka metadata request failed"):
        read_rows(spark, settings)

    kafka.proxy.restore()
    assert len(read_rows(spark, settings)) == 30


def test_hung_broker_mid_read_fails_within_bounds_and_recovers(
    spark: Any, proxied_kafka: ProxiedKafka
) -> None:
    kafka = proxied_kafka
    topic = new_topic()
    expected = _produce_bulk(kafka, topic, 3_000)
    # The read cannot legitimately finish for 60 s (idle timeout): the pause at ~1 s is
    # always mid-read, so the read must fail, by fetch timeouts, well before that.
    settings = settings_for(kafka.bootstrap, topic, idle_timeout_s=60.0)
    pauser = threading.Timer(1.0, kafka.broker.pause)
    pauser.start()
    started = time.monotonic()
    try:
        with pytest.raises(Exception, match="Kafka") as failure:
            read_rows(spark, settings)
        elapsed = time.monotonic() - started
    finally:
        pauser.join()
        kafka.broker.resume()
    assert elapsed < 55.0, f"a hung broker took {elapsed:.0f}s to be reported"
    assert kafka.bootstrap in str(failure.value)

    rows = read_rows(spark, settings_for(kafka.bootstrap, topic))
    assert_exactly(rows, expected)


def test_memory_broker_restart_loses_data_and_reads_say_so(
    spark: Any, proxied_kafka: ProxiedKafka
) -> None:
    """Tansu here stores in memory only: after a real restart the offsets kept by the caller
    point past the (new, empty) partitions' end; that must be an error, not an empty batch."""
    kafka = proxied_kafka
    topic = new_topic()
    produce_records(kafka.bootstrap, topic, [event(i) for i in range(30)], partitions=3)
    settings = settings_for(kafka.bootstrap, topic)
    next_offsets = {p: 10 for p in range(PARTITIONS)}

    kafka.broker.stop()
    kafka.broker.start()  # same port, empty

    with pytest.raises(Exception, match="Unknown topic"):
        read_rows(spark, settings, next_offsets)
    # The topic comes back empty (re-created by a producer): old offsets are past its end.
    produce_records(kafka.bootstrap, topic, [event(0)], partitions=3)
    with pytest.raises(Exception, match="past the partition's end"):
        read_rows(spark, settings, next_offsets)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"a": 12.50, "b": true, "c": "x"}', ["12.50", "true", "x"]),
        ('{"a": 12345678901234567890.123456789}', ["12345678901234567890.123456789", None, None]),
        ('{"a": {"n": 1.0}, "b": [1, "two"], "c": null}', ['{"n":1.0}', '[1,"two"]', None]),
        ('{"a": "\\u00e9", "A": "upper"}', ["\u00e9", None, None]),
        ('{"a": 1, "a": 2}', ["2", None, None]),
        ("[1]", [None, None, None]),
        ('{"a": Infinity}', [None, None, None]),
        (None, [None, None, None]),
    ],
)
def test_parse_fields(raw: str | None, expected: list[str | None]) -> None:
    assert parse_fields(raw, ["a", "b", "c"]) == expected
