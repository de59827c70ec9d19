"""The restore drill: build the system, back it up, destroy every store, restore, compare.

The system is a copy of the session's sample run (lake and registry copied first, so the
shared data stays untouched) with its stores on real servers: the online store and the batch
scores (the scoring job's Delta table and its PostgreSQL table) in two fresh PostgreSQL
databases, the registry's metadata in MongoDB (SecantusDB, the versions migrated from the
run's JSON registry), artifacts in a folder of their own, drift results in a second MongoDB
database. Predictions go through the real API (the uvicorn app, in-process), by customer id,
so the answers depend on the restored registry, artifacts and PostgreSQL at once.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from deltalake import DeltaTable
from fastapi.testclient import TestClient
from psycopg import sql
from pydantic import SecretStr
from pymongo import MongoClient
from typer.testing import CliRunner

from churn_core.backup.create import open_store
from churn_core.backup.delta import discover_tables
from churn_core.backup.restore import RestoreRefused, restore_backup
from churn_core.prediction_log import query_delta
from churn_core.registry import ARTIFACT_NAME, CONTRACT_NAME, Registry, open_registry
from churn_core.settings import Settings
from churn_core.tables import Tables
from serve_apps.standalone import create_standalone_app
from tests.conftest import PipelineRun
from tests.fixtures.mongo import SecantusServer
from tests.fixtures.postgres import admin_url, create_database, drop_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CUSTOMERS = 25
CLIENT = "predictor-client"
PASSWORD = "drill-pg-s3cret"


@dataclass(frozen=True)
class Drill:
    """The drill's system: its settings and the servers' handles to destroy it."""

    settings: Settings
    admin: str
    databases: tuple[str, ...]
    mongo: SecantusServer
    base: Path


def migrate_registry(source: Registry, target: Registry, name: str) -> None:
    """Every version of ``name`` re-registered in ``target`` (same numbers, files and aliases)."""
    for meta in source.list(name):
        reports = {
            f.name: source.read_file(name, meta.version, f.name)
            for f in meta.files
            if f.name not in (ARTIFACT_NAME, CONTRACT_NAME)
        }
        copied = target.register(
            name,
            source.read_file(name, meta.version, ARTIFACT_NAME),
            source.load_contract(name, meta.version),
            params=meta.params,
            metrics=meta.metrics,
            lineage=meta.lineage,
            feature_importance=meta.feature_importance,
            segments=meta.segments,
            files=reports,
            registered_by=meta.registered_by,
        )
        assert copied.version == meta.version
    for alias, version in source.aliases(name).items():
        target.set_alias(name, alias, version, reason="migrated from the JSON registry")
    champion = target.get(name, source.aliases(name)["champion"])
    # A later version held as challenger, and a later accuracy measurement: more than one of
    # each thing the restore must bring back.
    challenger = target.register(
        name,
        target.read_file(name, champion.version, ARTIFACT_NAME),
        target.load_contract(name, champion.version),
        params={**champion.params, "retrained": True},
        metrics=champion.metrics,
        lineage=champion.lineage,
        feature_importance=champion.feature_importance,
    )
    target.set_alias(name, "challenger", challenger.version, reason="shadow")
    target.record_metrics(
        name,
        champion.version,
        {"roc_auc": 0.71, "brier": 0.12},
        source="accuracy",
        details={"labels": 900},
    )


def with_password(url: str) -> str:
    """``url`` with a password: the server trusts loopback and ignores it, but it must never
    reach a command line, a log line, the manifest or the configs copy."""
    user = urlsplit(url).username
    return url.replace(f"{user}@", f"{user}:{PASSWORD}@", 1)


def score_customers(
    spark: Any, settings: Settings, tables: Tables, registry: Registry, contract: str
) -> None:
    """The batch-scoring job's steps: champion scores in Delta, current risk in PostgreSQL."""
    from pipelines.scoring import plan_scoring, score_with_spark
    from pipelines.scoring_publish import upsert_current_scores

    plan = plan_scoring(settings, tables, registry)
    score_with_spark(spark, plan)
    upsert_current_scores(plan, settings.scoring, contract)


