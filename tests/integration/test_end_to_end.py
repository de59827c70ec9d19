"""The whole path on a tiny sample business: files -> Sail/Delta -> Ray Train -> registry -> Serve.

Expected values are recomputed here from the raw files with pandas, independently of Spark.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from tests.conftest import PipelineRun

pytestmark = pytest.mark.integration


def delta_frame(path: Path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pandas()


def raw_customers(run: PipelineRun) -> pd.DataFrame:
    return pd.read_parquet(run.settings.resolve(run.settings.raw_dir) / "customers")


def raw_transactions(run: PipelineRun) -> pd.DataFrame:
    folder = run.settings.resolve(run.settings.raw_dir) / "transactions"
    lines = [
        json.loads(x) for f in sorted(folder.glob("*.jsonl")) for x in f.read_text().splitlines()
    ]
    return pd.DataFrame(lines)


def raw_support(run: PipelineRun) -> pd.DataFrame:
    folder = run.settings.resolve(run.settings.raw_dir) / "support"
    pages = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    return pd.DataFrame([r for page in pages for r in page["records"]])


def test_every_raw_record_lands_in_bronze_and_reconciles_in_silver(saas_run: PipelineRun) -> None:
    tables = saas_run.tables
    customers, transactions, support = (
        raw_customers(saas_run),
        raw_transactions(saas_run),
        raw_support(saas_run),
    )
    assert len(delta_frame(tables.bronze("customers"))) == len(customers)
    assert len(delta_frame(tables.bronze("transactions"))) == len(transactions)
    assert len(delta_frame(tables.bronze("support"))) == len(support)
    # The stream is at-least-once: silver keeps exactly one row per event id.
    silver_tx = delta_frame(tables.silver("transactions"))
    assert len(silver_tx) == transactions["event_id"].nunique() < len(transactions)
    assert silver_tx["event_id"].is_unique
    assert len(delta_frame(tables.silver("customers"))) == customers["customer_id"].nunique()
    assert len(delta_frame(tables.silver("support"))) == support["record_id"].nunique()
    # The generator writes clean values: only the stream's re-deliveries are quarantined.
    quarantined_tx = delta_frame(tables.quarantine("transactions"))
    assert len(quarantined_tx) == len(transactions) - transactions["event_id"].nunique()
    assert set(quarantined_tx["reason_code"]) == {"duplicate_key"}
    for source in ("customers", "support"):
        assert len(delta_frame(tables.quarantine(source))) == 0


def test_gold_has_one_row_per_eligible_customer_and_snapshot(saas_run: PipelineRun) -> None:
    snapshot = saas_run.contract.snapshot
    assert snapshot is not None
    customers = raw_customers(saas_run)
    gold = delta_frame(saas_run.tables.gold_features)
    for date in snapshot.dates:
        t = pd.Timestamp(date)
        active = customers[
            (pd.to_datetime(customers["signup_date"]) < t)
            & (customers["cancelled_at"].isna() | (customers["cancelled_at"] >= t))
        ]
        churned = active["cancelled_at"] < t + timedelta(days=snapshot.horizon_days)
        rows = gold[pd.to_datetime(gold["snapshot_date"]) == t]
        assert len(rows) == len(active), date
        assert int(rows["churned"].sum()) == int(churned.sum()), date
        assert set(rows["customer_id"]) == set(active["customer_id"])


def test_gold_features_use_only_events_before_the_snapshot(saas_run: PipelineRun) -> None:
    """Recompute three features with pandas for one snapshot and compare every customer."""
    snapshot = saas_run.contract.snapshot
    assert snapshot is not None
    t = pd.Timestamp(snapshot.dates[-1])
    tx = raw_transactions(saas_run).drop_duplicates("event_id")
    tx["event_time"] = pd.to_datetime(tx["event_time"])
    before = tx[tx["event_time"] < t]
    failed = before[
        (before["event_type"] == "payment_failed")
        & (before["event_time"] >= t - timedelta(days=90))
    ]
    last_payment = (
        before[before["event_type"] == "payment"].groupby("customer_id")["event_time"].max()
    )
    support = raw_support(saas_run)
    support["record_time"] = pd.to_datetime(support["record_time"])
    usage = support[
        (support["record_type"] == "usage")
        & (support["record_time"] < t)
        & (support["record_time"] >= t - timedelta(days=92))
    ]
    gold = delta_frame(saas_run.tables.gold_features)
    gold = gold[pd.to_datetime(gold["snapshot_date"]) == t].set_index("customer_id")
    expected_failed = failed.groupby("customer_id").size().reindex(gold.index, fill_value=0)
    expected_usage = usage.groupby("customer_id")["value"].sum().reindex(gold.index, fill_value=0.0)
    expected_recency = (t.normalize() - last_payment.dt.normalize()).dt.days.reindex(gold.index)
    np.testing.assert_array_equal(
        gold["failed_payments_90d"].to_numpy(), expected_failed.to_numpy()
    )
    np.testing.assert_allclose(gold["usage_90d"].to_numpy(), expected_usage.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(
        gold["days_since_last_payment"].to_numpy(), expected_recency.to_numpy()
    )


def test_model_is_registered_as_champion_with_real_skill(saas_run: PipelineRun) -> None:
    name = saas_run.settings.model_name
    champion = saas_run.registry.resolve(name, "champion")
    assert champion.version == 1
    assert champion.metrics["roc_auc"] > 0.7  # chance is 0.5
    assert (
        champion.lineage["gold_delta_version"]
        == DeltaTable(str(saas_run.tables.gold_features)).version()
    )
    # The model was fitted on the earlier snapshots and tested on the last one only.
    gold = delta_frame(saas_run.tables.gold_features)
    last = pd.to_datetime(gold["snapshot_date"]).max()
    assert champion.lineage["rows"]["test"] == int(
        (pd.to_datetime(gold["snapshot_date"]) == last).sum()
    )


def test_training_gives_back_the_interrupt_handler(saas_run: PipelineRun) -> None:
    """Ray Train's fit() swaps in its own SIGINT handler; left in place it swallowed Ctrl-C later."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    assert "sigint_handler" not in getattr(handler, "__qualname__", "")


