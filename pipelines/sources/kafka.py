"""Kafka topic as a batch source: a PySpark Python Data Source over ``confluent-kafka``.

A batch reads every partition of a topic from a start offset (one Spark partition per Kafka
partition) until ``max_records_per_partition`` messages or until the partition is caught up.
Where to resume is kept by the caller (the bronze table), never in a consumer group: reads use
manual ``assign`` at an explicit offset, because a group join took 5-23 s on Tansu and because
group offsets are committed independently of the Delta commit.

"Caught up" is decided without trusting ``get_watermark_offsets`` (Tansu's ListOffsets reported
a high watermark of 1 for a partition holding 10 messages): a partition is done when the broker
has confirmed, in a fetch response, that the consumer is at the end (librdkafka's
``_PARTITION_EOF`` event) *and* no message arrived for ``idle_timeout_s`` after that. Any
transport or broker error raises :class:`KafkaSourceError` naming the servers, topic and
partition; a partition whose fetches stop getting answers (broker hung, or a start offset past
the partition's end, to which Tansu answers nothing at all) raises after ``request_timeout_s``.
A read therefore either returns a complete, gap-free run of offsets or fails.

Output of the data source (``spark.read.format("churn_kafka")``): the requested JSON fields as
strings, then ``_raw string`` (the value as UTF-8; undecodable bytes become U+FFFD via
``errors="replace"`` and all fields are null, so the record is quarantined rather than
half-parsed), ``_key string``, ``_partition int``, ``_offset bigint``, ``_timestamp_ms bigint``.

Two findings on Sail 0.7.2 shape this:

* A ``timestamp`` column of a Python data source is typed ``timestamp_ntz`` (wall clock in the
  session time zone) and tz-aware values are rejected, while JVM Spark requires UTC-aware
  values: the source yields the message time as epoch milliseconds and
  :func:`read_kafka_batch` converts it with ``timestamp_millis`` (a true instant on both).
* ``from_json`` with string fields keeps numbers as text but routes decimals through a double
  (``1234567890.123456789`` became ``"1234567890.1234567"``, ``12.50`` became ``"12.5"``), and
  JVM Spark formats them differently again. The reader parses the JSON in Python instead and
  keeps every number's exact source text (``12.50`` stays ``"12.50"``); booleans become
  ``"true"``/``"false"``, nested objects/arrays their compact JSON text, JSON ``null`` a null.
  A value that is not a JSON object (or not valid JSON) gives null fields and keeps ``_raw``.

The module imports no Kafka or Spark-session machinery at import time: Python workers of a JVM
Spark Connect server import it to unpickle the data source (the class is pickled by reference,
so this module must be importable there).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition

if TYPE_CHECKING:
    import pyarrow as pa
    from confluent_kafka import Consumer, KafkaError, Message
    from pyspark.sql import DataFrame, SparkSession

    from churn_core.settings import KafkaSourceSettings, TlsSettings

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT_S",
    "METADATA_COLUMNS",
    "SOURCE_NAME",
    "KafkaDataSource",
    "KafkaSourceError",
    "commit_consumer_offsets",
    "ensure_topic",
    "list_partitions",
    "parse_fields",
    "produce_records",
    "read_kafka_batch",
    "register_kafka_source",
]

logger = logging.getLogger(__name__)

SOURCE_NAME = "churn_kafka"
# Columns the data source always yields after the requested fields.
METADATA_COLUMNS = ("_raw", "_key", "_partition", "_offset", "_timestamp_ms")
# How long one broker request (metadata, fetch, commit) may go unanswered before the read fails.
DEFAULT_REQUEST_TIMEOUT_S = 10.0
# Messages per Arrow batch handed to the engine.
_BATCH_ROWS = 10_000
# Upper bound of one consume() wait, so idle and error checks run at least this often.
_POLL_S = 0.2
# A fixed group id: confluent-kafka refuses a consumer without one, but the reader never joins
# the group (assign, not subscribe) and never commits (auto commit off).
_READER_GROUP = "churn-kafka-batch-reader"


class KafkaSourceError(RuntimeError):
    """Kafka could not be read completely: names the bootstrap servers, topic and partition."""


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReadOptions:
    """Parsed data source options (Spark passes every option as a string)."""

    bootstrap_servers: str
    topic: str
    columns: tuple[str, ...]
    start_offsets: dict[int, int]
    max_records_per_partition: int
    idle_timeout_s: float
    request_timeout_s: float
    # librdkafka TLS properties (churn_core.tls.kafka_config); empty: plaintext.
    security: Mapping[str, str]

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> _ReadOptions:
        # Spark lower-cases option keys on some paths and not others: look both up.
        def get(key: str, default: str | None = None) -> str:
            value = options.get(key, options.get(key.lower(), default))
            if value is None:
                raise ValueError(f"{SOURCE_NAME}: option {key!r} is required")
            return str(value)

        columns = tuple(json.loads(get("columns", "[]")))
        if not all(isinstance(c, str) and c for c in columns):
            raise ValueError(f"{SOURCE_NAME}: 'columns' must be a JSON list of non-empty names")
        clashes = sorted(set(columns) & set(METADATA_COLUMNS))
        if clashes or len(set(columns)) != len(columns):
            raise ValueError(
                f"{SOURCE_NAME}: columns must be distinct and not clash with {METADATA_COLUMNS}"
            )
        raw_offsets = json.loads(get("start_offsets", "{}"))
        if not isinstance(raw_offsets, dict):
            raise ValueError(f"{SOURCE_NAME}: 'start_offsets' must be a JSON object")
        start_offsets = {int(p): int(o) for p, o in raw_offsets.items()}
        security = json.loads(get("security", "{}"))
        if not isinstance(security, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in security.items()
        ):
            raise ValueError(f"{SOURCE_NAME}: 'security' must be a JSON object of strings")
        if any(p < 0 or o < 0 for p, o in start_offsets.items()):
            raise ValueError(f"{SOURCE_NAME}: partitions and start offsets must be >= 0")
        parsed = cls(
            bootstrap_servers=get("bootstrap_servers"),
            topic=get("topic"),
            columns=columns,
            start_offsets=start_offsets,
            max_records_per_partition=int(get("max_records_per_partition", "2000000")),
            idle_timeout_s=float(get("idle_timeout_s", "2.0")),
            request_timeout_s=float(get("request_timeout_s", str(DEFAULT_REQUEST_TIMEOUT_S))),
            security=security,
        )
        if parsed.max_records_per_partition < 1:
            raise ValueError(f"{SOURCE_NAME}: max_records_per_partition must be >= 1")
        if parsed.idle_timeout_s <= 0 or parsed.request_timeout_s <= 0:
            raise ValueError(f"{SOURCE_NAME}: timeouts must be > 0")
        return parsed

    def where(self, partition: int | None = None) -> str:
        """``servers/topic[/partition]`` for error messages."""
        place = f"bootstrap servers {self.bootstrap_servers!r}, topic {self.topic!r}"
        return place if partition is None else f"{place}, partition {partition}"


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _ddl_schema(columns: Sequence[str]) -> str:
    fields = [f"{_quote(c)} string" for c in columns]
    fields += [
        "_raw string",
        "_key string",
        "_partition int",
        "_offset bigint",
        "_timestamp_ms bigint",
    ]
    return ", ".join(fields)


# --------------------------------------------------------------------------------------------
# JSON values to text
# --------------------------------------------------------------------------------------------


class _JsonNumber(str):
    """The exact source text of a JSON number (``12.50`` stays ``12.50``)."""

    __slots__ = ()


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are accepted by Python's json module but are not JSON.
    raise ValueError(f"not JSON: {name}")


def _json_text(value: Any) -> str:
    """Compact JSON text of a parsed value, numbers written back verbatim."""
    if isinstance(value, _JsonNumber):
        return str.__str__(value)
    if isinstance(value, dict):
        items = ",".join(
            f"{json.dumps(k, ensure_ascii=False)}:{_json_text(v)}" for k, v in value.items()
        )
        return "{" + items + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _field_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, _JsonNumber):
        return str.__str__(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return _json_text(value)


def parse_fields(raw: str | None, columns: Sequence[str]) -> list[str | None]:
    """Top-level fields ``columns`` of the JSON object ``raw`` as text (all null if not an object)."""
    if raw is None or not columns:
        return [None] * len(columns)
    try:
        parsed = json.loads(
            raw,
            parse_int=_JsonNumber,
            parse_float=_JsonNumber,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError):
        return [None] * len(columns)
    if not isinstance(parsed, dict):
        return [None] * len(columns)
    return [_field_text(parsed.get(c)) for c in columns]


# --------------------------------------------------------------------------------------------
# librdkafka plumbing
# --------------------------------------------------------------------------------------------


def _client_config(
    bootstrap_servers: str, request_timeout_s: float, security: Mapping[str, str] | None = None
) -> dict[str, Any]:
    timeout_ms = max(1_000, int(request_timeout_s * 1000))
    return {
        # TLS (security.protocol, ssl.*): every client of one source speaks the same way.
        **(security or {}),
        "bootstrap.servers": bootstrap_servers,
        "client.id": "churn-kafka-source",
        # A hung broker (connection open, nothing answered) surfaces as a timeout, not a hang.
        "socket.timeout.ms": timeout_ms,
        "socket.connection.setup.timeout.ms": timeout_ms,
        # librdkafka writes its log lines to stderr by default; route them to logging.
        "logger": _LIBRDKAFKA_LOG,
    }


def _security(tls: TlsSettings | None) -> dict[str, str]:
    """librdkafka TLS properties of a source's ``tls`` settings (empty: plaintext)."""
    if tls is None or not tls.enabled:
        return {}
    from churn_core.tls import kafka_config

    # The exact setting (sources.<name>.tls) was checked by name before ingestion started.
    return kafka_config(tls, "sources.<kafka source>.tls")