@pytest.fixture
def drill(
    saas_run: PipelineRun, spark: Any, mongo_server: SecantusServer, tmp_path: Path
) -> Iterator[Drill]:
    from pipelines.online_store import materialize_online_features

    original = saas_run.settings
    shutil.copytree(original.dataset_lake, tmp_path / "lake" / original.dataset)
    shutil.copytree(original.resolve(original.registry.root), tmp_path / "source-registry")
    admin = admin_url()
    tag = secrets.token_hex(4)
    # Two databases: the online store's and the batch scores' (two dumps, two restores).
    databases = (f"churn_drill_online_{tag}", f"churn_drill_scores_{tag}")
    online_url, scores_url = (with_password(create_database(admin, d)) for d in databases)
    registry = original.registry.model_copy(
        update={
            "root": tmp_path / "registry",
            "metadata": "mongodb",
            "mongodb_url": SecretStr(mongo_server.url),
            "mongodb_database": f"drill_registry_{tag}",
            "mongodb_timeout_s": 30.0,
            "artifact_uri": str(tmp_path / "artifacts"),
        }
    )
    serve = original.serve.model_copy(
        update={
            "reload_interval_s": 0,
            "online_store": original.serve.online_store.model_copy(
                update={"postgres_url": SecretStr(online_url), "redis_url": None}
            ),
        }
    )
    settings = original.model_copy(
        update={
            "lake_dir": tmp_path / "lake",
            "registry": registry,
            "serve": serve,
            "monitoring": original.monitoring.model_copy(
                update={
                    "mongodb_url": SecretStr(mongo_server.url),
                    "mongodb_database": f"drill_monitoring_{tag}",
                }
            ),
            "scoring": original.scoring.model_copy(update={"postgres_url": SecretStr(scores_url)}),
            "backup": original.backup.model_copy(update={"root": str(tmp_path / "backups")}),
        }
    )
    tables = Tables(settings.dataset_lake)
    with (
        open_registry(
            original.registry.model_copy(update={"root": tmp_path / "source-registry"})
        ) as source,
        open_registry(settings.registry, settings.resolve) as target,
    ):
        migrate_registry(source, target, settings.model_name)
        score_customers(spark, settings, tables, target, saas_run.contract.name)
    materialize_online_features(spark, settings, saas_run.contract, tables)
    with mongo_server.client(tz_aware=True) as client:
        client[settings.monitoring.mongodb_database]["drift_runs"].insert_many(
            [
                {"run": 1, "at": datetime(2026, 11, 1, 3, tzinfo=UTC), "psi": 0.02, "big": 2**40},
                {"run": 2, "at": datetime(2026, 11, 2, 3, tzinfo=UTC), "features": [{"f": "a"}]},
            ]
        )
    try:
        yield Drill(settings, admin, databases, mongo_server, tmp_path)
    finally:
        for database in databases:
            drop_database(admin, database)
        with mongo_server.client() as client:
            client.drop_database(settings.registry.mongodb_database)
            client.drop_database(settings.monitoring.mongodb_database)


# --- what the system answers and holds --------------------------------------------------------


def customer_ids(settings: Settings) -> list[str]:
    found = query_delta(
        {"gold": settings.dataset_lake / "gold" / "features"},
        f"SELECT DISTINCT customer_id FROM gold ORDER BY customer_id LIMIT {CUSTOMERS}",
    )
    return [str(c) for c in found.column("customer_id").to_pylist()]


