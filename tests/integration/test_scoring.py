"""Batch scoring end to end: the pipeline's champion over its gold table, real Sail, Ray,
Delta and PostgreSQL.

Each test gets its own lake holding a copy of the session run's gold table (``saas_run``: the
same Delta table, same version) and its own PostgreSQL table, so the session's shared lake and
prediction log never see these scores. Jobs run through ``churn.score_cli.run_score`` (what
``churn score`` runs), or as a real ``churn score`` process when the test kills it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pytest
import xgboost as xgb
from deltalake import DeltaTable, write_deltalake
from psycopg import sql
from pydantic import SecretStr

from churn.score_cli import Engine, ScoreRun, run_score
from churn_core.contract import FeatureContract
from churn_core.faults import FAILPOINT_EXIT_CODE
from churn_core.model import FeatureEncoder
from churn_core.prediction_log import query_delta
from churn_core.registry import LocalRegistry
from churn_core.settings import Settings
from churn_core.tables import Tables
from pipelines.scoring import (
    FAILPOINT_AFTER_COMMIT,
    FAILPOINT_BEFORE_COMMIT,
    SCORES_SCHEMA,
    plan_scoring,
    score_with_spark,
)
from pipelines.scoring_publish import batch_prediction_id
from pipelines.scoring_ray import score_with_ray
from tests.conftest import REPO_ROOT, PipelineRun, make_settings
from tests.unit.conftest import TINY_CONTRACT, tiny_frame
from tests.unit.test_scoring import gold_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TOLERANCE = 1e-6


@dataclass(frozen=True)
class World:
    """One test's lake (a copy of the run's gold), settings and PostgreSQL table."""

    run: PipelineRun
    settings: Settings
    tables: Tables
    postgres_url: str

    @property
    def table(self) -> str:
        return self.settings.scoring.postgres_table

    @property
    def snapshots(self) -> list[date]:
        assert self.run.contract.snapshot is not None
        return sorted(self.run.contract.snapshot.dates)


@pytest.fixture
def world(saas_run: PipelineRun, postgres_url: str, tmp_path: Path) -> World:
    tables = Tables(tmp_path / "lake" / saas_run.settings.dataset)
    shutil.copytree(saas_run.tables.gold_features, tables.gold_features)
    base = saas_run.settings
    settings = base.model_copy(
        update={
            "lake_dir": tmp_path / "lake",
            "scoring": base.scoring.model_copy(
                update={
                    "postgres_url": SecretStr(postgres_url),
                    "postgres_table": f"scores_{secrets.token_hex(4)}",
                }
            ),
            "monitoring": base.monitoring.model_copy(update={"metrics_dir": tmp_path / "metrics"}),
        }
    )
    return World(saas_run, settings, tables, postgres_url)


def slice_rows(world: World, snapshot: date, version: int) -> pa.Table:
    """The scores table's rows of one slice, by customer."""
    return query_delta(
        {"s": world.tables.scores},
        f"SELECT * FROM s WHERE snapshot_date = DATE '{snapshot.isoformat()}' "
        f"AND model_version = {version} ORDER BY customer_id",
    )


def all_scores(world: World) -> list[dict[str, Any]]:
    table = query_delta(
        {"s": world.tables.scores},
        "SELECT * FROM s ORDER BY snapshot_date, model_version, customer_id",
    )
    return table.to_pylist()


def gold_rows(world: World, snapshot: date) -> Any:
    """The gold rows of a snapshot as pandas (what an offline scorer would read)."""
    return (
        query_delta(
            {"g": world.tables.gold_features},
            f"SELECT * FROM g WHERE snapshot_date = DATE '{snapshot.isoformat()}' "
            "ORDER BY customer_id",
        )
        .to_pandas()
        .reset_index(drop=True)
    )


def postgres_rows(world: World) -> list[tuple[Any, ...]]:
    with psycopg.connect(world.postgres_url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", [world.table]).fetchone()
        if exists is None or exists[0] is None:
            return []
        return conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY contract, customer_id").format(
                sql.Identifier(world.table)
            )
        ).fetchall()


def logged(world: World) -> pa.Table:
    path = world.tables.prediction_log
    if not DeltaTable.is_deltatable(str(path)):
        return pa.table({})
    return query_delta(
        {"log": path},
        "SELECT * FROM log WHERE endpoint = 'batch_scoring' ORDER BY as_of, customer_id",
    )


