"""Ray Tune over a driver function: trials, ASHA, the best configuration, results files, concurrency."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churn_core.contract import FeatureContract, load_contract
from churn_core.settings import Settings, TrainingSettings
from tests.conftest import REPO_ROOT, make_settings
from training.tune import (
    DRIVER_RESOURCES,
    TuneSettings,
    load_tune_settings,
    plan_trials,
    tune_model,
)

TELCO_CONTRACT = REPO_ROOT / "configs" / "contracts" / "telco.yaml"


def tiny_gold(contract: FeatureContract, rows: int = 1200, seed: int = 3) -> pd.DataFrame:
    """A gold frame matching the contract (raw values, not codes) with a learnable label."""
    rng = np.random.default_rng(seed)
    gold: dict[str, object] = {contract.entity_key: [f"c{i:05d}" for i in range(rows)]}
    for spec in contract.features:
        if spec.type == "categorical":
            gold[spec.name] = rng.choice(spec.categories or [], size=rows)
        elif spec.type == "boolean":
            gold[spec.name] = rng.random(rows) < 0.2
        else:
            low, high = spec.range or (0.0, 100.0)
            gold[spec.name] = rng.uniform(low, min(high, low + 120), size=rows)
    frame = pd.DataFrame(gold)
    logit = (
        1.5 * (frame["Contract"] == "Month-to-month")
        - 0.03 * frame["tenure"]
        + 0.8 * (frame["InternetService"] == "Fiber optic")
        + rng.normal(0, 1, rows)
    )
    frame[contract.label.name] = (logit > 0.3).astype("int32")
    return frame


def gold_data(frame: pd.DataFrame) -> object:
    """The gold table as ``read_gold`` returns it, from memory instead of Delta."""
    import ray.data

    from training.data import GoldData

    return GoldData(ray.data.from_pandas(frame), delta_version=0, path=Path("memory://tiny-gold"))


def telco_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, dataset="telco")


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def trial_intervals(trials: pd.DataFrame) -> list[tuple[float, float]]:
    """Per trial, [start, last report] as the trial's own process measured them."""
    return list(zip(trials["trial_started_at"], trials["trial_reported_at"], strict=True))


def tune_intervals(trials: pd.DataFrame) -> list[tuple[float, float]]:
    """Per trial, [start, end] as Tune's trial callbacks in the driver saw them."""
    return list(zip(trials["started_at"], trials["ended_at"], strict=True))


# ------------------------------------------------------------------------------------------------
# Settings and sizing (no Ray)
# ------------------------------------------------------------------------------------------------


def test_tune_settings_layer_default_dataset_and_env() -> None:
    default = load_tune_settings()
    telco = load_tune_settings("telco")
    test = load_tune_settings("telco", "test")
    assert default.trial_mode == "local" and default.metric == "valid_auc"
    assert {"max_depth", "eta", "min_child_weight", "subsample"} <= set(default.search_space)
    # The telco layer narrows ranges but keeps the other dimensions of the default space.
    assert telco.search_space["max_depth"] != default.search_space["max_depth"]
    assert telco.search_space["subsample"] == default.search_space["subsample"]
    assert test.num_samples < default.num_samples and test.num_boost_round < default.num_boost_round
    assert test.search_space == telco.search_space


def test_a_null_search_space_entry_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "tune.yaml"
    path.write_text(
        "default:\n  search_space:\n    eta: {type: loguniform, lower: 0.01, upper: 0.1}\n"
        "    alpha: {type: uniform, lower: 0, upper: 1}\n"
        "datasets:\n  d:\n    search_space: {alpha: null}\n"
    )
    assert set(load_tune_settings("d", path=path).search_space) == {"eta"}
    with pytest.raises(ValueError, match="lower < upper"):
        TuneSettings(search_space={"eta": {"type": "uniform", "lower": 1, "upper": 0}})


def test_concurrency_is_sized_to_the_cluster() -> None:
    space = {"eta": 0.1}
    training = TrainingSettings(num_workers=2, cpus_per_worker=1)
    local = TuneSettings(search_space=space, cpus_per_trial=1, num_samples=24)
    assert plan_trials(local, training, 2).max_concurrent == 2
    assert plan_trials(local, training, 16).max_concurrent == 16
    two = local.model_copy(update={"cpus_per_trial": 2})
    plan = plan_trials(two, training, 2)
    assert (plan.max_concurrent, plan.nthread) == (1, 2)
    capped = local.model_copy(update={"max_concurrent_trials": 1})
    assert plan_trials(capped, training, 8).max_concurrent == 1
    assert plan_trials(local.model_copy(update={"num_samples": 3}), training, 8).max_concurrent == 3
    # A Train-run trial occupies its workers' CPUs; the driver itself asks for none (a token CPU
    # left 1.99 of 2 CPUs and the 2 x 1-CPU worker group never started).
    ray_train = local.model_copy(update={"trial_mode": "ray_train"})
    plan = plan_trials(ray_train, training, 2)
    assert plan.max_concurrent == 1 and plan.cpus_per_trial == 2
    assert plan.trial_resources == DRIVER_RESOURCES and plan.trial_resources["cpu"] == 0
    assert plan_trials(ray_train, training, 8).max_concurrent == 4
    with pytest.raises(ValueError, match="needs 3 CPUs"):
        plan_trials(local.model_copy(update={"cpus_per_trial": 3}), training, 2)