class _LibrdkafkaLog:
    """librdkafka's log lines at DEBUG.

    It logs every reconnect attempt (ten a second to a dead broker) at ERROR; the errors that
    matter reach the reader through ``error_cb`` and are raised with the servers and topic.
    """

    def log(self, level: int, msg: str, *args: object) -> None:
        logger.debug(msg, *args)


_LIBRDKAFKA_LOG = _LibrdkafkaLog()


def _consumer(
    bootstrap_servers: str,
    request_timeout_s: float,
    *,
    group_id: str = _READER_GROUP,
    error_cb: Callable[[KafkaError], None] | None = None,
    eof: bool = False,
    extra: Mapping[str, Any] | None = None,
    security: Mapping[str, str] | None = None,
) -> Consumer:
    from confluent_kafka import Consumer

    config = _client_config(bootstrap_servers, request_timeout_s, security)
    config.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Metadata requests must not create a misspelt topic (Tansu auto-creates topics).
            "allow.auto.create.topics": False,
            # A start offset the broker rejects as out of range (e.g. deleted by retention)
            # is an error to report, not a silent jump to another offset.
            "auto.offset.reset": "error",
            "enable.partition.eof": eof,
            # The broker answers an empty fetch after this long: keeps the tail responsive.
            "fetch.wait.max.ms": 100,
            # Per-partition consumers share one process on Sail: bound each one's prefetch.
            "queued.max.messages.kbytes": 32_768,
        }
    )
    if error_cb is not None:
        config["error_cb"] = error_cb
    config.update(extra or {})
    return Consumer(config)