def table_version(world: World) -> int:
    return int(DeltaTable(str(world.tables.scores)).version())


def score(world: World, **options: Any) -> ScoreRun:
    return run_score(world.settings, **options)


# --- (a) the scores are the champion's -----------------------------------------------------------


@pytest.mark.parametrize("engine", [Engine.spark, Engine.ray])
def test_scores_equal_the_champions_offline_predictions(
    world: World, engine: Engine, ray_cluster: None
) -> None:
    run = score(world, engine=engine, postgres=False, log=False)
    name = world.settings.model_name
    model = world.run.registry.load_model(name, "champion")
    meta = world.run.registry.resolve(name, "champion")
    latest = world.snapshots[-1]
    gold = gold_rows(world, latest)

    assert run.plan.snapshot == latest
    assert run.plan.model.version == meta.version
    assert run.write.written == run.plan.rows == len(gold) > 0
    assert pa.schema(DeltaTable(str(world.tables.scores)).schema().to_arrow()) == SCORES_SCHEMA

    rows = slice_rows(world, latest, meta.version).to_pandas()
    assert rows["customer_id"].tolist() == gold["customer_id"].tolist()
    expected = model.predict_frame(gold)
    np.testing.assert_allclose(rows["probability"], expected, rtol=0, atol=TOLERANCE)
    threshold = float(meta.params["threshold"])
    assert (rows["threshold"] == threshold).all()
    assert rows["churn"].tolist() == (expected >= threshold).tolist()
    assert set(rows["gold_version"]) == {DeltaTable(str(world.tables.gold_features)).version()}
    assert set(rows["model_name"]) == {name}

    # Reasons: the API's exact SHAP top reasons for the same rows.
    reasons = model.explain_matrix(
        model.encoder.encode_frame(gold), world.settings.serve.top_reasons
    )
    for text, want in zip(rows["reasons"], reasons, strict=True):
        got = json.loads(text)
        assert [r["feature"] for r in got] == [r.feature for r in want]
        for a, b in zip(got, want, strict=True):
            assert math.isclose(a["contribution"], b.contribution, rel_tol=1e-6, abs_tol=1e-9)


def test_both_engines_write_the_same_slice(world: World, ray_cluster: None, spark: Any) -> None:
    plan = plan_scoring(world.settings, world.tables, world.run.registry)
    by_spark = score_with_spark(spark, plan)
    spark_rows = slice_rows(world, plan.snapshot, plan.model.version)
    by_ray = score_with_ray(plan, world.settings.scoring, force=True)
    ray_rows = slice_rows(world, plan.snapshot, plan.model.version)

    # One commit each; the second replaced the whole slice with identical rows.
    assert by_ray.table_version == by_spark.table_version + 1
    assert ray_rows.to_pylist() == spark_rows.to_pylist()
    assert ray_rows.num_rows == plan.rows


# --- (b) re-running changes nothing ----------------------------------------------------------------


def test_rerunning_leaves_delta_and_postgres_unchanged(world: World, ray_cluster: None) -> None:
    first = score(world)
    assert not first.write.skipped
    assert first.postgres is not None and first.postgres.changed == first.plan.rows
    version, content, rows, log = (
        table_version(world),
        all_scores(world),
        postgres_rows(world),
        logged(world),
    )

    for engine in (Engine.spark, Engine.ray):
        again = score(world, engine=engine)
        assert again.write.skipped and again.write.scored == again.write.written == 0
        assert again.postgres is not None and again.postgres.changed == 0
        assert again.logged is not None and again.logged.changed == 0
        assert table_version(world) == version  # not even an empty commit
        assert all_scores(world) == content  # scored_at included
        assert postgres_rows(world) == rows  # updated_at included
        assert logged(world).equals(log)


# --- (c) a killed job leaves no partial slice --------------------------------------------------------


