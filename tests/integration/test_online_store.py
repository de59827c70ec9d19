"""The online store end to end: gold -> Redis + PostgreSQL, then the serving lookups.

Uses the session's Spark session and PostgreSQL database and the loopback Redis, with a key
prefix and table name of its own, so nothing collides with other tests; the Redis keys are
deleted at the end. The gold table is the session's sample run when other collected tests need
that run anyway; run alone, this module builds just gold (seconds, not minutes of Ray training).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis
from deltalake import DeltaTable
from psycopg import sql
from pydantic import SecretStr

from churn_core.contract import FeatureContract, load_contract
from churn_core.online_features import decode_features, feature_key, json_scalar
from churn_core.settings import OnlineStoreSettings, Settings
from churn_core.tables import Tables
from pipelines.online_store import (
    OnlineStoreError,
    OnlineStoreSummary,
    materialize_online_features,
)
from serve_apps.online_store import OnlineFeatureStore, OnlineLookup, OnlineStoreUnavailable
from tests.conftest import PipelineRun, free_port, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Gold:
    """A built gold table and the settings and contract it was built with."""

    settings: Settings
    contract: FeatureContract
    tables: Tables


@dataclass(frozen=True)
class Materialized:
    """One materialisation and what gold says it should have written."""

    run: Gold
    settings: Settings
    summary: OnlineStoreSummary
    expected: dict[str, tuple[str, dict[str, Any]]]  # customer -> (snapshot, features)

    @property
    def store(self) -> OnlineStoreSettings:
        return self.settings.serve.online_store

    def key(self, customer_id: str) -> str:
        return feature_key(self.store.key_prefix, self.run.contract.name, customer_id)


def _build_gold(spark: Any, settings: Settings) -> Gold:
    """Sample data -> bronze -> silver -> gold on the session's Spark (no Ray, no training)."""
    from churn import cli
    from pipelines.features import build_gold
    from pipelines.ingest import ingest_sources
    from pipelines.silver import build_silver

    cli.run_generate(settings)
    contract = load_contract(settings.contract_path)
    tables = Tables(settings.dataset_lake)
    ingest_sources(spark, contract, settings, tables)
    build_silver(spark, contract, tables)
    build_gold(spark, contract, tables)
    return Gold(settings, contract, tables)


