"""Hyperparameter search with Ray Tune over a driver function (not the deprecated ``Tuner(trainer)``).

Two ways a trial trains (``trial_mode`` in ``configs/tune.yaml``):

``local`` (default)
    The trial fits single-process ``xgboost.train`` on the train/valid splits, materialised once and
    shared through the object store, with ``nthread`` = the trial's CPUs. It reports to Tune every
    ``report_every`` rounds, so ASHA stops poor trials early. A trial costs about a second or two
    on thousands of rows; Tune runs ``cluster CPUs // cpus_per_trial`` of them at once.
``ray_train``
    The trial is a driver that builds and fits a Ray Train ``XGBoostTrainer`` (``fit_xgboost``),
    the Ray-recommended pattern for Train V2, for data too large for one process. Each Train run
    has a fixed start-up cost (15-35 s on these machines) and reports once at the end (per-round
    reports to Ray cost ~2 s each), so ASHA has nothing to act on: trials run to their end. The
    driver asks for no CPU; ``max_concurrent_trials`` = cluster CPUs // CPUs of one Train run,
    so no Train run waits for workers that another run holds.

Either way, the best configuration is returned: re-fit it with Ray Train
(``result.training_settings(settings.training)`` for ``fit_xgboost``) and register that model.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from churn_core.contract import FeatureContract
from churn_core.logging import get_logger
from churn_core.model import FeatureEncoder
from churn_core.settings import PACKAGE_CONFIG_DIR, Settings, TrainingSettings
from training.data import LABEL_COLUMN, GoldData, split_gold
from training.train import booster_params, fit_xgboost, positive_weight, unique_run_name

if TYPE_CHECKING:
    import ray.data
    from ray.tune.experiment import Trial
    from rich.console import Console

log = get_logger(__name__)

TUNE_CONFIG = PACKAGE_CONFIG_DIR / "tune.yaml"
METRIC_MODES = {"valid_auc": "max", "valid_logloss": "min"}
# A Ray Train driver does no work itself. It asks for no CPU: a token 0.01 CPU left 1.99 of 2 CPUs
# and two 1-CPU Train workers never started (Train gave up after 60 s). Tune refuses an empty
# request, so the driver asks for logical memory only.
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}


class SearchParam(BaseModel):
    """One dimension of the search space."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["uniform", "loguniform", "randint", "choice", "grid"]
    lower: float | None = None
    upper: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> SearchParam:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.type} needs values")
            return self
        if self.lower is None or self.upper is None or self.lower >= self.upper:
            raise ValueError(f"{self.type} needs lower < upper")
        if self.type == "loguniform" and self.lower <= 0:
            raise ValueError("loguniform needs lower > 0")
        return self

    def sampler(self) -> Any:
        """The Tune search-space object."""
        from ray import tune

        low, high = float(self.lower or 0), float(self.upper or 0)
        if self.type == "uniform":
            return tune.uniform(low, high)
        if self.type == "loguniform":
            return tune.loguniform(low, high)
        if self.type == "randint":
            return tune.randint(int(low), int(high))  # upper exclusive
        if self.type == "choice":
            return tune.choice(list(self.values or []))
        return tune.grid_search(list(self.values or []))