# ------------------------------------------------------------------------------------------------
# Real Tune runs on the session's 2-CPU Ray cluster
# ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_tune_runs_trials_and_returns_the_best_reported_config(
    ray_cluster: None, tmp_path: Path
) -> None:
    from ray.tune import ExperimentAnalysis

    settings = telco_settings(tmp_path)
    contract = load_contract(TELCO_CONTRACT)
    tune = load_tune_settings("telco", "test").model_copy(update={"num_samples": 6})
    handler = signal.getsignal(signal.SIGINT)
    result = tune_model(settings, contract, gold_data(tiny_gold(contract)), tune)
    # Tune's own Ctrl-C handler is not left behind (it would swallow a later Ctrl-C).
    assert signal.getsignal(signal.SIGINT) is handler

    trials = result.trials
    assert len(trials) == 6 and trials["trial_id"].is_unique
    # Every trial ran and ended by finishing (its own early stopping or max rounds) or by ASHA.
    assert set(trials["status"]) <= {"completed", "stopped by ASHA"}
    assert (trials["rounds"] > 0).all() and trials["valid_auc"].between(0.6, 1).all()
    stopped = trials[trials["status"] == "stopped by ASHA"]
    assert (stopped["rounds"] < tune.num_boost_round).all()
    # Reports went every report_every rounds, not every round.
    assert (trials["reports"] <= trials["rounds"] // tune.report_every + 1).all()

    # The best configuration is the one with the best reported metric, by our table and by Tune.
    best_row = trials.loc[trials["valid_auc"].idxmax()]
    assert result.best_trial_id == best_row["trial_id"]
    assert result.best_metric == pytest.approx(best_row["valid_auc"])
    analysis = ExperimentAnalysis(str(result.path), default_metric="valid_auc", default_mode="max")
    assert analysis.get_best_config(scope="all") == result.best_params
    assert set(result.best_params) == set(tune.search_space)
    refit = result.training_settings(settings.training)
    assert refit.params["max_depth"] == result.best_params["max_depth"]

    # Results files: one row per trial.
    csv = pd.read_csv(result.files["csv"])
    assert len(csv) == 6 and set(csv["trial_id"]) == set(trials["trial_id"])
    summary = json.loads(result.files["json"].read_text())
    assert summary["best_params"] == result.best_params and len(summary["trials"]) == 6
    assert (
        result.files["csv"].parent
        == settings.resolve(settings.training.storage_path) / "tune" / result.name
    )

    # Concurrency never exceeded the CPU budget (2 CPUs, 1 CPU a trial): by Tune's callbacks in the
    # driver and by the trials' own clocks (read back from the results file).
    assert result.plan.cluster_cpus == 2
    assert result.plan.max_concurrent * result.plan.cpus_per_trial <= result.plan.cluster_cpus
    assert 1 <= result.peak_concurrent <= result.plan.max_concurrent
    assert max_overlap(tune_intervals(csv)) <= result.plan.max_concurrent
    assert max_overlap(trial_intervals(csv)) <= result.plan.max_concurrent


@pytest.mark.integration
def test_ray_train_trials_run_one_train_run_at_a_time_on_two_cpus(
    ray_cluster: None, tmp_path: Path
) -> None:
    """Each trial fits a Ray Train XGBoostTrainer (2 workers x 1 CPU): one at a time, no deadlock."""
    settings = telco_settings(tmp_path)
    contract = load_contract(TELCO_CONTRACT)
    tune = load_tune_settings("telco", "test").model_copy(
        update={"trial_mode": "ray_train", "num_samples": 2, "num_boost_round": 20}
    )
    result = tune_model(settings, contract, gold_data(tiny_gold(contract, rows=600)), tune)
    assert result.plan.max_concurrent == 1 and result.peak_concurrent == 1
    assert list(result.trials["status"]) == ["completed", "completed"]
    assert max_overlap(trial_intervals(result.trials)) == 1
    assert max_overlap(tune_intervals(result.trials)) == 1
    best = result.trials.loc[result.trials["valid_auc"].idxmax()]
    assert result.best_trial_id == best["trial_id"]
