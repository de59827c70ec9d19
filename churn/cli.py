"""The ``churn`` command: one entry point for people. Subcommands import their stage lazily."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from churn.failures import one_line_errors_for

if TYPE_CHECKING:
    from churn_core.job_metrics import JobMetrics
    from churn_core.settings import Settings
    from pipelines.features import GoldSummary
    from pipelines.silver import SilverSummary

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
# soft_wrap: a summary or error stays one line in logs, whatever the terminal width.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


class _State:
    env: str | None = None
    overrides: dict[str, Any] = {}  # noqa: RUF012 (one process-wide CLI state)


def settings() -> Settings:
    """Settings of the chosen environment with the command-line overrides applied."""
    from churn_core.settings import load_settings

    loaded = load_settings(_State.env)
    return loaded.model_copy(update=_State.overrides) if _State.overrides else loaded


one_line_errors = one_line_errors_for("churn")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt (a background job starts with SIGINT ignored)."""
    import signal

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


@app.callback()
def main_options(
    ctx: typer.Context,
    env: Annotated[str | None, typer.Option(help="Environment (configs/<env>.yaml).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Contract name in configs/contracts.")] = None,
    raw_dir: Annotated[Path | None, typer.Option(help="Folder holding the raw sources.")] = None,
) -> None:
    """Customer churn prediction: Spark + Delta ingestion, Ray Train/Tune XGBoost, Ray Serve."""
    _State.env = env
    _State.overrides = {
        k: v for k, v in {"dataset": dataset, "raw_dir": raw_dir}.items() if v is not None
    }
    from pydantic import ValidationError

    from churn_core.logging import configure_from_settings, job_fields
    from churn_core.settings import load_settings

    try:
        base = load_settings(env)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        errors.print(f"[red]churn: bad settings:[/red] {problems}")
        raise typer.Exit(2) from None
    except ValueError as error:
        errors.print(f"[red]churn: bad settings:[/red] {error}")
        raise typer.Exit(2) from None
    # One job per process: its name and run id (the scheduler's CHURN_JOB_ID, else a new
    # one) go on every line, including those of the Ray workers it starts.
    configure_from_settings(
        base.model_copy(update=_State.overrides) if _State.overrides else base,
        "cli",
        **job_fields(ctx.invoked_subcommand or "churn"),
    )
    # For every command, from the start: long jobs hold Ray and Spark, which their context
    # managers release only if the interrupt arrives as an exception.
    _stop_on_signals()


def _done(stage: str, seconds: float, **counts: Any) -> None:
    details = "  ".join(f"{k}={v}" for k, v in counts.items())
    console.print(f"[green]done[/green] {stage:<9} {details}  ({seconds:.1f} s)")


def _job(name: str) -> JobMetrics:
    """Metrics of one run of job ``name``; its duration counts from here."""
    from churn_core.job_metrics import JobMetrics

    return JobMetrics(name)


def _publish(s: Settings, metrics: JobMetrics) -> None:
    """Mark the run successful and push (or write) its metrics.

    Only called once the job's work stands: a failed run publishes nothing, so the previous
    success time stays in place and the ChurnJobNotSucceeding alert sees the job go stale.
    """
    from churn_core.logging import get_logger

    metrics.mark_success()
    where = metrics.publish(s.monitoring, s.resolve(Path(".")))
    get_logger(__name__).info("job_metrics_published", job=metrics.job, target=where)


def _record_silver(job: JobMetrics, part: SilverSummary) -> None:
    """One source's validation counts, and its quarantined rows per reason code."""
    for stage, count in (
        ("read", part.read),
        ("accepted", part.accepted),
        ("quarantined", part.quarantined),
    ):
        job.rows(stage, count, part.source)
    for reason, count in part.reasons.items():
        job.quarantined(part.source, reason, count)


def _record_gold(job: JobMetrics, gold: GoldSummary) -> None:
    """Gold rows mix every source, hence no source label."""
    job.rows("gold", gold.rows)
    # 0 when unchanged inputs left the table as it was (nothing rewritten).
    job.rows("written", gold.rows if gold.written else 0)
    job.rows("positives", gold.positives)


def run_generate(s: Settings) -> None:
    """Write the sample data set's raw sources."""
    from rich.progress import Progress

    from pipelines.sample_data import generate_sample_data

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generate", total=s.sample.customers)
        summary = generate_sample_data(
            s.resolve(s.raw_dir),
            s.sample.customers,
            s.sample.seed,
            chunk_size=s.sample.chunk_size,
            page_size=s.sample.page_size,
            progress=lambda n: progress.update(task, completed=n),
        )
    _done(
        "generate",
        summary.seconds,
        customers=summary.customers,
        transactions=summary.transactions,
        support_records=summary.support_records,
        plan_changes=summary.plan_changes,
        churned=summary.churned,
    )