def _topic_partitions(
    bootstrap_servers: str,
    topic: str,
    request_timeout_s: float,
    security: Mapping[str, str] | None = None,
) -> list[int]:
    """Partition ids of ``topic`` from a metadata request (raises if unknown or unreachable)."""
    from confluent_kafka import KafkaError, KafkaException

    where = f"bootstrap servers {bootstrap_servers!r}, topic {topic!r}"
    errors: list[KafkaError] = []
    consumer = _consumer(
        bootstrap_servers, request_timeout_s, error_cb=errors.append, security=security
    )
    deadline = time.monotonic() + request_timeout_s
    try:
        while True:
            try:
                # Short attempts: list_topics() waits out its whole timeout on a refused
                # connection, while "all brokers down" is known within a second.
                metadata = consumer.list_topics(topic=topic, timeout=min(1.0, request_timeout_s))
                break
            except KafkaException as exc:
                consumer.poll(0)  # serves error_cb
                down = [e for e in errors if e.code() == KafkaError._ALL_BROKERS_DOWN]
                if down or time.monotonic() >= deadline:
                    # Every error reported, not only "all brokers down": the reason they are
                    # (refused, a TLS handshake failed and why) comes before it.
                    cause = _describe(errors) if errors else (exc.args[0] if exc.args else exc)
                    raise KafkaSourceError(
                        f"Kafka metadata request failed ({where}): {cause}"
                    ) from exc
    finally:
        consumer.close()
    topic_metadata = metadata.topics.get(topic)
    if topic_metadata is None or topic_metadata.error is not None:
        error = topic_metadata.error if topic_metadata is not None else "missing from metadata"
        raise KafkaSourceError(f"Kafka topic not readable ({where}): {error}")
    if not topic_metadata.partitions:
        raise KafkaSourceError(f"Kafka topic has no partitions ({where})")
    return sorted(topic_metadata.partitions)


