"""Drift statistics: real shifts alarm, noise and tiny shifts on big samples do not."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churn_core.contract import FeatureContract
from monitoring.drift import (
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    chi2_test,
    detect_drift,
    js_distance,
    ks_test,
    load_thresholds,
    psi,
)
from tests.unit.conftest import TINY_CONTRACT

REPO_ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = DriftThresholds()


def frame(n: int, seed: int, usage_shift: float = 0.0, basic_share: float = 0.7) -> pd.DataFrame:
    """Rows of the tiny contract's features plus a score; usage is N(50 + shift * 10, 10)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "usage": rng.normal(50 + usage_shift * 10, 10, n),
            "plan": np.where(rng.random(n) < basic_share, "basic", "premium"),
            "autopay": rng.random(n) < 0.6,
            "fee": rng.uniform(5, 50, n),
            "probability": rng.beta(2, 8, n),
        }
    )


def statuses(report: DriftReport) -> dict[str, str]:
    return {f.feature: f.status for f in report.features}


def by_name(report: DriftReport, name: str) -> FeatureDrift:
    return next(f for f in report.features if f.feature == name)


def test_identical_distributions_do_not_drift(tiny_contract: FeatureContract) -> None:
    report = detect_drift(tiny_contract, frame(5000, 1), frame(5000, 2), THRESHOLDS)
    assert statuses(report) == dict.fromkeys(
        ["usage", "plan", "autopay", "fee", "probability"], "ok"
    )
    assert report.drifted == []
    assert (report.n_reference, report.n_current) == (5000, 5000)


def test_half_sd_mean_shift_drifts_that_feature_only(tiny_contract: FeatureContract) -> None:
    current = frame(5000, 2, usage_shift=0.5)
    report = detect_drift(tiny_contract, frame(5000, 1), current, THRESHOLDS)
    assert report.drifted == ["usage"]
    usage = by_name(report, "usage")
    assert any(r.startswith("psi ") and ">= 0.2" in r for r in usage.reasons)
    assert usage.ks_pvalue is not None and usage.chi2_pvalue is None


def test_category_mix_change_drifts(tiny_contract: FeatureContract) -> None:
    current = frame(5000, 2, basic_share=0.4)
    report = detect_drift(tiny_contract, frame(5000, 1), current, THRESHOLDS)
    assert report.drifted == ["plan"]
    plan = by_name(report, "plan")
    # 70/30 -> 40/60 is PSI 0.3 * ln(7/4) + 0.3 * ln(2) = 0.376 in the population.
    assert any(r.startswith("psi ") for r in plan.reasons) and plan.psi > 0.3
    assert plan.chi2_pvalue < 1e-10 and plan.ks_pvalue is None


def test_unseen_category_drifts(tiny_contract: FeatureContract) -> None:
    current = frame(5000, 2)
    current.loc[np.random.default_rng(3).random(5000) < 0.3, "plan"] = "enterprise"
    report = detect_drift(tiny_contract, frame(5000, 1), current, THRESHOLDS)
    assert report.drifted == ["plan"]
    assert by_name(report, "plan").psi > 1.0


def test_small_samples_never_alarm(tiny_contract: FeatureContract) -> None:
    current = frame(200, 2, usage_shift=3.0, basic_share=0.1)
    report = detect_drift(tiny_contract, frame(5000, 1), current, THRESHOLDS)
    assert set(statuses(report).values()) == {"insufficient_data"}
    assert report.drifted == []
    # The statistics are still reported, only the verdict is withheld.
    assert by_name(report, "usage").psi > 1.0
    assert by_name(report, "usage").reasons == ["n_current 200 < min_samples 500"]


def test_tiny_shift_on_big_sample_is_significant_but_no_alarm(
    tiny_contract: FeatureContract,
) -> None:
    reference, current = frame(200_000, 1), frame(200_000, 2, usage_shift=0.02)
    report = detect_drift(tiny_contract, reference, current, THRESHOLDS)
    usage = by_name(report, "usage")
    assert usage.ks_pvalue < THRESHOLDS.ks_pvalue
    assert usage.psi < THRESHOLDS.pvalue_min_psi
    assert usage.status == "ok" and report.drifted == []