def run_spark_stages(s: Settings, ingest: bool = True, features: bool = True) -> None:
    """Bronze and silver (ingest) and gold (features) in one Spark session."""
    from churn_core.contract import load_contract
    from churn_core.tables import Tables
    from pipelines.features import build_gold
    from pipelines.ingest import ingest_sources
    from pipelines.session import spark_session
    from pipelines.silver import build_silver

    contract = load_contract(s.contract_path)
    tables = Tables(s.dataset_lake)
    with spark_session(s.spark) as spark:
        if ingest:
            job = _job("churn-ingest")
            with console.status("ingest: sources -> bronze"):
                bronze = ingest_sources(spark, contract, s, tables)
            for batch in bronze:
                job.rows("read", batch.read, batch.source)
                job.rows("appended", batch.appended, batch.source)
                _done(
                    "bronze",
                    batch.seconds,
                    source=batch.source,
                    origin=batch.origin,
                    read=batch.read,
                    appended=batch.appended,
                    already_present=batch.already_present,
                )
            _publish(s, job)
            job = _job("churn-silver")
            with console.status("validate: bronze -> silver + quarantine"):
                silver = build_silver(spark, contract, tables)
            for part in silver:
                _record_silver(job, part)
                _done(
                    "silver",
                    part.seconds,
                    source=part.source,
                    read=part.read,
                    accepted=part.accepted,
                    quarantined=part.quarantined,
                    **part.reasons,
                )
            _publish(s, job)
        if features:
            job = _job("churn-features")
            with console.status("features: silver -> gold (point-in-time)"):
                gold = build_gold(spark, contract, tables)
            _record_gold(job, gold)
            _done(
                "gold",
                gold.seconds,
                rows=gold.rows,
                snapshots=gold.snapshots,
                positives=gold.positives,
                written=gold.written,
            )
            _publish(s, job)


def run_train(s: Settings) -> None:
    """Train, evaluate and register (Ray must be running)."""
    from churn_core.contract import load_contract
    from churn_core.registry import open_registry
    from churn_core.tables import Tables
    from training.pipeline import train_and_register

    job = _job("churn-train")
    with (
        console.status("train: Ray Train XGBoost (2 workers)"),
        open_registry(s.registry, s.resolve, encryption=s.encryption) as registry,
    ):
        summary = train_and_register(
            s, load_contract(s.contract_path), Tables(s.dataset_lake), registry
        )
    for split, count in summary.rows.items():
        job.rows(split, count)  # stage = the split (train, valid, test) of the gold rows
    _publish(s, job)
    m = summary.version.metrics
    _done(
        "train",
        summary.seconds,
        version=summary.version.version,
        aliases=",".join(summary.aliases) or "-",
        roc_auc=f"{m['roc_auc']:.3f}",
        pr_auc=f"{m['pr_auc']:.3f}",
        **{f"{k}_rows": v for k, v in summary.rows.items()},
        **{k: f"{v:.1f}" for k, v in summary.phases.items()},
    )


def run_tune(s: Settings) -> None:
    """Search with Ray Tune, re-fit the best configuration with Ray Train, register it."""
    from churn_core.contract import load_contract
    from churn_core.registry import open_registry
    from churn_core.tables import Tables
    from training.data import read_gold
    from training.pipeline import train_and_register
    from training.tune import print_trials, tune_model

    contract = load_contract(s.contract_path)
    tables = Tables(s.dataset_lake)
    with console.status("tune: Ray Tune search"):
        result = tune_model(s, contract, read_gold(tables.gold_features), show=False)
    print_trials(result, console)
    _done(
        "tune",
        result.seconds,
        trials=len(result.trials),
        best=f"{result.metric}={result.best_metric:.4f}",
        results=str(result.files.get("csv", result.path)),
    )
    tuned = s.model_copy(update={"training": result.training_settings(s.training)})
    lineage = {"tune": {"experiment": str(result.path), "best_params": result.best_params}}
    with (
        console.status("train: best configuration with Ray Train"),
        open_registry(s.registry, s.resolve, encryption=s.encryption) as registry,
    ):
        summary = train_and_register(tuned, contract, tables, registry, extra_lineage=lineage)
    m = summary.version.metrics
    _done(
        "train",
        summary.seconds,
        version=summary.version.version,
        aliases=",".join(summary.aliases) or "-",
        roc_auc=f"{m['roc_auc']:.3f}",
        pr_auc=f"{m['pr_auc']:.3f}",
    )