# --------------------------------------------------------------------------------------------
# The data source
# --------------------------------------------------------------------------------------------


class KafkaInputPartition(InputPartition):
    """One Kafka partition and the offset to start at (``None``: the earliest offset)."""

    def __init__(self, partition: int, start_offset: int | None) -> None:
        super().__init__(partition)
        self.partition = partition
        self.start_offset = start_offset

    def __repr__(self) -> str:
        return f"KafkaInputPartition({self.partition}, start_offset={self.start_offset})"


class KafkaDataSource(DataSource):
    """``spark.read.format("churn_kafka")``: one batch of a Kafka topic, partition by partition.

    Options (strings): ``bootstrap_servers``, ``topic`` (required); ``columns`` (JSON list of
    top-level JSON fields to extract as strings), ``start_offsets`` (JSON object partition ->
    first offset; absent partitions start at the earliest offset),
    ``max_records_per_partition``, ``idle_timeout_s``, ``request_timeout_s``, ``security``
    (JSON object of librdkafka TLS properties, from ``churn_core.tls.kafka_config``).
    """

    @classmethod
    def name(cls) -> str:
        """Short name used in ``spark.read.format``."""
        return SOURCE_NAME

    def schema(self) -> str:
        """Requested fields as strings, then :data:`METADATA_COLUMNS`."""
        return _ddl_schema(_ReadOptions.parse(self.options).columns)

    def reader(self, schema: Any) -> DataSourceReader:
        """A batch reader over the options given to ``spark.read``."""
        return KafkaBatchReader(_ReadOptions.parse(self.options))


class KafkaBatchReader(DataSourceReader):
    """Reads each Kafka partition from its start offset until bounded or caught up."""

    def __init__(self, options: _ReadOptions) -> None:
        self.options = options

    def partitions(self) -> Sequence[InputPartition]:
        """One input partition per Kafka partition of the topic (listed from broker metadata)."""
        opts = self.options
        ids = _topic_partitions(
            opts.bootstrap_servers, opts.topic, opts.request_timeout_s, opts.security
        )
        unknown = sorted(set(opts.start_offsets) - set(ids))
        if unknown:
            # Offsets kept for partitions the topic no longer has: it was recreated.
            raise KafkaSourceError(
                f"start offsets name partitions {unknown} the topic does not have "
                f"({opts.where()}, partitions {ids})"
            )
        return [KafkaInputPartition(p, opts.start_offsets.get(p)) for p in ids]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        """Yield Arrow batches of the partition's messages, in offset order, each exactly once."""
        if not isinstance(partition, KafkaInputPartition):
            raise TypeError(f"unexpected input partition {partition!r}")
        yield from _PartitionRead(self.options, partition).batches()