def test_pvalue_test_confirms_a_moderate_shift() -> None:
    # PSI between the effect floor (0.1) and its own alarm (0.2): only the tests decide.
    thresholds = DriftThresholds(alarm_on=["ks_pvalue"])
    reference, current = frame(5000, 1)["usage"], frame(5000, 2, usage_shift=0.35)["usage"]
    assert 0.1 <= psi(reference, current) < 0.2
    frames = pd.DataFrame({"usage": reference}), pd.DataFrame({"usage": current})
    report = detect_drift(_usage_contract(), *frames, thresholds)
    assert report.drifted == ["usage"]
    assert report.features[0].reasons[0].startswith("ks_pvalue ")


def test_missing_values_drift_through_psi(tiny_contract: FeatureContract) -> None:
    current = frame(5000, 2)
    current.loc[np.random.default_rng(4).random(5000) < 0.2, "fee"] = np.nan
    report = detect_drift(tiny_contract, frame(5000, 1), current, THRESHOLDS)
    assert "fee" in report.drifted
    fee = by_name(report, "fee")
    assert any(r.startswith("psi ") for r in fee.reasons)
    # KS sees only the non-missing values, which did not move.
    assert fee.ks_pvalue > THRESHOLDS.ks_pvalue


def test_score_distribution_is_checked(tiny_contract: FeatureContract) -> None:
    current = frame(5000, 2)
    current["probability"] = np.random.default_rng(5).beta(5, 5, 5000)
    report = detect_drift(tiny_contract, frame(5000, 1), current, THRESHOLDS)
    assert report.drifted == ["probability"]
    assert by_name(report, "probability").kind == "score"
    without = detect_drift(
        tiny_contract, frame(5000, 1), current.drop(columns="probability"), THRESHOLDS
    )
    assert "probability" not in statuses(without)


def test_missing_feature_column_is_an_error(tiny_contract: FeatureContract) -> None:
    with pytest.raises(ValueError, match="fee"):
        detect_drift(tiny_contract, frame(600, 1), frame(600, 2).drop(columns="fee"), THRESHOLDS)


def test_psi_matches_hand_computation() -> None:
    # Categories: 50/50 -> 75/25; missing is an empty bin on both sides and adds nothing.
    expected = 0.25 * math.log(1.5) + 0.25 * math.log(2)
    assert psi(pd.Series(list("aabb")), pd.Series(list("aaab"))) == pytest.approx(expected)
    # Numbers, 2 bins split at the reference median 5.5: 50/50 -> 30/70.
    reference = pd.Series(np.arange(1.0, 11.0))
    current = pd.Series([1.0, 2, 3, 6, 7, 8, 9, 10, 10, 10])
    expected = 0.2 * math.log(0.5 / 0.3) + 0.2 * math.log(0.7 / 0.5)
    assert psi(reference, current, bins=2) == pytest.approx(expected)


def test_statistics_of_identical_samples() -> None:
    values = pd.Series(np.random.default_rng(6).normal(size=1000))
    assert psi(values, values) == 0.0 and js_distance(values, values) == 0.0
    assert ks_test(values, values) == (0.0, 1.0)
    categories = pd.Series(["a", "b", None, "b"])
    assert chi2_test(categories, categories)[1] == pytest.approx(1.0)
    # Jensen-Shannon distance is bounded: disjoint categories are exactly 1 apart.
    assert js_distance(pd.Series(["a"] * 10), pd.Series(["b"] * 10)) == pytest.approx(1.0)


def test_config_file_holds_the_defaults(tmp_path: Path) -> None:
    assert load_thresholds(REPO_ROOT / "configs" / "monitoring.yaml") == DriftThresholds()
    bad = tmp_path / "monitoring.yaml"
    bad.write_text("drift:\n  psi: -1\n  colour: red\n")
    with pytest.raises(ValueError, match="psi") as error:
        load_thresholds(bad)
    assert "colour" in str(error.value)


def test_records_are_flat_rows(tiny_contract: FeatureContract) -> None:
    report = detect_drift(tiny_contract, frame(600, 1), frame(600, 2), THRESHOLDS)
    records = report.to_records()
    assert [r["feature"] for r in records] == ["usage", "plan", "autopay", "fee", "probability"]
    assert all(r["created_at"] == report.created_at for r in records)


def _usage_contract() -> FeatureContract:
    only_usage = {**TINY_CONTRACT, "features": [TINY_CONTRACT["features"][0]]}
    return FeatureContract.model_validate(only_usage)
