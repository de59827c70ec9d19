"""The whole ingestion against real servers: PostgreSQL tables, a Kafka topic, a REST API.

The sample data is published into the live systems and ingested through them; the result must
be the same gold table as ingesting the files directly. Then PostgreSQL changes arrive and only
they are read. The feature function gives identical results on Sail and on JVM Spark.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from churn_core.contract import load_contract
from churn_core.settings import (
    IngestSettings,
    KafkaSourceSettings,
    PostgresSourceSettings,
    RestSourceSettings,
    Settings,
)
from churn_core.tables import Tables
from pipelines.features import build_gold, gold_features
from pipelines.ingest import ingest_sources
from pipelines.sample_data import generate_sample_data
from pipelines.sample_sources import publish_sample
from pipelines.silver import build_silver
from pipelines.sources.postgres import upsert_rows
from tests.conftest import REPO_ROOT, make_settings
from tests.fixtures.support_api import serve_support_api

if TYPE_CHECKING:
    from tests.fixtures.kafka import TansuBroker

pytestmark = pytest.mark.integration
CONTRACT = load_contract(REPO_ROOT / "configs" / "contracts" / "saas.yaml")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("live") / "raw"
    generate_sample_data(folder, 150, seed=21, chunk_size=150, page_size=200)
    return folder


def live_settings(
    base: Path, raw: Path, postgres_url: str, bootstrap: str, api_url: str
) -> Settings:
    suffix = uuid.uuid4().hex[:6]
    sources: dict[str, Any] = {
        "customers": PostgresSourceSettings(url=postgres_url, table=f"customers_{suffix}"),
        "plan_changes": PostgresSourceSettings(
            url=postgres_url, table=f"plan_changes_{suffix}", watermark_column="changed_at"
        ),
        "transactions": KafkaSourceSettings(
            bootstrap_servers=bootstrap, topic=f"transactions-{suffix}", idle_timeout_s=0.5
        ),
        "support": RestSourceSettings(
            base_url=api_url, allowed_hosts=["127.0.0.1"], backoff_initial_s=0, backoff_max_s=0
        ),
    }
    return make_settings(base, raw_dir=raw, lake_dir=base / "lake", sources=sources)


def run_ingest_and_gold(spark: Any, settings: Settings) -> Tables:
    tables = Tables(settings.dataset_lake)
    ingest_sources(spark, CONTRACT, settings, tables)
    build_silver(spark, CONTRACT, tables)
    build_gold(spark, CONTRACT, tables)
    return tables


def gold(tables: Tables) -> pd.DataFrame:
    frame = DeltaTable(str(tables.gold_features)).to_pandas()
    keys = [CONTRACT.entity_key, CONTRACT.snapshot_column]
    return frame.sort_values(keys).reset_index(drop=True)


def ledger(tables: Tables) -> dict[str, tuple[int, int, int]]:
    rows = DeltaTable(str(tables.reconciliation)).to_pandas()
    return {r.source: (int(r.read), int(r.accepted), int(r.quarantined)) for r in rows.itertuples()}


def test_live_sources_give_the_same_tables_as_the_files_and_then_read_only_changes(
    spark: Any, postgres_url: str, kafka_broker: TansuBroker, raw: Path, tmp_path: Path
) -> None:
    from_files = run_ingest_and_gold(spark, make_settings(tmp_path / "files", raw_dir=raw))

    with serve_support_api(raw / "support", faults=["503", "429"]) as api:
        settings = live_settings(
            tmp_path / "live", raw, postgres_url, kafka_broker.bootstrap, api.url
        )
        published = {p.source: p.records for p in publish_sample(settings, CONTRACT)}
        assert set(published) == {"customers", "plan_changes", "transactions"}
        live = run_ingest_and_gold(spark, settings)
    pd.testing.assert_frame_equal(gold(live), gold(from_files))
    assert ledger(live) == ledger(from_files)
    origins = set(DeltaTable(str(live.bronze("customers"))).to_pandas()["_source"])
    assert origins == {f"postgres:{settings.source('customers').table}"}  # type: ignore[union-attr]

    # Changes in PostgreSQL: two customers move plan, one new customer signs up.
    customers = settings.source("customers")
    assert isinstance(customers, PostgresSourceSettings)
    silver = DeltaTable(str(live.silver("customers"))).to_pandas().set_index("customer_id")
    movers = list(silver.index[:2])
    upsert_rows(
        postgres_url,
        customers.table,
        [{"customer_id": c, "plan": "premium"} for c in movers],
        "customer_id",
        touch="updated_at",
    )
    newcomer = silver.iloc[0].to_dict() | {
        "customer_id": "C999999999",
        "updated_at": datetime(2025, 1, 1),
    }
    columns = list(CONTRACT.sources["customers"].columns)
    upsert_rows(
        postgres_url,
        customers.table,
        [{c: _plain(newcomer[c]) for c in columns}],
        "customer_id",
        touch="updated_at",
    )
    with serve_support_api(raw / "support") as api:
        settings = settings.model_copy(
            update={
                "sources": settings.sources
                | {"support": settings.sources["support"].model_copy(update={"base_url": api.url})}
            }
        )
        bronze = {b.source: b for b in ingest_sources(spark, CONTRACT, settings, live)}
    assert bronze["customers"].appended == 3  # only the changed rows are new
    assert bronze["transactions"].read == 0  # nothing new on the topic
    assert bronze["plan_changes"].appended == 0 and bronze["support"].appended == 0
    summaries = {s.source: s for s in build_silver(spark, CONTRACT, live)}
    assert (summaries["customers"].read, summaries["customers"].accepted) == (3, 3)
    after = DeltaTable(str(live.silver("customers"))).to_pandas().set_index("customer_id")
    assert (after.loc[movers, "plan"] == "premium").all()
    assert "C999999999" in after.index and len(after) == len(silver) + 1


def _plain(value: Any) -> Any:
    """A pandas cell as a value psycopg can bind."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NaT or value is None:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def test_the_feature_function_gives_identical_results_on_sail_and_jvm_spark(
    spark: Any, jvm_spark: Any, raw: Path, tmp_path: Path
) -> None:
    tables = run_ingest_and_gold(spark, make_settings(tmp_path, raw_dir=raw))
    silver = {
        name: DeltaTable(str(tables.silver(name))).to_pandas()[list(spec.columns)]
        for name, spec in CONTRACT.sources.items()
    }
    results = []
    for engine in (spark, jvm_spark):
        frames = {}
        for name, spec in CONTRACT.sources.items():
            schema = ", ".join(
                f"`{c}` {'bigint' if t == 'int' else t}" for c, t in spec.columns.items()
            )
            frames[name] = engine.createDataFrame(silver[name], schema)
        entity = CONTRACT.entity_source_name
        events = {n: f for n, f in frames.items() if n != entity}
        result = gold_features(CONTRACT, frames[entity], events).toPandas()
        keys = [CONTRACT.entity_key, CONTRACT.snapshot_column]
        results.append(result.sort_values(keys).reset_index(drop=True))
    sail, jvm = results
    assert len(sail) == len(gold(tables)) > 0
    pd.testing.assert_frame_equal(sail, jvm, check_exact=False, rtol=1e-12)