class _PartitionRead:
    """The state of reading one partition: offsets seen, errors reported, end confirmed."""

    def __init__(self, options: _ReadOptions, partition: KafkaInputPartition) -> None:
        self.opts = options
        self.partition = partition.partition
        self.start = partition.start_offset
        self.errors: list[KafkaError] = []
        self.last_offset: int | None = None
        self.count = 0

    def _fail(self, what: str) -> KafkaSourceError:
        position = (
            f"after offset {self.last_offset}"
            if self.last_offset is not None
            else f"at start offset {self.start if self.start is not None else 'earliest'}"
        )
        return KafkaSourceError(
            f"Kafka read failed ({self.opts.where(self.partition)}) {position}, "
            f"{self.count} messages read: {what}"
        )

    def batches(self) -> Iterator[pa.RecordBatch]:
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

        opts = self.opts
        builder = _BatchBuilder(opts.columns, self.partition)
        consumer = _consumer(
            opts.bootstrap_servers,
            opts.request_timeout_s,
            error_cb=self.errors.append,
            # The broker's "you are at the end" in a fetch response: required before a
            # partition counts as caught up, so silence from a dead broker never does.
            eof=True,
            security=opts.security,
        )
        try:
            start = self.start if self.start is not None else OFFSET_BEGINNING
            consumer.assign([TopicPartition(opts.topic, self.partition, start)])
            last_activity = time.monotonic()
            end_confirmed = False
            while self.count < opts.max_records_per_partition:
                wanted = min(_BATCH_ROWS, opts.max_records_per_partition - self.count)
                messages = consumer.consume(num_messages=wanted, timeout=_POLL_S)
                if self.errors:
                    # Transport errors (refused, reset, timed out, all brokers down) arrive
                    # here; the read stops at once rather than guessing whether it recovered.
                    raise self._fail(_describe(self.errors))
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            end_confirmed = self._at_end(message)
                            continue
                        raise self._fail(f"{error.name()}: {error.str()}")
                    if self._accept(message):
                        builder.add(message)
                        end_confirmed = False
                        last_activity = time.monotonic()
                        if self.count >= opts.max_records_per_partition:
                            break
                if builder.rows >= _BATCH_ROWS:
                    yield builder.flush()
                    # Time the engine spent on the batch is not the broker's silence.
                    last_activity = time.monotonic()
                idle = time.monotonic() - last_activity
                if end_confirmed and idle >= opts.idle_timeout_s:
                    break  # caught up: at the end by the broker's word, and nothing since
                if not end_confirmed and idle >= opts.idle_timeout_s + opts.request_timeout_s:
                    raise self._fail(
                        f"no message and no end-of-partition answer for {idle:.1f}s: the broker "
                        "is unreachable or hung, or the start offset is past the partition's "
                        "end (a broker that lost its data)"
                    )
        finally:
            consumer.close()
        if builder.rows:
            yield builder.flush()

    def _accept(self, message: Message) -> bool:
        offset = message.offset()
        if offset is None:
            raise self._fail("message without an offset")
        # Never yield an offset twice or one before the start, whatever the broker sends.
        if self.last_offset is not None and offset <= self.last_offset:
            return False
        if self.start is not None and offset < self.start:
            return False
        self.last_offset = offset
        self.count += 1
        return True

    def _at_end(self, eof: Message) -> bool:
        # The EOF event carries the offset the fetch reached; one from before the last message
        # (a stale event) confirms nothing.
        offset = eof.offset()
        if offset is None:
            return False
        if self.last_offset is not None:
            return offset > self.last_offset
        return self.start is None or offset >= self.start


def _describe(errors: Sequence[KafkaError]) -> str:
    """The first few distinct librdkafka errors, e.g. ``_TRANSPORT: ...; _ALL_BROKERS_DOWN: ...``."""
    distinct = list(dict.fromkeys(f"{e.name()}: {e.str()}" for e in errors))
    return "; ".join(distinct[:3])


class _BatchBuilder:
    """Column lists of messages, turned into one Arrow batch at a time."""

    def __init__(self, columns: Sequence[str], partition: int) -> None:
        self.columns = tuple(columns)
        self.partition = partition
        self._reset()

    def _reset(self) -> None:
        self.fields: list[list[str | None]] = [[] for _ in self.columns]
        self.raw: list[str | None] = []
        self.keys: list[str | None] = []
        self.offsets: list[int] = []
        self.timestamps: list[int | None] = []

    @property
    def rows(self) -> int:
        return len(self.offsets)

    def add(self, message: Message) -> None:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

        value = message.value()
        raw: str | None
        parse = True
        if value is None:
            raw = None
        elif isinstance(value, str):
            raw = value
        else:
            try:
                raw = value.decode("utf-8")
            except UnicodeDecodeError:
                # Keep a readable copy for quarantine; a corrupt record is not half-parsed.
                raw = value.decode("utf-8", errors="replace")
                parse = False
        for column, text in zip(
            self.fields, parse_fields(raw if parse else None, self.columns), strict=True
        ):
            column.append(text)
        key = message.key()
        self.raw.append(raw)
        self.keys.append(key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key)
        self.offsets.append(message.offset() or 0)
        kind, millis = message.timestamp()
        self.timestamps.append(None if kind == TIMESTAMP_NOT_AVAILABLE else millis)

    def flush(self) -> pa.RecordBatch:
        import pyarrow as pa

        # Types must equal what JVM Spark derives from the DDL schema (it compares schemas).
        arrays = [pa.array(column, type=pa.string()) for column in self.fields]
        arrays += [
            pa.array(self.raw, type=pa.string()),
            pa.array(self.keys, type=pa.string()),
            pa.array([self.partition] * self.rows, type=pa.int32()),
            pa.array(self.offsets, type=pa.int64()),
            pa.array(self.timestamps, type=pa.int64()),
        ]
        batch = pa.RecordBatch.from_arrays(arrays, names=[*self.columns, *METADATA_COLUMNS])
        self._reset()
        return batch


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------