def served_predictions(settings: Settings, customers: list[str]) -> list[dict[str, Any]]:
    """The champion's answers through the real API, by customer id (features from PostgreSQL)."""
    with TestClient(create_standalone_app(settings)) as client:
        token = client.post(
            "/v1/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT,
                "client_secret": f"{CLIENT}-secret",
            },
        )
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        answers = []
        for customer in customers:
            response = client.post("/v1/predict", json={"customer_id": customer}, headers=headers)
            assert response.status_code == 200, response.text
            answer = response.json()
            answer.pop("prediction_id")  # new for every call
            assert answer["features_from"] == "postgres"
            answers.append(answer)
    return answers


def delta_contents(settings: Settings) -> dict[str, tuple[int, list[str]]]:
    """Every table's version and rows (as sorted JSON, so NaN compares equal to NaN)."""
    contents = {}
    lake = settings.dataset_lake
    for name in discover_tables(lake):
        rows = query_delta({"t": lake / name}, "SELECT * FROM t").to_pylist()
        serialised = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
        contents[name] = (DeltaTable(str(lake / name)).version(), serialised)
    return contents


def registry_contents(settings: Settings) -> dict[str, Any]:
    name = settings.model_name
    with open_registry(settings.registry, settings.resolve) as registry:
        return {
            "versions": registry.list(name),
            "aliases": registry.aliases(name),
            "history": registry.alias_history(name),
            "metrics": registry.metric_history(name),
            "artifacts": {
                v: registry.read_file(name, v, ARTIFACT_NAME)
                for v in registry.version_numbers(name)
            },
        }


def postgres_contents(settings: Settings) -> dict[str, list[str]]:
    """Every row of every table of both databases, as sorted JSON text."""
    contents: dict[str, list[str]] = {}
    for secret in (settings.serve.online_store.postgres_url, settings.scoring.postgres_url):
        assert secret is not None
        with psycopg.connect(secret.get_secret_value()) as conn:
            names = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
            for (name,) in names:
                rows = conn.execute(
                    sql.SQL("SELECT row_to_json(t)::text FROM {} t").format(sql.Identifier(name))
                ).fetchall()
                contents[name] = sorted(r[0] for r in rows)
    return contents


def mongo_contents(drill: Drill) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]]
    with drill.mongo.client(tz_aware=True) as client:
        database = client[drill.settings.monitoring.mongodb_database]
        return list(database["drift_runs"].find({}, sort=[("run", 1)]))


def everything(drill: Drill) -> dict[str, Any]:
    return {
        "delta": delta_contents(drill.settings),
        "registry": registry_contents(drill.settings),
        "postgres": postgres_contents(drill.settings),
        "monitoring": mongo_contents(drill),
    }


# --- destroying it ----------------------------------------------------------------------------


def destroy(drill: Drill) -> None:
    """Drop the PostgreSQL and MongoDB databases; delete the lake, artifact and registry folders."""
    settings = drill.settings
    for database in drill.databases:
        drop_database(drill.admin, database)
    with drill.mongo.client() as client:
        client.drop_database(settings.registry.mongodb_database)
        client.drop_database(settings.monitoring.mongodb_database)
    for folder in (drill.base / "lake", drill.base / "artifacts", drill.base / "registry"):
        shutil.rmtree(folder, ignore_errors=True)


def stores_are_empty(drill: Drill) -> bool:
    settings = drill.settings
    with drill.mongo.client() as client:
        names = client.list_database_names()
    with psycopg.connect(drill.admin, autocommit=True) as conn:
        found = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", [list(drill.databases)]
        ).fetchone()
    return (
        not (drill.base / "lake").exists()
        and not (drill.base / "artifacts").exists()
        and settings.registry.mongodb_database not in names
        and settings.monitoring.mongodb_database not in names
        and found is None
    )


def run_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    """``churn <args>`` through the real command, with these settings (not re-read from YAML)."""
    from churn import cli

    monkeypatch.setattr(cli, "settings", lambda: settings)
    # The command's process-wide setup stays out of the test process (signals, CLI state).
    monkeypatch.setattr(cli, "_stop_on_signals", lambda: None)
    monkeypatch.setattr(cli._State, "env", cli._State.env)
    monkeypatch.setattr("churn_core.logging.configure_logging", lambda *a, **k: None)
    monkeypatch.setattr("churn_core.logging.configure_from_settings", lambda *a, **k: None)
    return CliRunner().invoke(cli.app, ["--env", "test", *args])