def test_postgres_refusing_connections_fails_the_job_cleanly_and_the_rerun_is_exact(
    spark: Any, postgres_url: str, raw: Path, tmp_path: Path
) -> None:
    import psycopg
    from psycopg import sql

    from pipelines.ingest import IngestError, ingest_with_retries
    from pipelines.sources.postgres import load_table

    spec = CONTRACT.sources["customers"]
    table = f"customers_{uuid.uuid4().hex[:6]}"
    customers = pq.ParquetDataset(str(raw / "customers")).read()
    load_table(postgres_url, table, customers, spec.key)
    source = PostgresSourceSettings(url=postgres_url, table=table)
    tables = Tables(tmp_path / "lake")
    once = IngestSettings(max_attempts=1)
    database = postgres_url.rsplit("/", 1)[1]
    alter = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}")
    with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(alter.format(sql.Identifier(database), sql.SQL("false")))
        try:
            with pytest.raises(IngestError) as failure:
                ingest_with_retries(spark, "customers", spec, source, raw, tables, once)
        finally:
            admin.execute(alter.format(sql.Identifier(database), sql.SQL("true")))
    message = str(failure.value)
    assert "customers" in message and "\n" not in message
    assert not tables.bronze("customers").exists()  # nothing half-written
    summary = ingest_with_retries(spark, "customers", spec, source, raw, tables, once)
    assert summary.read == summary.appended == customers.num_rows
    bronze = DeltaTable(str(tables.bronze("customers"))).to_pandas()
    assert sorted(bronze["customer_id"]) == sorted(customers["customer_id"].to_pylist())
