"""``churn score``: every customer of a gold snapshot, scored by the champion.

Scores go to the Delta scores table (one atomic commit per (snapshot, model version) slice),
each customer's current risk to PostgreSQL (``scoring.postgres_url``) and every score to the
prediction log. Re-running is safe: a complete slice is not scored again, PostgreSQL keeps
newer scores and the log gains no duplicate. Registered by ``churn/cli.py``; heavy modules are
imported inside the command so ``churn --help`` stays instant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from churn_core.business import SegmentBusiness
    from churn_core.job_metrics import JobMetrics
    from churn_core.registry import Registry
    from churn_core.settings import Settings
    from pipelines.scoring import ScoringPlan, WriteSummary
    from pipelines.scoring_publish import PublishSummary


class Engine(StrEnum):
    """Where the model runs."""

    spark = "spark"
    ray = "ray"


@dataclass(frozen=True)
class ScoreRun:
    """Everything one ``churn score`` run did."""

    plan: ScoringPlan
    write: WriteSummary
    postgres: PublishSummary | None
    logged: PublishSummary | None
    seconds: float
    # The whole base first, then each segment (empty when the contract declares no business).
    business: list[SegmentBusiness]


def write_scores(s: Settings, plan: ScoringPlan, engine: Engine, force: bool) -> WriteSummary:
    """Score and commit the slice with ``engine`` (its session started and stopped here)."""
    if engine is Engine.ray:
        from churn_core.ray_runtime import ray_session
        from pipelines.scoring_ray import score_with_ray

        with ray_session(s.ray):
            return score_with_ray(plan, s.scoring, force=force)
    from pipelines.scoring import score_with_spark
    from pipelines.session import spark_session

    with spark_session(s.spark) as spark:
        return score_with_spark(spark, plan, force=force)


def plan_run(s: Settings, registry: Registry, snapshot: date | None) -> ScoringPlan:
    """The run's plan: the alias resolved once, gold pinned, the snapshot and its customers."""
    from churn_core.tables import Tables
    from pipelines.scoring import plan_scoring

    return plan_scoring(s, Tables(s.dataset_lake), registry, snapshot=snapshot)


def publish(
    s: Settings, plan: ScoringPlan, postgres: bool, log: bool
) -> tuple[PublishSummary | None, PublishSummary | None]:
    """The committed slice -> PostgreSQL and the prediction log (each when enabled)."""
    from churn import cli
    from churn_core.tables import Tables
    from pipelines.scoring_publish import log_batch_predictions, upsert_current_scores

    upserted = logged = None
    if postgres and s.scoring.postgres_url is not None:
        with cli.console.status("score: current risk -> PostgreSQL"):
            upserted = upsert_current_scores(plan, s.scoring, plan.model.contract.name)
    if log and s.monitoring.prediction_log.enabled:
        with cli.console.status("score: scores -> prediction log"):
            logged = log_batch_predictions(plan, str(Tables(s.dataset_lake).prediction_log))
    return upserted, logged


def run_score(
    s: Settings,
    *,
    snapshot: date | None = None,
    engine: Engine | None = None,
    postgres: bool = True,
    log: bool = True,
    force: bool = False,
) -> ScoreRun:
    """Plan, score and commit the slice, publish it; print one summary line, push metrics."""
    from churn import cli
    from churn_core.faults import failpoint
    from churn_core.registry import open_registry
    from pipelines.scoring import FAILPOINT_AFTER_COMMIT

    job = cli._job("churn-score")
    started = time.perf_counter()
    chosen = engine or Engine(s.scoring.engine)
    with open_registry(s.registry, s.resolve, encryption=s.encryption) as registry:
        plan = plan_run(s, registry, snapshot)
    cli.console.print(
        f"score: {plan.model.name} v{plan.model.version} ({s.scoring.alias}) on gold "
        f"v{plan.gold_version}, snapshot {plan.snapshot}: {plan.rows:,} customers, "
        f"engine {chosen}, reasons {plan.reasons}"
    )
    with cli.console.status(f"score: gold -> scores ({chosen})"):
        write = write_scores(s, plan, chosen, force)
    failpoint(FAILPOINT_AFTER_COMMIT)
    upserted, logged = publish(s, plan, postgres, log)
    from pipelines.scoring_business import slice_business_metrics

    business = slice_business_metrics(plan)
    run = ScoreRun(plan, write, upserted, logged, time.perf_counter() - started, business)
    _record(job, run)
    cli._publish(s, job)
    _summary(run)
    return run