class AshaSettings(BaseModel):
    """Asynchronous successive halving, in boosting rounds (local trial mode only)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    grace_period: int = Field(100, ge=1)
    reduction_factor: float = Field(3, gt=1)


class TuneSettings(BaseModel):
    """Search space and how the search runs (``configs/tune.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    trial_mode: Literal["local", "ray_train"] = "local"
    metric: Literal["valid_auc", "valid_logloss"] = "valid_auc"
    num_samples: int = Field(24, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(900, gt=0)
    num_boost_round: int = Field(600, ge=1)
    early_stopping_rounds: int = Field(40, ge=1)
    report_every: int = Field(25, ge=1)
    reuse_actors: bool = True
    seed: int | None = 7  # search sampling; xgboost's own seed is training.seed, as in the re-fit
    asha: AshaSettings = Field(default_factory=AshaSettings)
    search_space: dict[str, SearchParam | float | int | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> TuneSettings:
        if not self.search_space:
            raise ValueError("search_space is empty")
        if self.trial_mode == "ray_train" and self.metric != "valid_auc":
            raise ValueError("trial_mode ray_train reports valid_auc only")
        return self

    @property
    def metric_mode(self) -> str:
        """``max`` or ``min``."""
        return METRIC_MODES[self.metric]

    def param_space(self) -> dict[str, Any]:
        """The Tune ``param_space``: samplers for ranges, constants as they are."""
        return {
            name: spec.sampler() if isinstance(spec, SearchParam) else spec
            for name, spec in self.search_space.items()
        }


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if value is None and isinstance(merged.get(key), dict):
            merged.pop(key)  # a search-space entry set to null is removed
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_tune_settings(
    dataset: str | None = None, env: str | None = None, path: Path | None = None
) -> TuneSettings:
    """``default``, then ``datasets.<dataset>``, then ``envs.<env>`` of ``configs/tune.yaml``."""
    source = path or TUNE_CONFIG
    loaded = yaml.safe_load(source.read_text()) or {}
    data = dict(loaded.get("default") or {})
    data = _merge(data, (loaded.get("datasets") or {}).get(dataset or "", {}) or {})
    data = _merge(data, (loaded.get("envs") or {}).get(env or "", {}) or {})
    try:
        return TuneSettings.model_validate(data)
    except ValueError as error:
        raise ValueError(f"invalid tune settings in {source}: {error}") from error


@dataclass(frozen=True)
class TrialPlan:
    """Resources of one trial and how many run at once, sized to the cluster."""

    mode: str
    cluster_cpus: float
    trial_resources: dict[str, float]
    cpus_per_trial: float  # what one trial occupies, Train workers included
    max_concurrent: int
    nthread: int


def plan_trials(tune: TuneSettings, training: TrainingSettings, cluster_cpus: float) -> TrialPlan:
    """Per-trial resources and the concurrency the cluster holds without starving anyone.

    ``local``: a trial takes ``cpus_per_trial`` CPUs and xgboost runs that many threads.
    ``ray_train``: the driver takes no CPU and its Train run ``num_workers x cpus_per_worker``;
    Train runs start only when all their workers fit, so concurrency is bounded by those CPUs.
    """
    if tune.trial_mode == "local":
        occupied = tune.cpus_per_trial
        resources = {"cpu": tune.cpus_per_trial}
        nthread = max(1, int(tune.cpus_per_trial))
    else:
        occupied = training.num_workers * training.cpus_per_worker
        resources = dict(DRIVER_RESOURCES)
        nthread = max(1, int(training.cpus_per_worker))
    fits = math.floor((cluster_cpus + 1e-9) / occupied)
    if fits < 1:
        raise ValueError(
            f"one {tune.trial_mode} trial needs {occupied:g} CPUs, the cluster has {cluster_cpus:g}"
        )
    concurrent = min(fits, tune.max_concurrent_trials or fits, max(1, tune.num_samples))
    return TrialPlan(tune.trial_mode, cluster_cpus, resources, occupied, concurrent, nthread)


# ------------------------------------------------------------------------------------------------
# Trial functions (run inside Tune's trial actors)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LocalData:
    contract: FeatureContract
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    base_params: dict[str, Any]
    metric: str
    num_boost_round: int
    early_stopping_rounds: int
    report_every: int


def _eval_metrics(history: dict[str, dict[str, list[float]]], metric: str) -> dict[str, Any]:
    """Metrics at the round early stopping keeps (best of the tuned metric so far)."""
    valid = history["valid"]
    scores = np.asarray(valid["auc" if metric == "valid_auc" else "logloss"])
    best = int(np.argmax(scores) if METRIC_MODES[metric] == "max" else np.argmin(scores))
    return {
        "valid_auc": float(valid["auc"][best]),
        "valid_logloss": float(valid["logloss"][best]),
        "best_iteration": best,
        "rounds": len(scores),
    }


def local_trial(config: dict[str, Any], data: _LocalData) -> None:
    """One trial: single-process xgboost, a report to Tune every ``report_every`` rounds."""
    import xgboost as xgb
    from ray import tune

    started_at = time.time()

    def report(history: Any, completed: bool) -> None:
        # Wall-clock start and report times from inside the trial (Tune's own timestamp field is
        # whole seconds), so concurrency can be checked from the trials' side too.
        metrics = _eval_metrics(history, data.metric)
        tune.report(
            {
                **metrics,
                "completed": completed,
                "started_at": started_at,
                "reported_at": time.time(),
            }
        )

    class ReportEvery(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            if (epoch + 1) % data.report_every == 0:
                report(evals_log, completed=False)
            return False

    encoder = FeatureEncoder(data.contract)
    train = encoder.dmatrix(data.x_train, data.y_train)
    valid = encoder.dmatrix(data.x_valid, data.y_valid)
    history: dict[str, Any] = {}
    xgb.train(
        {**data.base_params, **config},
        train,
        num_boost_round=data.num_boost_round,
        evals=[(valid, "valid")],
        early_stopping_rounds=data.early_stopping_rounds,
        evals_result=history,
        callbacks=[ReportEvery()],
        verbose_eval=False,
    )
    report(history, completed=True)


@dataclass(frozen=True)
class _RayTrainData:
    contract: FeatureContract
    datasets: dict[str, Any]
    training: TrainingSettings
    storage_path: Path
    scale_pos_weight: float | None


def ray_train_trial(config: dict[str, Any], data: _RayTrainData) -> None:
    """One trial as a Train V2 driver: build and fit an ``XGBoostTrainer``, report once."""
    from ray import tune

    started_at = time.time()
    training = data.training.model_copy(update={"params": {**data.training.params, **config}})
    fit = fit_xgboost(
        data.datasets,
        data.contract,
        training,
        data.storage_path,
        name=unique_run_name("churn-tune-trial"),
        scale_pos_weight=data.scale_pos_weight,
    )
    tune.report(
        {
            "valid_auc": fit.valid_auc,
            "best_iteration": fit.best_iteration,
            "rounds": fit.best_iteration + 1,
            "train_seconds": fit.seconds,
            "completed": True,
            "started_at": started_at,
            "reported_at": time.time(),
        }
    )


# ------------------------------------------------------------------------------------------------
# Driver side
# ------------------------------------------------------------------------------------------------


def _ledger_class() -> type:
    """A Tune callback that records trial starts/ends and every trial (defined lazily: Ray import)."""
    from ray.tune import Callback

    class Ledger(Callback):
        def __init__(self) -> None:
            self.running: set[str] = set()
            self.peak = 0
            self.started: dict[str, float] = {}
            self.ended: dict[str, float] = {}
            self.trials: list[Trial] = []

        def on_trial_start(
            self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
        ) -> None:
            self.running.add(trial.trial_id)
            self.started[trial.trial_id] = time.time()
            self.peak = max(self.peak, len(self.running))

        def _end(self, trial: Trial) -> None:
            self.running.discard(trial.trial_id)
            self.ended.setdefault(trial.trial_id, time.time())

        def on_trial_complete(
            self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
        ) -> None:
            self._end(trial)

        def on_trial_error(
            self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
        ) -> None:
            self._end(trial)

        def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
            self.trials = list(trials)

    return Ledger


def _asha_class() -> type:
    """ASHA that remembers which trials it stopped (so the table can say why a trial ended)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.stopped: set[str] = set()

        def on_trial_result(
            self, tune_controller: Any, trial: Trial, result: dict[str, Any]
        ) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            # ASHA also stops a trial on reaching max_t: that one ran to its end.
            ran_out = result.get(self._time_attr, 0) >= self._max_t
            if decision == TrialScheduler.STOP and not result.get("completed") and not ran_out:
                self.stopped.add(trial.trial_id)
            return str(decision)

    return RecordingASHA


@dataclass(frozen=True)
class TuneResult:
    """The outcome of one search: the best configuration and one row per trial."""

    name: str
    path: Path
    mode: str
    metric: str
    metric_mode: str
    best_params: dict[str, Any]
    best_metric: float
    best_rounds: int
    best_trial_id: str
    trials: pd.DataFrame
    plan: TrialPlan
    peak_concurrent: int
    seconds: float
    tune: TuneSettings
    files: dict[str, Path] = field(default_factory=dict)

    def training_settings(self, base: TrainingSettings) -> TrainingSettings:
        """``base`` with the best parameters and the search's round budget (for ``fit_xgboost``)."""
        return base.model_copy(
            update={
                "params": {**base.params, **self.best_params},
                "num_boost_round": max(base.num_boost_round, self.tune.num_boost_round),
                "early_stopping_rounds": self.tune.early_stopping_rounds,
            }
        )


def _frames(
    data: Mapping[str, Any] | GoldData, contract: FeatureContract, settings: Settings
) -> dict[str, Any]:
    if isinstance(data, GoldData):
        return dict(split_gold(data, contract, settings.training))
    missing = {"train", "valid"} - set(data)
    if missing:
        raise ValueError(f"tuning needs train and valid splits, missing {sorted(missing)}")
    return {name: data[name] for name in ("train", "valid")}


def _to_pandas(part: Any) -> pd.DataFrame:
    return part if isinstance(part, pd.DataFrame) else part.to_pandas()


def _to_dataset(part: Any) -> ray.data.Dataset:
    import ray.data

    dataset: ray.data.Dataset = (
        ray.data.from_pandas(part).materialize() if isinstance(part, pd.DataFrame) else part
    )
    return dataset


def _arrays(frame: pd.DataFrame, contract: FeatureContract) -> tuple[np.ndarray, np.ndarray]:
    features = frame[contract.feature_names].to_numpy(dtype=np.float32, na_value=np.nan)
    return features, frame[LABEL_COLUMN].to_numpy(dtype=np.float32)


def _status(trial: Trial, asha_stopped: set[str], max_rounds: int) -> str:
    result = trial.last_result or {}
    if trial.status == "ERROR":
        return "error"
    if result.get("completed") or result.get("rounds", 0) >= max_rounds:
        return "completed"
    if trial.trial_id in asha_stopped:
        return "stopped by ASHA"
    if "rounds" in result:
        return "stopped by time budget"
    return "not started"


def _trial_table(
    trials: list[Trial],
    ledger: Any,
    asha_stopped: set[str],
    tune: TuneSettings,
) -> pd.DataFrame:
    rows = []
    for trial in sorted(trials, key=lambda t: t.trial_id):
        result = trial.last_result or {}
        started, ended = ledger.started.get(trial.trial_id), ledger.ended.get(trial.trial_id)
        rows.append(
            {
                "trial_id": trial.trial_id,
                "status": _status(trial, asha_stopped, tune.num_boost_round),
                tune.metric: result.get(tune.metric, math.nan),
                "best_iteration": result.get("best_iteration", -1),
                "rounds": result.get("rounds", 0),
                "reports": result.get("training_iteration", 0),
                "seconds": (ended - started) if started and ended else math.nan,
                # Tune's view (callbacks in the driver) and the trial's own clock.
                "started_at": started or math.nan,
                "ended_at": ended or math.nan,
                "trial_started_at": result.get("started_at", math.nan),
                "trial_reported_at": result.get("reported_at", math.nan),
                **{f"param.{k}": v for k, v in trial.config.items()},
            }
        )
    return pd.DataFrame(rows)


PARAM_LABELS = {
    "max_depth": "depth",
    "min_child_weight": "mcw",
    "subsample": "subs",
    "colsample_bytree": "colsmp",
}
STATUS_LABELS = {
    "completed": "done",
    "stopped by ASHA": "ASHA stop",
    "stopped by time budget": "budget stop",
    "not started": "not run",
    "error": "ERROR",
}


def print_trials(result: TuneResult, console: Console | None = None, limit: int = 50) -> None:
    """The trial table, best first, with rich (the best row in bold)."""
    from rich.console import Console
    from rich.table import Table

    ascending = result.metric_mode == "min"
    frame = result.trials.sort_values(result.metric, ascending=ascending, na_position="last")
    table = Table(
        title=(
            f"{result.name}: {len(frame)} trials ({result.mode}), best {result.metric} "
            f"{result.best_metric:.4f}; {result.plan.max_concurrent} at once x "
            f"{result.plan.cpus_per_trial:g} CPU; {result.seconds:.1f} s"
        ),
        title_justify="left",
    )
    params = [c for c in frame.columns if c.startswith("param.")]
    table.add_column("trial")
    table.add_column("status")
    for column in [result.metric, "rounds", "s"]:
        table.add_column(column, justify="right")
    for column in params:
        short = column.removeprefix("param.")
        table.add_column(PARAM_LABELS.get(short, short), justify="right")
    for _, row in frame.head(limit).iterrows():
        cells = [
            str(row["trial_id"]).rsplit("_", 1)[-1],
            STATUS_LABELS.get(str(row["status"]), str(row["status"])),
            f"{row[result.metric]:.4f}",
            str(int(row["rounds"])),
            f"{row['seconds']:.1f}",
        ]
        cells += [f"{row[p]:.3g}" if isinstance(row[p], float) else str(row[p]) for p in params]
        bold = row["trial_id"] == result.best_trial_id
        table.add_row(*cells, style="bold" if bold else None)
    (console or Console(width=max(Console().width, 120))).print(table)


def _write_results(result: TuneResult) -> dict[str, Path]:
    result.path.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = result.path / "trials.csv", result.path / "trials.json"
    result.trials.to_csv(csv_path, index=False)
    summary = {
        "name": result.name,
        "mode": result.mode,
        "metric": result.metric,
        "metric_mode": result.metric_mode,
        "best_trial_id": result.best_trial_id,
        "best_metric": result.best_metric,
        "best_rounds": result.best_rounds,
        "best_params": result.best_params,
        "plan": result.plan.__dict__,
        "peak_concurrent": result.peak_concurrent,
        "seconds": result.seconds,
        "settings": result.tune.model_dump(mode="json"),
        "trials": json.loads(result.trials.to_json(orient="records")),
    }
    json_path.write_text(json.dumps(summary, indent=2, default=str))
    return {"csv": csv_path, "json": json_path}


def _fit_keeping_signal_handlers(tuner: Any) -> Any:
    """``tuner.fit()``, then put back the SIGINT/SIGUSR1 handlers Tune replaces and never restores.

    Tune restores the previous handler only after catching a signal; left in place, its handler
    would swallow a later Ctrl-C (as Ray Train's did, see ``training.train``).
    """
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()
    signals = [signal.SIGINT, *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])]
    saved = {number: signal.getsignal(number) for number in signals}
    try:
        return tuner.fit()
    finally:
        for number, handler in saved.items():
            if handler is not None:
                signal.signal(number, handler)


def tune_model(
    settings: Settings,
    contract: FeatureContract,
    data: Mapping[str, Any] | GoldData,
    tune_settings: TuneSettings | None = None,
    *,
    name: str | None = None,
    console: Console | None = None,
    show: bool = True,
) -> TuneResult:
    """Search hyperparameters on ``data['train']`` (fit) and ``data['valid']`` (score).

    ``data``: the encoded splits of ``split_gold`` (Ray Datasets) or pandas frames with the
    contract's encoded feature columns and ``label``; or the gold table itself (split here). The
    test split is never read. Ray must be running. The trial table is printed (``show``) and
    written to ``trials.csv`` / ``trials.json`` in the experiment folder under
    ``<training.storage_path>/tune/<name>``.
    """
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    started = time.perf_counter()
    ts = tune_settings or load_tune_settings(settings.dataset, settings.env)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
    plan = plan_trials(ts, settings.training, cluster_cpus)
    splits = _frames(data, contract, settings)
    name = name or unique_run_name("churn-tune")
    storage = settings.resolve(settings.training.storage_path) / "tune"

    trainable: Any
    scheduler = None
    if ts.trial_mode == "local":
        x_train, y_train = _arrays(_to_pandas(splits["train"]), contract)
        x_valid, y_valid = _arrays(_to_pandas(splits["valid"]), contract)
        eval_metric = ["logloss", "auc"] if ts.metric == "valid_auc" else ["auc", "logloss"]
        # Training's own parameters (seed, fixed params, class weight), then the trial's config:
        # a trial fits what the re-fit with these parameters will fit.
        weight = positive_weight(settings.training, int(y_train.sum()), len(y_train))
        base = booster_params(settings.training, plan.nthread, scale_pos_weight=weight)
        base["eval_metric"] = eval_metric
        payload: Any = _LocalData(
            contract,
            x_train,
            y_train,
            x_valid,
            y_valid,
            base,
            ts.metric,
            ts.num_boost_round,
            ts.early_stopping_rounds,
            ts.report_every,
        )
        trainable = tune.with_parameters(local_trial, data=payload)
        if ts.asha.enabled:
            scheduler = _asha_class()(
                time_attr="rounds",
                max_t=ts.num_boost_round,
                grace_period=min(ts.asha.grace_period, ts.num_boost_round),
                reduction_factor=ts.asha.reduction_factor,
            )
    else:
        training = settings.training.model_copy(
            update={
                "num_boost_round": ts.num_boost_round,
                "early_stopping_rounds": ts.early_stopping_rounds,
            }
        )
        datasets = {k: _to_dataset(v) for k, v in splits.items()}
        positives = int(datasets["train"].sum(LABEL_COLUMN) or 0)  # type: ignore[arg-type]
        weight = positive_weight(training, positives, int(datasets["train"].count()))
        payload = _RayTrainData(contract, datasets, training, storage / name / "train_runs", weight)
        trainable = tune.with_parameters(ray_train_trial, data=payload)

    ledger = _ledger_class()()
    tuner = tune.Tuner(
        tune.with_resources(trainable, plan.trial_resources),
        param_space=ts.param_space(),
        tune_config=tune.TuneConfig(
            metric=ts.metric,
            mode=ts.metric_mode,
            scheduler=scheduler,
            # The concurrency limit goes to the generator itself: TuneConfig's max_concurrent_trials
            # is ignored (with a warning) when search_alg is a BasicVariantGenerator.
            search_alg=BasicVariantGenerator(
                random_state=ts.seed, max_concurrent=plan.max_concurrent
            ),
            num_samples=ts.num_samples,
            time_budget_s=ts.time_budget_s,
            reuse_actors=ts.reuse_actors and ts.trial_mode == "local",
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), callbacks=[ledger], verbose=0
        ),
    )
    log.info(
        "tune start",
        name=name,
        mode=ts.trial_mode,
        samples=ts.num_samples,
        concurrent=plan.max_concurrent,
        cpus_per_trial=plan.cpus_per_trial,
        cluster_cpus=plan.cluster_cpus,
    )
    # Tune prints its experiment banner whatever the verbosity; the trial table replaces it.
    with contextlib.redirect_stdout(io.StringIO()):
        _fit_keeping_signal_handlers(tuner)
    asha_stopped: set[str] = getattr(scheduler, "stopped", set())
    table = _trial_table(ledger.trials, ledger, asha_stopped, ts)
    failed = [t for t in ledger.trials if t.status == "ERROR"]
    for trial in failed:
        log.warning("tune trial failed", trial=trial.trial_id, error=str(trial.error_file))
    scored = table.dropna(subset=[ts.metric])
    if scored.empty:
        raise RuntimeError(f"tuning {name}: no trial reported {ts.metric}")
    best = scored.loc[
        scored[ts.metric].idxmax() if ts.metric_mode == "max" else scored[ts.metric].idxmin()
    ]
    configs = {trial.trial_id: trial.config for trial in ledger.trials}
    best_params = {k: _plain(v) for k, v in configs[str(best["trial_id"])].items()}
    result = TuneResult(
        name=name,
        path=storage / name,
        mode=ts.trial_mode,
        metric=ts.metric,
        metric_mode=ts.metric_mode,
        best_params=best_params,
        best_metric=float(best[ts.metric]),
        best_rounds=int(best["best_iteration"]) + 1,
        best_trial_id=str(best["trial_id"]),
        trials=table,
        plan=plan,
        peak_concurrent=ledger.peak,
        seconds=time.perf_counter() - started,
        tune=ts,
    )
    result.files.update(_write_results(result))
    if show:
        print_trials(result, console)
    log.info(
        "tune done",
        name=name,
        best_metric=round(result.best_metric, 4),
        best_params=best_params,
        trials=len(table),
        seconds=round(result.seconds, 1),
    )
    return result


def _plain(value: Any) -> Any:
    """numpy scalars to Python (for JSON, YAML and xgboost params)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