def with_backup_root(settings: Settings, root: Path) -> Settings:
    return settings.model_copy(
        update={"backup": settings.backup.model_copy(update={"root": str(root)})}
    )


# --- the drill ----------------------------------------------------------------------------------


def test_restore_drill(drill: Drill, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = drill.settings
    customers = customer_ids(settings)
    served_before = served_predictions(settings, customers)
    before = everything(drill)  # after serving: the prediction log holds its rows too
    assert {"gold/features", "scores/customer_scores", "monitoring/predictions"} <= set(
        before["delta"]
    )
    assert set(before["postgres"]) == {"online_features", "customer_scores"}
    assert all(len(rows) > CUSTOMERS for rows in before["postgres"].values())
    assert len(before["registry"]["versions"]) >= 2
    assert {"champion", "challenger"} <= set(before["registry"]["aliases"])

    made = run_cli(settings, monkeypatch, "backup")
    assert made.exit_code == 0, made.stderr
    assert "done backup" in made.stdout and "postgres=2  mongodb=2" in made.stdout
    store = open_store(settings)
    (backup_id,) = store.ids()
    manifest = store.verify(backup_id)
    assert PASSWORD not in made.stdout + made.stderr
    for relative in store.files(backup_id):
        if not relative.startswith("postgres/"):  # a dump holds data, not the connection
            assert PASSWORD.encode() not in Path(store.path(backup_id, relative)).read_bytes()
    assert {e.name: e.version for e in manifest.delta} == {
        n: v for n, (v, _) in before["delta"].items()
    }
    assert [e.role for e in manifest.mongodb] == ["registry", "monitoring"]
    assert sorted((p.settings, p.tables) for p in manifest.postgres) == [
        (["scoring.postgres_url"], ["public.customer_scores"]),
        (["serve.online_store.postgres_url"], ["public.online_features"]),
    ]

    destroy(drill)
    assert stores_are_empty(drill)

    # A copy of the backup with one byte flipped is refused, naming the file, before any write.
    corrupt_root = drill.base / "corrupt-backups"
    shutil.copytree(drill.base / "backups", corrupt_root)
    victim = next(f.path for f in manifest.files if f.path.startswith("delta/gold/features/part-"))
    path = corrupt_root / backup_id / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    refused = run_cli(with_backup_root(settings, corrupt_root), monkeypatch, "restore", "latest")
    assert refused.exit_code == 1
    error = refused.stderr.strip()
    assert "\n" not in error
    assert error.startswith("churn restore failed: BackupCorrupt: ")
    assert f"{victim}: checksum mismatch" in error
    assert stores_are_empty(drill)

    restored = run_cli(settings, monkeypatch, "restore", "latest")
    assert restored.exit_code == 0, restored.stderr
    assert f"id={backup_id}" in restored.stdout and "created_databases=2" in restored.stdout
    after = everything(drill)
    assert after["delta"].keys() == before["delta"].keys()
    for name in before["delta"]:
        assert after["delta"][name] == before["delta"][name], name
    assert after["registry"] == before["registry"]
    assert after["postgres"] == before["postgres"]
    assert after["monitoring"] == before["monitoring"]

    # Restoring again is refused: every store now holds data (each one is checked).
    with pytest.raises(RestoreRefused) as again:
        restore_backup(settings, backup_id)
    stores = len(manifest.delta) + 1 + len(manifest.mongodb) + len(manifest.postgres)
    assert f"is not empty (and {stores - 1} more)" in str(again.value)

    served_after = served_predictions(settings, customers)
    assert served_after == served_before  # exact float equality