def _record(job: JobMetrics, run: ScoreRun) -> None:
    """Rows per stage of this run (``written`` is 0 when the slice was already complete)."""
    job.rows("customers", run.plan.rows)
    job.rows("scored", run.write.scored)
    job.rows("written", run.write.written)
    if run.postgres is not None:
        job.rows("postgres_changed", run.postgres.changed)
    if run.logged is not None:
        job.rows("logged", run.logged.changed)
    _record_business(job, run.business)


def _record_business(job: JobMetrics, rows: list[SegmentBusiness]) -> None:
    """One gauge per business metric, labelled by segment (``all`` for the whole base)."""
    if not rows:
        return
    from churn_core.business import METRICS

    gauges = {
        field: job.gauge(name, documentation, ["segment"])
        for field, (name, documentation) in METRICS.items()
    }
    for row in rows:
        values = row.as_dict()
        for field, gauge in gauges.items():
            gauge.labels(row.segment).set(float(values[field]))


def _summary(run: ScoreRun) -> None:
    from churn import cli

    plan, write = run.plan, run.write
    counts: dict[str, object] = {
        "snapshot": plan.snapshot.isoformat(),
        "model": f"v{plan.model.version}",
        "engine": write.engine,
        "customers": plan.rows,
        "scored": write.scored,
        "written": write.written,
        "skipped": write.skipped,
        "table_version": write.table_version,
        "score_s": f"{write.seconds:.1f}",
    }
    if write.seconds > 0 and write.scored:
        counts["rows_per_s"] = f"{write.scored / write.seconds:,.0f}"
    if run.postgres is not None:
        counts["postgres_changed"] = run.postgres.changed
        counts["postgres_s"] = f"{run.postgres.seconds:.1f}"
    else:
        counts["postgres"] = "off"
    if run.logged is not None:
        counts["logged"] = run.logged.changed
        counts["log_s"] = f"{run.logged.seconds:.1f}"
    else:
        counts["logged"] = "off"
    if run.business:
        base = run.business[0]
        counts["churn_rate"] = f"{base.predicted_churn_rate:.1%}"
        counts["revenue_at_risk"] = f"{base.revenue_at_risk:,.0f}/month"
        counts["campaign"] = base.campaign_size
    cli._done("score", run.seconds, **counts)


def score_command(
    snapshot: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            metavar="YYYY-MM-DD",
            help="Gold snapshot to score; default: the latest.",
        ),
    ] = None,
    engine: Annotated[
        Engine | None,
        typer.Option(help="spark (mapInArrow) or ray (Ray Data); default: scoring.engine."),
    ] = None,
    postgres: Annotated[
        bool,
        typer.Option(help="Upsert each customer's current risk into scoring.postgres_url."),
    ] = True,
    log: Annotated[bool, typer.Option(help="Append the scores to the prediction log.")] = True,
    force: Annotated[
        bool, typer.Option(help="Score again even when the slice is already complete.")
    ] = False,
) -> None:
    """Score every customer of a gold snapshot with the champion; Delta, PostgreSQL, log."""
    from churn import cli

    run_score(
        cli.settings(),
        snapshot=snapshot.date() if snapshot else None,
        engine=engine,
        postgres=postgres,
        log=log,
        force=force,
    )
