"""Load generated sample data into live source systems (PostgreSQL tables, a Kafka topic).

For demonstrations and integration tests: after ``churn generate``, ``churn publish-sample``
puts each file source whose settings name PostgreSQL or Kafka into that system, so ingestion can
be run against real servers with data whose expected result is known. (A REST source is served
from the page files by any HTTP server; the tests ship one.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from churn_core.contract import FeatureContract
from churn_core.settings import KafkaSourceSettings, PostgresSourceSettings, Settings

# Partitions of a topic created for sample transactions: several, so ordering across
# partitions and per-partition offsets are exercised.
SAMPLE_TOPIC_PARTITIONS = 3


@dataclass(frozen=True)
class Published:
    """One source loaded into a live system."""

    source: str
    target: str
    records: int


def publish_sample(
    settings: Settings, contract: FeatureContract, raw_dir: Path | None = None
) -> list[Published]:
    """Copy each file source configured as PostgreSQL or Kafka into that system."""
    import pyarrow.parquet as pq

    raw = raw_dir or settings.resolve(settings.raw_dir)
    published = []
    for name, spec in contract.sources.items():
        source = settings.source(name)
        location = raw / spec.path
        if isinstance(source, PostgresSourceSettings):
            from pipelines.sources.postgres import load_table

            table = pq.ParquetDataset(str(location)).read()
            load_table(
                source.url.get_secret_value(),
                source.table,
                table,
                spec.key,
                replace=True,
                tls=source.tls,
            )
            published.append(Published(name, f"postgres:{source.table}", table.num_rows))
        elif isinstance(source, KafkaSourceSettings):
            from pipelines.sources.kafka import produce_records

            lines = [
                line
                for path in sorted(location.glob("*.jsonl"))
                for line in path.read_text().splitlines()
                if line
            ]
            produce_records(
                source.bootstrap_servers,
                source.topic,
                lines,
                partitions=SAMPLE_TOPIC_PARTITIONS,
                key_fn=partial(_entity_key_of, key=contract.entity_key),
                tls=source.tls,
            )
            published.append(Published(name, f"kafka:{source.topic}", len(lines)))
    return published


def _entity_key_of(line: str, *, key: str) -> str:
    """The entity key of a JSON line (a line that is not a JSON object gets an empty key)."""
    try:
        record = json.loads(line)
    except ValueError:
        return ""
    return str(record.get(key, "")) if isinstance(record, dict) else ""