def churn_score(
    world: World, *args: str, failpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``churn score`` as its own process, on this test's lake and PostgreSQL table."""
    settings = world.settings
    env = {
        **os.environ,
        "CHURN_LAKE_DIR": str(settings.lake_dir),
        "CHURN_REGISTRY__ROOT": str(settings.registry.root),
        "CHURN_MONITORING__METRICS_DIR": str(settings.monitoring.metrics_dir),
        "CHURN_MONITORING__PREDICTION_LOG__SPOOL_DIR": str(
            settings.monitoring.prediction_log.spool_dir
        ),
        "CHURN_SCORING__POSTGRES_URL": world.postgres_url,
        "CHURN_SCORING__POSTGRES_TABLE": world.table,
        "CHURN_RAY__NUM_CPUS": "2",
    }
    env.pop("CHURN_FAILPOINTS", None)
    if failpoint:
        env["CHURN_FAILPOINTS"] = failpoint
    churn = Path(sys.executable).with_name("churn")
    return subprocess.run(
        [str(churn), "--env", "test", "score", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO_ROOT,
    )


@pytest.mark.parametrize("engine", ["spark", "ray"])
def test_a_job_killed_before_its_commit_leaves_no_partial_snapshot(
    world: World, engine: str
) -> None:
    snapshot = world.snapshots[-2].isoformat()
    killed = churn_score(
        world, "--engine", engine, "--snapshot", snapshot, failpoint=FAILPOINT_BEFORE_COMMIT
    )
    assert killed.returncode == FAILPOINT_EXIT_CODE, killed.stderr[-2000:]

    # Every row was scored and handed to the writer, then the process died: no commit
    # references them, so no reader sees any of them.
    assert table_version(world) == 0  # only the table's creation
    assert all_scores(world) == []
    assert postgres_rows(world) == []
    assert logged(world).num_rows == 0

    rerun = churn_score(world, "--engine", engine, "--snapshot", snapshot)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "skipped=False" in rerun.stdout
    rows = gold_rows(world, world.snapshots[-2])
    assert table_version(world) == 1  # the slice arrived in one commit
    assert len(all_scores(world)) == len(rows)
    assert len(postgres_rows(world)) == len(rows)
    assert logged(world).num_rows == len(rows)


def test_a_job_killed_after_its_commit_is_completed_by_the_rerun(world: World) -> None:
    killed = churn_score(world, failpoint=FAILPOINT_AFTER_COMMIT)
    assert killed.returncode == FAILPOINT_EXIT_CODE, killed.stderr[-2000:]
    rows = len(gold_rows(world, world.snapshots[-1]))
    assert len(all_scores(world)) == rows  # committed
    assert postgres_rows(world) == []  # not yet published
    content, version = all_scores(world), table_version(world)

    rerun = churn_score(world)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "skipped=True" in rerun.stdout
    assert (table_version(world), all_scores(world)) == (version, content)
    assert len(postgres_rows(world)) == rows
    assert logged(world).num_rows == rows


# --- (d) PostgreSQL keeps the newer score -------------------------------------------------------------


def test_postgres_keeps_the_newer_score_when_an_older_snapshot_is_scored(world: World) -> None:
    newer, older = world.snapshots[-1], world.snapshots[-2]
    first = score(world, log=False)
    assert first.plan.snapshot == newer
    version = first.plan.model.version
    latest = {r["customer_id"]: r for r in slice_rows(world, newer, version).to_pylist()}
    earlier = {r["customer_id"]: r for r in slice_rows(world, older, version).to_pylist()}
    assert earlier == {}

    second = score(world, snapshot=older, log=False)
    earlier = {r["customer_id"]: r for r in slice_rows(world, older, version).to_pylist()}
    only_older = set(earlier) - set(latest)
    assert second.postgres is not None
    assert second.postgres.changed == len(only_older)  # no customer of the newer run moved

    columns = ["contract", "customer_id", "snapshot_date", "model_name", "model_version"]
    columns += ["probability", "churn", "threshold", "reasons", "scored_at", "updated_at"]
    table = {row[1]: dict(zip(columns, row, strict=True)) for row in postgres_rows(world)}
    assert set(table) == set(latest) | set(earlier)
    for customer, row in table.items():
        source = latest.get(customer) or earlier[customer]
        assert row["snapshot_date"] == source["snapshot_date"]
        assert row["probability"] == source["probability"]  # exact: CSV round-trips floats
        assert row["scored_at"] == source["scored_at"]
        assert row["reasons"] == json.loads(source["reasons"])

    # Re-scoring the older snapshot again (forced) still moves nobody.
    third = score(world, snapshot=older, log=False, force=True)
    assert third.postgres is not None and third.postgres.changed == len(only_older)
    moved = {r[1]: r[2] for r in postgres_rows(world)}
    assert all(moved[c] == newer for c in latest)


# --- (e) the prediction log holds each batch score once ---------------------------------------------


def test_batch_predictions_are_logged_once(world: World, ray_cluster: None) -> None:
    first = score(world)
    score(world)
    score(world, force=True)
    score(world, engine=Engine.ray, force=True)

    rows = logged(world).to_pandas()
    gold = gold_rows(world, first.plan.snapshot)
    assert len(rows) == first.plan.rows == len(gold)
    assert rows["prediction_id"].is_unique
    name, version = first.plan.model.name, first.plan.model.version
    assert rows["prediction_id"].tolist() == [
        batch_prediction_id(name, version, first.plan.snapshot, c) for c in rows["customer_id"]
    ]
    assert set(rows["features_from"]) == {"gold"}
    assert set(rows["as_of"]) == {first.plan.snapshot}
    assert set(rows["model_version"]) == {version}
    # The features logged are gold's, the score is the slice's first scoring.
    for feature in first.plan.model.contract.feature_names:
        left, right = rows[feature].tolist(), gold[feature].tolist()
        assert all(
            (a is None and b is None) or a == b or (a != a and b != b)  # NaN equals NaN here
            for a, b in zip(left, right, strict=True)
        ), feature
    scored = slice_rows(world, first.plan.snapshot, version).to_pandas()
    np.testing.assert_allclose(rows["probability"], scored["probability"], rtol=0, atol=0)


def test_business_metrics_are_published_from_the_committed_slice(
    world: World, ray_cluster: None
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    run = score(world, postgres=False, log=False)
    scored = slice_rows(world, run.plan.snapshot, run.plan.model.version).to_pandas()
    gold = gold_rows(world, run.plan.snapshot)[["customer_id", "monthly_fee", "contract_type"]]
    merged = scored.merge(gold, on="customer_id", validate="one_to_one")
    assert len(merged) == run.plan.rows

    prom = world.settings.monitoring.metrics_dir / "churn-score.prom"
    samples = {
        (s.name, s.labels["segment"]): s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
        if "segment" in s.labels
    }
    risk = (merged["monthly_fee"] * merged["probability"]).sum()
    assert samples[("churn_business_revenue_at_risk", "all")] == pytest.approx(risk)
    assert samples[("churn_business_customers", "all")] == run.plan.rows
    targeted = merged["probability"] >= run.plan.threshold
    assert samples[("churn_business_campaign_size", "all")] == int(targeted.sum())
    monthly = merged[merged["contract_type"] == "month_to_month"]
    assert samples[
        ("churn_business_predicted_churn_rate", "contract_type=month_to_month")
    ] == pytest.approx(monthly["probability"].mean())
    assert run.business[0].revenue_at_risk == pytest.approx(risk)


# --- a contract without snapshots --------------------------------------------------------------------


def test_a_contract_without_snapshots_scores_every_row_under_todays_date(
    tmp_path: Path, postgres_url: str, ray_cluster: None
) -> None:
    """The tiny contract: no snapshot column, entity key ``id``, its own gold and registry."""
    contract = FeatureContract.model_validate(TINY_CONTRACT)
    training = tiny_frame(2000)
    encoder = FeatureEncoder(contract)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3},
        encoder.dmatrix(encoder.encode_frame(training), training["churned"].to_numpy()),
        30,
    )
    settings = make_settings(tmp_path, dataset="tiny")
    settings = settings.model_copy(
        update={
            "scoring": settings.scoring.model_copy(
                update={"postgres_url": SecretStr(postgres_url), "postgres_table": "tiny_scores"}
            )
        }
    )
    registry = LocalRegistry(settings.resolve(settings.registry.root))
    meta = registry.register(
        settings.model_name,
        bytes(booster.save_raw("ubj")),
        contract,
        params={"threshold": 0.4},
        metrics={},
        lineage={},
        feature_importance={},
    )
    registry.set_alias(settings.model_name, "champion", meta.version)
    tables = Tables(settings.dataset_lake)
    write_deltalake(str(tables.gold_features), gold_batch(300))

    first = run_score(settings, engine=Engine.spark)
    again = run_score(settings, engine=Engine.ray)
    assert first.plan.snapshot == again.plan.snapshot == first.plan.scored_at.date()
    assert first.write.written == first.plan.rows == 300
    assert again.write.skipped
    world = World(run=None, settings=settings, tables=tables, postgres_url=postgres_url)  # type: ignore[arg-type]
    assert len(all_scores(world)) == 300
    assert {row[0] for row in postgres_rows(world)} == {"tiny"}
    assert len(postgres_rows(world)) == 300
    assert logged(world).num_rows == 300