_registered: set[str] = set()
_registered_lock = threading.Lock()


def register_kafka_source(spark: SparkSession) -> None:
    """Register :class:`KafkaDataSource` with ``spark`` (once per session; re-registering is harmless)."""
    key = str(getattr(spark, "session_id", None) or id(spark))
    with _registered_lock:
        if key in _registered:
            return
        spark.dataSource.register(KafkaDataSource)
        _registered.add(key)


def read_kafka_batch(
    spark: SparkSession,
    settings: KafkaSourceSettings,
    columns: Sequence[str],
    start_offsets: Mapping[int, int],
    *,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    include_key_and_timestamp: bool = False,
) -> DataFrame:
    """One batch of ``settings.topic``: ``columns`` (strings) + ``_raw``, ``_partition``, ``_offset``.

    ``start_offsets`` maps partition -> first offset to read; partitions absent from it start at
    the earliest offset. Each partition yields at most ``settings.max_records_per_partition``
    messages, contiguous in offset order. The next batch starts at max ``_offset`` + 1 per
    partition that had rows (and where it started for the others).

    The frame is lazy and every action reads Kafka again; messages that arrived in between
    make a second evaluation longer. Write the batch once and take the next offsets from what
    was written, never from a second evaluation of this frame.

    With ``include_key_and_timestamp`` the frame also has ``_key`` and ``_timestamp`` (the
    message timestamp as a ``timestamp``).
    """
    from pyspark.sql import functions as F

    register_kafka_source(spark)
    frame = (
        spark.read.format(SOURCE_NAME)
        .option("bootstrap_servers", settings.bootstrap_servers)
        .option("topic", settings.topic)
        .option("columns", json.dumps(list(columns)))
        .option("start_offsets", json.dumps({str(p): int(o) for p, o in start_offsets.items()}))
        .option("max_records_per_partition", str(settings.max_records_per_partition))
        .option("idle_timeout_s", repr(settings.idle_timeout_s))
        .option("request_timeout_s", repr(request_timeout_s))
        # File paths only (no secrets); the reading processes need the files at these paths.
        .option("security", json.dumps(_security(settings.tls)))
        .load()
    )
    selected = [F.col(_quote(c)) for c in columns]
    selected += [F.col("_raw"), F.col("_partition"), F.col("_offset")]
    if include_key_and_timestamp:
        selected += [
            F.col("_key"),
            F.timestamp_millis(F.col("_timestamp_ms")).alias("_timestamp"),
        ]
    return frame.select(*selected)


def list_partitions(
    settings: KafkaSourceSettings, *, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
) -> list[int]:
    """Partition ids of the topic; raises :class:`KafkaSourceError` if unknown or unreachable."""
    return _topic_partitions(
        settings.bootstrap_servers, settings.topic, request_timeout_s, _security(settings.tls)
    )