def test_the_generators_churn_drivers_lead_the_feature_importance(saas_run: PipelineRun) -> None:
    """pipelines/sample_data.py plants contract type, price above the plan's, autopay and payment
    method, and behaviour before leaving (usage falling, tickets, failed payments); age and region
    are pure noise."""
    import json

    name = saas_run.settings.model_name
    report = json.loads(saas_run.registry.read_file(name, "champion", "report.json"))
    shap = report["importance"]["mean_abs_shap"]
    ranked = sorted(shap, key=shap.get, reverse=True)
    drivers = {
        "contract_type",
        "tenure_days",
        "monthly_fee",
        "autopay",
        "payment_method",
        "usage_trend",
        "usage_30d",
        "usage_90d",
        "severe_tickets_90d",
        "tickets_90d",
        "failed_payments_90d",
        "days_since_last_payment",
    }
    # Two Ray Train workers are not bit-reproducible run to run (shard order), and on this tiny
    # sample (1,500 customers) the trees fit some noise: ranks among close features move (age
    # once reached fifth, at 0.19 against 0.55 for the top driver). Shares do not move much.
    total = sum(shap.values())
    assert sum(shap[f] for f in drivers) / total >= 0.6, shap
    assert "contract_type" in ranked[:3], ranked
    assert set(ranked[:3]) <= drivers, ranked[:3]
    for noise in ("age", "region"):
        assert shap[noise] < 0.5 * shap[ranked[0]], (noise, shap)
    assert "region" in ranked[len(ranked) // 2 :], ranked


def test_the_report_of_the_champion_is_complete(saas_run: PipelineRun) -> None:
    import json

    name = saas_run.settings.model_name
    champion = saas_run.registry.resolve(name, "champion")
    report = json.loads(saas_run.registry.read_file(name, "champion", "report.json"))
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift"):
        assert report["metrics"][metric] == pytest.approx(champion.metrics[metric])
    assert len(report["evaluation"]["calibration"]) == 10
    assert report["evaluation"]["at_threshold"]["threshold"] == champion.params["threshold"]
    assert any(key.startswith("contract_type=") for key in report["segments"])
    for plot in ("roc.png", "pr.png", "calibration.png", "lift.png", "importance.png"):
        assert saas_run.registry.read_file(name, "champion", plot)[:8] == b"\x89PNG\r\n\x1a\n"