@pytest.fixture(scope="module")
def gold(
    request: pytest.FixtureRequest, spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> Gold:
    """The session's sample run if another collected test needs it, else a gold-only build."""
    if any("saas_run" in getattr(item, "fixturenames", ()) for item in request.session.items):
        run: PipelineRun = request.getfixturevalue("saas_run")
        return Gold(run.settings, run.contract, run.tables)
    return _build_gold(spark, make_settings(tmp_path_factory.mktemp("online")))


def _latest_gold(run: Gold) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each customer's latest gold row, read without Spark."""
    contract = run.contract
    rows = DeltaTable(str(run.tables.gold_features)).to_pyarrow_table().to_pylist()
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        current = latest.get(row[contract.entity_key])
        if current is None or row[contract.snapshot_column] > current[contract.snapshot_column]:
            latest[row[contract.entity_key]] = row
    return {
        customer: (
            row[contract.snapshot_column].isoformat(),
            {name: json_scalar(row[name]) for name in contract.feature_names},
        )
        for customer, row in latest.items()
    }


def _with_store(settings: Settings, **store: Any) -> Settings:
    online = settings.serve.online_store.model_copy(update=store)
    return settings.model_copy(
        update={"serve": settings.serve.model_copy(update={"online_store": online})}
    )


@pytest.fixture(scope="module")
def materialized(gold: Gold, spark: Any, postgres_url: str) -> Iterator[Materialized]:
    token = secrets.token_hex(4)
    settings = _with_store(
        gold.settings,
        redis_url=SecretStr(REDIS_URL),
        postgres_url=SecretStr(postgres_url),
        key_prefix=f"test:online:{token}",
        table=f"online_features_{token}",
    )
    client = redis.Redis.from_url(REDIS_URL)
    try:
        # Small buckets: the chunked collect path runs, not just the single-query one.
        summary = materialize_online_features(
            spark, settings, gold.contract, gold.tables, chunk_customers=400
        )
        yield Materialized(gold, settings, summary, _latest_gold(gold))
    finally:
        keys = list(client.scan_iter(match=f"test:online:{token}:*", count=5_000))
        if keys:
            client.delete(*keys)
        client.close()


def _postgres_rows(m: Materialized) -> dict[str, tuple[str, dict[str, Any]]]:
    url = m.store.postgres_url
    assert url is not None
    query = sql.SQL("SELECT customer_id, snapshot_date, features FROM {} WHERE contract = %s")
    with psycopg.connect(url.get_secret_value()) as conn:
        rows = conn.execute(
            query.format(sql.Identifier(m.store.table)), [m.run.contract.name]
        ).fetchall()
    return {customer: (snapshot.isoformat(), features) for customer, snapshot, features in rows}


def _sample(m: Materialized, count: int = 5) -> list[str]:
    """A few customers, including one with a null feature if gold has any."""
    customers = sorted(m.expected)
    with_null = [c for c in customers if None in m.expected[c][1].values()]
    return sorted({*customers[:: max(1, len(customers) // count)][:count], *with_null[:1]})


def _lookup(m: Materialized, customer_id: str, **store: Any) -> OnlineLookup | None:
    async def run() -> OnlineLookup | None:
        online = OnlineFeatureStore(m.store.model_copy(update=store), m.run.contract.name)
        await online.start()
        try:
            return await online.get(customer_id)
        finally:
            await online.close()

    return asyncio.run(run())


def _closed_url(scheme: str) -> SecretStr:
    suffix = "/0" if scheme == "redis" else "/postgres"
    return SecretStr(f"{scheme}://127.0.0.1:{free_port()}{suffix}")


def test_summary_counts_every_customer_once(materialized: Materialized) -> None:
    summary = materialized.summary
    customers = len(materialized.expected)
    assert summary.customers == customers
    assert summary.redis_written == customers
    assert summary.postgres_written == customers
    assert summary.snapshot_date == max(s for s, _ in materialized.expected.values())


def test_redis_holds_latest_gold_row(materialized: Materialized) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for customer in _sample(materialized):
            raw = client.get(materialized.key(customer))
            assert raw is not None, customer
            value = decode_features(raw)
            assert (value.snapshot_date, value.features) == materialized.expected[customer]
    finally:
        client.close()


def test_postgres_has_one_row_per_customer(materialized: Materialized) -> None:
    rows = _postgres_rows(materialized)
    assert len(rows) == len(materialized.expected)
    for customer in _sample(materialized):
        assert rows[customer] == materialized.expected[customer]


def test_rerun_is_idempotent(materialized: Materialized, spark: Any) -> None:
    run = materialized.run
    again = materialize_online_features(spark, materialized.settings, run.contract, run.tables)
    assert again.customers == materialized.summary.customers
    assert again.postgres_written == materialized.summary.postgres_written
    assert _postgres_rows(materialized) == materialized.expected


def test_no_target_is_a_clear_error(materialized: Materialized, spark: Any) -> None:
    settings = _with_store(materialized.settings, redis_url=None, postgres_url=None)
    run = materialized.run
    with pytest.raises(OnlineStoreError, match="no online store target"):
        materialize_online_features(spark, settings, run.contract, run.tables)


def test_lookup_prefers_redis(materialized: Materialized) -> None:
    customer = _sample(materialized)[0]
    found = _lookup(materialized, customer)
    assert found is not None
    assert found.source == "redis"
    assert (found.snapshot_date, found.features) == materialized.expected[customer]


def test_absent_key_falls_back_to_postgres(materialized: Materialized) -> None:
    customer = _sample(materialized)[1]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.delete(materialized.key(customer)) == 1
    finally:
        client.close()
    found = _lookup(materialized, customer)
    assert found is not None
    assert found.source == "postgres"
    assert (found.snapshot_date, found.features) == materialized.expected[customer]


def test_dead_redis_falls_back_to_postgres_and_trips_the_breaker(
    materialized: Materialized,
) -> None:
    customer = _sample(materialized)[2]
    store = materialized.store.model_copy(update={"redis_url": _closed_url("redis")})

    async def run() -> tuple[list[OnlineLookup | None], dict[str, str], float]:
        online = OnlineFeatureStore(store, materialized.run.contract.name)
        await online.start()
        try:
            first = await online.get(customer)
            started = time.perf_counter()
            # Within the breaker's second Redis is not tried again.
            second = await online.get(customer)
            return [first, second], online.status(), time.perf_counter() - started
        finally:
            await online.close()

    lookups, status, seconds = asyncio.run(run())
    for found in lookups:
        assert found is not None
        assert found.source == "postgres"
        assert (found.snapshot_date, found.features) == materialized.expected[customer]
    assert status["postgres"] == "ok"
    assert status["redis"].startswith("ConnectionError")
    assert seconds < 0.2


def test_silent_redis_costs_one_timeout_per_breaker_period(materialized: Materialized) -> None:
    customer = _sample(materialized)[2]
    # Accepts connections (the kernel's backlog) but never answers: reads time out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = SecretStr(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        store = materialized.store.model_copy(update={"redis_url": url})

        async def run() -> tuple[list[float], list[str | None], dict[str, str]]:
            online = OnlineFeatureStore(store, materialized.run.contract.name, timeout_s=0.2)
            await online.start()
            seconds, sources = [], []
            try:
                for _ in range(3):
                    started = time.perf_counter()
                    found = await online.get(customer)
                    seconds.append(time.perf_counter() - started)
                    sources.append(found.source if found else None)
                return seconds, sources, online.status()
            finally:
                await online.close()

        seconds, sources, status = asyncio.run(run())
    assert sources == ["postgres"] * 3
    assert seconds[0] >= 0.2
    assert max(seconds[1:]) < 0.1
    assert status["redis"].startswith("TimeoutError")


def test_unknown_customer_is_none(materialized: Materialized) -> None:
    assert _lookup(materialized, "NO-SUCH-CUSTOMER") is None


def test_both_backends_down_is_unavailable(materialized: Materialized) -> None:
    password = "pa55-w0rd"
    closed_pg = f"postgresql://app:{password}@127.0.0.1:{free_port()}/churn"
    with pytest.raises(OnlineStoreUnavailable) as raised:
        _lookup(
            materialized,
            _sample(materialized)[0],
            redis_url=_closed_url("redis"),
            postgres_url=SecretStr(closed_pg),
        )
    message = str(raised.value)
    assert password not in message
    assert "\n" not in message
    assert "redis: ConnectionError" in message