LOCAL_CLIENT = ("local-dev", "local-dev-secret")  # configs/auth/local.yaml; local use only


def curl_examples(base_url: str, s: Settings, client: tuple[str, str] = LOCAL_CLIENT) -> list[str]:
    """Ready-to-paste shell lines for the served model: get a token, then call each route."""
    import json

    from churn_core.registry import open_registry
    from churn_core.tables import Tables

    with open_registry(s.registry, s.resolve, encryption=s.encryption) as registry:
        contract = registry.load_model(s.model_name, s.serve.alias).contract
    example = _example_features(Tables(s.dataset_lake), contract)
    customer_id = example.pop("__key")
    body = json.dumps({"customer_id": customer_id, "features": example})
    batch = json.dumps({"records": [json.loads(body)] * 2})
    auth = '-H "Authorization: Bearer $TOKEN"'
    json_body = "-H 'Content-Type: application/json'"
    lines = [
        f"TOKEN=$(curl -s -u {client[0]}:{client[1]} -d grant_type=client_credentials "
        f"{base_url}/v1/oauth/token | python3 -c 'import json,sys; "
        'print(json.load(sys.stdin)["access_token"])\')',
        f"curl -s -X POST {base_url}/v1/predict {auth} {json_body} -d '{body}'; echo",
        f"curl -s -X POST {base_url}/v1/batch_predict {auth} {json_body} -d '{batch}'; echo",
        f"curl -s {base_url}/v1/model_metrics {auth}; echo",
        f"curl -s {base_url}/v1/feature_importance {auth}; echo",
    ]
    if s.serve.online_store.redis_url or s.serve.online_store.postgres_url:
        by_id = json.dumps({"customer_id": customer_id})
        lines.append(f"curl -s -X POST {base_url}/v1/predict {auth} {json_body} -d '{by_id}'; echo")
    return lines


def _example_features(tables: Any, contract: Any) -> dict[str, Any]:
    """The first gold row's features, as a realistic example request body."""
    import math

    from churn_core.prediction_log import query_delta

    frame = query_delta({"gold": tables.gold_features}, "SELECT * FROM gold LIMIT 1").to_pylist()[0]
    example = {
        name: (None if isinstance(v, float) and math.isnan(v) else v)
        for name, v in frame.items()
        if name in contract.feature_names
    }
    example["__key"] = str(frame[contract.entity_key])
    return example


def serve_forever(s: Settings) -> None:
    """Deploy the Serve config, print curl commands, block until Ctrl-C (Ray must be running)."""
    from ray import serve

    from serve_apps.launcher import deploy

    try:
        with console.status("serve: deploying configs/serve"):
            started = time.perf_counter()
            url = deploy(s)
        _done("serve", time.perf_counter() - started, url=url)
        console.print(f"[bold]serving[/bold] on {url}  (OpenAPI: {url}/docs)  Ctrl-C to stop")
        for line in curl_examples(url, s):
            console.print(line, soft_wrap=True, highlight=False, markup=False)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping Serve and Ray ...")
    finally:
        serve.shutdown()


def _with_ray(action: Callable[[Settings], None]) -> None:
    """Run ``action`` with Ray started (or joined) from settings."""
    from churn_core.ray_runtime import ray_session
    from serve_apps.launcher import serve_environment

    s = settings()
    # Serve's ingress switches must be in place before Ray starts, whatever runs first.
    with ray_session(s.ray, serve_environment(s.serve, s.resolve(Path("var")))):
        action(s)


@app.command("generate")
@one_line_errors
def generate_command(
    customers: Annotated[int | None, typer.Option(help="Number of customers.")] = None,
) -> None:
    """Generate the sample business data set (customers, transactions, support pages)."""
    s = settings()
    if customers:
        s = s.model_copy(update={"sample": s.sample.model_copy(update={"customers": customers})})
    run_generate(s)


@app.command("ingest")
@one_line_errors
def ingest_command() -> None:
    """Sources -> bronze (new records, exactly once) -> silver + quarantine, reconciled."""
    run_spark_stages(settings(), ingest=True, features=False)


@app.command("publish-sample")
@one_line_errors
def publish_sample_command() -> None:
    """Load generated sample data into the PostgreSQL tables and Kafka topics in settings."""
    from churn_core.contract import load_contract
    from pipelines.sample_sources import publish_sample

    s = settings()
    started = time.perf_counter()
    published = publish_sample(s, load_contract(s.contract_path))
    if not published:
        console.print("nothing to publish: no source is configured as postgres or kafka")
    else:
        _done(
            "publish",
            time.perf_counter() - started,
            **{f"{item.source}->{item.target}": item.records for item in published},
        )