def commit_consumer_offsets(
    settings: KafkaSourceSettings,
    next_offsets: Mapping[int, int],
    *,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> None:
    """Commit ``next_offsets`` (partition -> next offset to read) to ``settings.consumer_group``.

    For lag dashboards only: the bronze table is where ingestion resumes. A no-op when no
    group is configured. Commits without joining the group (no rebalance, no 5-23 s join).
    Raises :class:`KafkaSourceError` if the commit fails or is not acknowledged in time;
    callers may log that and carry on.
    """
    if not settings.consumer_group or not next_offsets:
        return
    from confluent_kafka import TopicPartition

    where = (
        f"bootstrap servers {settings.bootstrap_servers!r}, topic {settings.topic!r}, "
        f"group {settings.consumer_group!r}"
    )
    errors: list[KafkaError] = []
    outcome: list[tuple[KafkaError | None, list[TopicPartition]]] = []

    def committed(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        outcome.append((error, partitions))

    consumer = _consumer(
        settings.bootstrap_servers,
        request_timeout_s,
        group_id=settings.consumer_group,
        error_cb=errors.append,
        extra={"on_commit": committed},
        security=_security(settings.tls),
    )
    try:
        offsets = [
            TopicPartition(settings.topic, int(p), int(o)) for p, o in sorted(next_offsets.items())
        ]
        # Asynchronous + poll with a deadline: a synchronous commit can wait without bound.
        consumer.commit(offsets=offsets, asynchronous=True)
        deadline = time.monotonic() + request_timeout_s
        while not outcome and not errors and time.monotonic() < deadline:
            # poll() serves the commit callback (no messages: nothing is assigned).
            consumer.poll(0.1)
    finally:
        consumer.close()
    if errors:
        raise KafkaSourceError(f"offset commit failed ({where}): {errors[0].str()}")
    if not outcome:
        raise KafkaSourceError(
            f"offset commit not acknowledged in {request_timeout_s:g}s ({where})"
        )
    error, partitions = outcome[0]
    failed = [tp for tp in partitions if tp.error is not None]
    if error is not None or failed:
        raise KafkaSourceError(f"offset commit failed ({where}): {error or failed}")


def ensure_topic(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    *,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    tls: TlsSettings | None = None,
) -> None:
    """Create ``topic`` with ``partitions`` partitions if absent; raise if it exists with another count."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    where = f"bootstrap servers {bootstrap_servers!r}, topic {topic!r}"
    security = _security(tls)
    admin = AdminClient(_client_config(bootstrap_servers, request_timeout_s, security))
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=request_timeout_s,
        request_timeout=request_timeout_s,
    )
    try:
        futures[topic].result(timeout=request_timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise KafkaSourceError(f"could not create Kafka topic ({where}): {exc}") from exc
    # Metadata may lag a creation for a moment: wait until every partition is listed.
    deadline = time.monotonic() + request_timeout_s
    while True:
        try:
            existing = _topic_partitions(bootstrap_servers, topic, request_timeout_s, security)
        except KafkaSourceError:
            existing = []
        if len(existing) == partitions:
            return
        if existing and len(existing) != partitions:
            raise KafkaSourceError(
                f"Kafka topic exists with {len(existing)} partitions, not {partitions} ({where})"
            )
        if time.monotonic() > deadline:
            raise KafkaSourceError(f"Kafka topic not visible after creation ({where})")
        time.sleep(0.05)


def produce_records(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[bytes | str],
    partitions: int = 1,
    key_fn: Callable[[bytes | str], bytes | str | None] | None = None,
    *,
    timeout_s: float = 60.0,
    tls: TlsSettings | None = None,
) -> list[tuple[int, int]]:
    """Produce ``records`` to ``topic`` (created with ``partitions`` partitions if absent).

    Without ``key_fn`` records go round-robin over the partitions (record ``i`` to partition
    ``i % partitions``) with no key; with it, each record's key decides its partition (murmur2,
    as the Java client). Returns the ``(partition, offset)`` of every record, in input order.
    Raises :class:`KafkaSourceError` if any record is not acknowledged within ``timeout_s``.
    For tests and the sample-data loader.
    """
    from confluent_kafka import Producer

    ensure_topic(bootstrap_servers, topic, partitions, tls=tls)
    config = _client_config(bootstrap_servers, DEFAULT_REQUEST_TIMEOUT_S, _security(tls))
    config.update(
        {
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(timeout_s * 1000),
            "partitioner": "murmur2_random",
        }
    )
    producer = Producer(config)
    placed: list[tuple[int, int] | None] = []
    failures: list[str] = []

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def callback(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"record {index}: {error.str()}")
            else:
                placed[index] = (int(message.partition() or 0), int(message.offset() or 0))

        return callback

    deadline = time.monotonic() + timeout_s
    for index, record in enumerate(records):
        placed.append(None)
        kwargs: dict[str, Any] = {"value": record, "on_delivery": delivered(index)}
        if key_fn is None:
            kwargs["partition"] = index % partitions
        else:
            kwargs["key"] = key_fn(record)
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                if time.monotonic() > deadline:
                    raise KafkaSourceError(
                        f"producer queue stayed full for {timeout_s:g}s "
                        f"(bootstrap servers {bootstrap_servers!r}, topic {topic!r})"
                    ) from None
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(max(0.0, deadline - time.monotonic()))
    missing = sum(1 for p in placed if p is None)
    if failures or remaining or missing:
        detail = "; ".join(failures[:3]) or f"{missing} records not acknowledged"
        raise KafkaSourceError(
            f"producing to Kafka failed (bootstrap servers {bootstrap_servers!r}, "
            f"topic {topic!r}): {detail}"
        )
    return [p for p in placed if p is not None]