@app.command("features")
@one_line_errors
def features_command() -> None:
    """Silver -> gold per-customer features for every snapshot date."""
    run_spark_stages(settings(), ingest=False, features=True)


@app.command("train")
@one_line_errors
def train_command() -> None:
    """Train with Ray Train, evaluate, register, set aliases."""
    _with_ray(run_train)


@app.command("tune")
@one_line_errors
def tune_command() -> None:
    """Ray Tune search (configs/tune.yaml), then re-fit the best with Ray Train and register."""
    _with_ray(run_tune)


@app.command("serve")
@one_line_errors
def serve_command() -> None:
    """Serve the champion model over HTTP until Ctrl-C."""
    _with_ray(serve_forever)


@app.command("run")
@one_line_errors
def run_command(
    customers: Annotated[
        int | None, typer.Option(help="Sample size (sample data set only).")
    ] = None,
    serve: Annotated[bool, typer.Option(help="Serve the model at the end.")] = True,
    score: Annotated[
        bool, typer.Option(help="Score the latest snapshot and check drift after training.")
    ] = True,
) -> None:
    """Everything, end to end: generate, ingest, features, train, score, drift, serve."""
    from churn_core.ray_runtime import ray_session

    s = settings()
    started = time.perf_counter()
    from pipelines.sample_data import SAMPLE_DATASET

    if s.dataset == SAMPLE_DATASET:
        if customers:
            s = s.model_copy(
                update={"sample": s.sample.model_copy(update={"customers": customers})}
            )
        run_generate(s)
    run_spark_stages(s)
    _materialize_if_configured(s)
    from serve_apps.launcher import serve_environment

    with ray_session(s.ray, serve_environment(s.serve, s.resolve(Path("var")))):
        run_train(s)
        if score:
            run_score_and_drift(s)
        console.print(f"pipeline finished in {time.perf_counter() - started:.1f} s")
        if serve:
            serve_forever(s)


def run_score_and_drift(s: Settings) -> None:
    """Score the latest snapshot with the champion, then check those scores for drift.

    What the dashboard's customers and drift pages show (``churn score``, ``churn drift``).
    """
    from churn.score_cli import run_score
    from churn_core.registry import open_registry
    from churn_core.tables import Tables
    from monitoring.drift_job import run_drift

    run_score(s)
    with (
        console.status("drift: reference vs prediction log"),
        open_registry(s.registry, s.resolve, encryption=s.encryption) as registry,
    ):
        drift = run_drift(s, registry, Tables(s.dataset_lake))
    _done(
        "drift",
        drift.seconds,
        features=len(drift.features),
        drifted=",".join(drift.drifted) or "-",
        rows=drift.n_current,
    )


def _materialize_if_configured(s: Settings) -> None:
    """Fill the online store when one is configured; a store that is down only warns."""
    store = s.serve.online_store
    if not (store.redis_url or store.postgres_url):
        return
    from churn.materialize_cli import run_materialize
    from pipelines.online_store import OnlineStoreError

    try:
        run_materialize(s)
    except OnlineStoreError as exc:
        console.print(
            f"[yellow]online store not filled[/yellow] ({exc}); /predict by features "
            "works, by customer_id answers 503 until `churn materialize` succeeds"
        )


def _mount_materialize() -> None:
    from churn.materialize_cli import materialize_command

    app.command("materialize")(one_line_errors(materialize_command))


_mount_materialize()


def _mount_monitoring() -> None:
    from churn.accuracy_cli import accuracy_command
    from churn.drift_cli import drift_command

    app.command("drift")(one_line_errors(drift_command))
    app.command("accuracy")(one_line_errors(accuracy_command))


_mount_monitoring()


def _mount_operations() -> None:
    from churn.backup_cli import backup_app
    from churn.schedule_cli import app as schedule_app
    from churn.score_cli import score_command

    app.command("score")(one_line_errors(score_command))
    app.add_typer(schedule_app, name="schedule")
    app.add_typer(backup_app)


_mount_operations()


def _mount_models_app() -> None:
    from churn.auth_cli import auth_app
    from churn.encryption_cli import encryption_app
    from churn.models_cli import app as models_app

    app.add_typer(models_app, name="models")
    app.add_typer(auth_app, name="auth")
    app.add_typer(encryption_app, name="encryption")


_mount_models_app()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
