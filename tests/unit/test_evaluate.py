from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from churn_core.contract import FeatureContract, ReportSpec, load_contract
from churn_core.model import FeatureEncoder
from tests.conftest import REPO_ROOT
from tests.unit.conftest import TINY_CONTRACT, tiny_frame
from training.evaluate import (
    MAX_CURVE_POINTS,
    evaluate,
    evaluate_scores,
    evaluate_segments,
)


def noisy_scores(n: int, base_rate: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative, continuous (tie-free) scores."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < base_rate).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(-1.5, 1.0, n) + 1.5 * labels)))
    return labels, scores


# --- overall metrics --------------------------------------------------------------------------


def test_metrics_match_scikit_learn() -> None:
    labels, scores = noisy_scores(1000)
    result = evaluate(labels, scores, threshold=0.3)
    assert result.n == 1000 and result.positives == labels.sum()
    assert result.base_rate == pytest.approx(labels.mean())
    assert result.mean_score == pytest.approx(scores.mean())
    assert result.roc_auc == pytest.approx(roc_auc_score(labels, scores))
    assert result.pr_auc == pytest.approx(average_precision_score(labels, scores))
    assert result.log_loss == pytest.approx(log_loss(labels, scores))
    assert result.brier == pytest.approx(brier_score_loss(labels, scores))
    predicted = (scores >= 0.3).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
    at = result.at_threshold
    assert (at.tn, at.fp, at.fn, at.tp) == (tn, fp, fn, tp)
    assert at.precision == pytest.approx(precision_score(labels, predicted))
    assert at.recall == pytest.approx(recall_score(labels, predicted))
    assert at.f1 == pytest.approx(f1_score(labels, predicted))


def test_calibration_bins_are_sklearn_quantile_bins() -> None:
    # With 1000 distinct scores, sklearn's quantile edges fall between the same rows as our
    # equal-count chunks, so the curves agree exactly.
    labels, scores = noisy_scores(1000, seed=4)
    result = evaluate(labels, scores)
    observed, predicted = calibration_curve(labels, scores, n_bins=10, strategy="quantile")
    assert [b.n for b in result.calibration] == [100] * 10
    np.testing.assert_allclose([b.observed_rate for b in result.calibration], observed)
    np.testing.assert_allclose([b.mean_score for b in result.calibration], predicted)
    expected_ece = np.mean(np.abs(observed - predicted))  # equal-size bins: a plain mean
    assert result.ece == pytest.approx(expected_ece)


def test_ece_by_hand() -> None:
    # 20 rows, 10 bins of 2 (ascending score). Score 0.1 rows: one churner per bin (observed 0.5,
    # gap 0.4); score 0.9 rows: all churners (gap 0.1). ECE = (10 * 0.4 + 10 * 0.1) / 20 = 0.25.
    scores = np.array([0.1] * 10 + [0.9] * 10)
    labels = np.array([1, 0] * 5 + [1] * 10)
    result = evaluate(labels, scores)
    assert [b.n for b in result.calibration] == [2] * 10
    assert [b.observed_rate for b in result.calibration] == [0.5] * 5 + [1.0] * 5
    assert result.ece == pytest.approx(0.25)


def test_lift_and_capture_by_hand() -> None:
    # 20 rows ranked by score, 2 per decile; 5 churners (base rate 0.25) at ranks 1, 2, 3, 6, 20.
    scores = np.linspace(0.99, 0.01, 20)
    labels = np.zeros(20, dtype=int)
    labels[[0, 1, 2, 5, 19]] = 1
    order = np.random.default_rng(0).permutation(20)  # input order must not matter
    result = evaluate(labels[order], scores[order])
    lift = result.lift
    assert [b.n for b in lift] == [2] * 10
    assert [b.positives for b in lift] == [2, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    assert lift[0].rate == 1.0
    assert lift[0].lift == pytest.approx(1.0 / 0.25)
    assert lift[1].lift == pytest.approx(0.5 / 0.25)
    assert [b.cumulative_capture for b in lift][:4] == pytest.approx([0.4, 0.6, 0.8, 0.8])
    assert lift[-1].cumulative_capture == pytest.approx(1.0)
    assert lift[-1].cumulative_lift == pytest.approx(1.0)
    assert lift[2].cumulative_lift == pytest.approx((4 / 6) / 0.25)
    assert result.top_decile_lift == pytest.approx(4.0)
    assert result.top_decile_capture == pytest.approx(0.4)
    assert lift[0].score_min == pytest.approx(scores[1])


def test_uneven_deciles_give_extra_rows_to_the_top() -> None:
    labels, scores = noisy_scores(23)
    sizes = [b.n for b in evaluate(labels, scores).lift]
    assert sizes == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]


def test_perfect_scores() -> None:
    labels = np.array([1] * 20 + [0] * 80)
    result = evaluate(labels, labels.astype(float))
    assert result.roc_auc == 1.0 and result.pr_auc == 1.0
    assert result.brier == 0.0 and result.ece == 0.0
    assert result.log_loss < 1e-6
    # Top decile: 10 rows, all churners, out of 20.
    assert result.top_decile_lift == pytest.approx(5.0)
    assert result.top_decile_capture == pytest.approx(0.5)
    at = result.at_threshold
    assert (at.tp, at.fp, at.fn, at.tn) == (20, 0, 0, 80)
    assert at.precision == at.recall == at.f1 == 1.0


def test_random_scores_are_uninformative() -> None:
    rng = np.random.default_rng(7)
    labels = (rng.random(20_000) < 0.3).astype(int)
    result = evaluate(labels, rng.random(20_000))
    assert result.roc_auc == pytest.approx(0.5, abs=0.02)
    assert result.pr_auc == pytest.approx(labels.mean(), abs=0.02)
    assert result.top_decile_lift == pytest.approx(1.0, abs=0.1)
    assert result.top_decile_capture == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize(("label", "lift_defined"), [(0, False), (1, True)])
def test_single_class_is_reported_not_fatal(label: int, lift_defined: bool) -> None:
    labels = np.full(50, label)
    scores = np.linspace(0.05, 0.95, 50)
    result = evaluate(labels, scores)
    assert result.roc_auc is None and result.pr_auc is None
    assert result.roc_curve is None and result.pr_curve is None
    assert any("roc_auc" in note for note in result.notes)
    assert math.isfinite(result.log_loss) and math.isfinite(result.brier)
    assert (result.top_decile_lift is not None) == lift_defined
    assert "roc_auc" not in result.metrics()
    assert all(math.isfinite(v) for v in result.metrics().values())
    with pytest.raises(ValueError, match="both churners and non-churners"):
        evaluate_scores(labels, scores)


def test_no_predicted_positives_leave_precision_undefined() -> None:
    labels, scores = noisy_scores(200)
    at = evaluate(labels, scores * 0.5, threshold=0.9).at_threshold
    assert at.tp == at.fp == 0
    assert at.precision is None and at.recall == 0.0 and at.f1 == 0.0


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 1], [0.1, float("nan"), 0.3], "1 of 3 scores are NaN"),
        ([0, 1], [0.1, 0.2, 0.3], "2 labels but 3 scores"),
        ([], [], "empty"),
        ([0, 2], [0.1, 0.2], "0 or 1"),
        ([0, float("nan")], [0.1, 0.2], "0 or 1"),
        ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
    ],
)
def test_bad_inputs_are_refused(labels: list[float], scores: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(labels, scores)


def test_curves_are_capped_and_span_the_unit_square() -> None:
    labels, scores = noisy_scores(10_000)
    result = evaluate(labels, scores)
    assert result.roc_curve is not None and result.pr_curve is not None
    roc, pr = result.roc_curve, result.pr_curve
    assert len(roc.x) <= MAX_CURVE_POINTS and len(pr.x) <= MAX_CURVE_POINTS
    assert (roc.x[0], roc.y[0], roc.x[-1], roc.y[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc.x) >= 0) and np.all(np.diff(pr.x) >= 0)
    assert pr.x[0] == 0.0 and pr.x[-1] == 1.0
    # Trapezoid area of the subsampled ROC stays close to the exact AUC.
    assert np.trapezoid(roc.y, roc.x) == pytest.approx(result.roc_auc, abs=0.005)


def test_evaluate_scores_keeps_its_keys_and_values() -> None:
    labels, scores = noisy_scores(500)
    metrics = evaluate_scores(labels, scores)
    assert set(metrics) == {
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "positive_rate",
        "mean_score",
        "rows",
    }
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert metrics["rows"] == 500.0
    # The richer flat metrics are a superset with the same values.
    flat = evaluate(labels, scores).metrics()
    assert {k: flat[k] for k in metrics} == metrics
    assert {"ece", "top_decile_lift", "top_decile_capture", "f1"} <= set(flat)


def test_to_dict_is_plain_json_data() -> None:
    import json

    result = evaluate(np.zeros(30, dtype=int), np.linspace(0, 1, 30))
    data = result.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["roc_auc"] is None
    assert data["lift"][0]["lift"] is None
    assert data["at_threshold"]["threshold"] == 0.5


# --- segments ---------------------------------------------------------------------------------


def segmented_contract(**report: Any) -> FeatureContract:
    data = dict(TINY_CONTRACT)
    data["report"] = {
        "segments": [
            {"column": "plan"},
            {"column": "usage", "name": "usage_band", "bins": [0, 1, 50, 90]},
            {"column": "autopay"},
        ],
        **report,
    }
    return FeatureContract.model_validate(data)


def scored_tiny_frame(n: int = 1000) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    frame = tiny_frame(n, seed=11)
    frame.loc[:4, "plan"] = None  # flagged missing category
    rng = np.random.default_rng(3)
    logit = 2.0 - 0.06 * frame["usage"] - 1.0 * frame["autopay"]
    scores = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, n))))
    return frame, frame["churned"].to_numpy(), scores.to_numpy()


def test_segments_have_the_declared_keys_and_sklearn_values() -> None:
    contract = segmented_contract()
    frame, labels, scores = scored_tiny_frame()
    segments = evaluate_segments(frame, labels, scores, contract)
    assert list(segments) == [
        "plan=basic",
        "plan=premium",
        "plan=missing",
        "usage_band=[0, 1)",
        "usage_band=[1, 50)",
        "usage_band=[50, 90)",
        "usage_band=out_of_bins",  # usage 90..100
        "autopay=false",
        "autopay=true",
    ]
    assert set(segments["plan=basic"]) == {
        "n",
        "positives",
        "observed_rate",
        "mean_score",
        "roc_auc",
        "pr_auc",
        "brier",
    }
    for prefix in ("plan=", "usage_band=", "autopay="):
        assert sum(m["n"] for k, m in segments.items() if k.startswith(prefix)) == len(frame)
    mask = ((frame["usage"] >= 1) & (frame["usage"] < 50)).to_numpy()
    middle = segments["usage_band=[1, 50)"]
    assert middle["n"] == mask.sum() and middle["positives"] == labels[mask].sum()
    assert middle["roc_auc"] == pytest.approx(roc_auc_score(labels[mask], scores[mask]))
    assert middle["pr_auc"] == pytest.approx(average_precision_score(labels[mask], scores[mask]))
    assert middle["brier"] == pytest.approx(brier_score_loss(labels[mask], scores[mask]))
    assert middle["mean_score"] == pytest.approx(scores[mask].mean())
    assert middle["observed_rate"] == pytest.approx(labels[mask].mean())


def test_tiny_and_one_class_segments_get_no_auc() -> None:
    contract = segmented_contract()
    frame, labels, scores = scored_tiny_frame()
    segments = evaluate_segments(frame, labels, scores, contract)
    tiny = segments["usage_band=[0, 1)"]  # ~1 % of 1000 rows, below min_segment_rows=50
    assert 0 < tiny["n"] < 50
    assert tiny["roc_auc"] is None and tiny["pr_auc"] is None
    assert tiny["brier"] is not None
    assert segments["plan=missing"]["n"] == 5 and segments["plan=missing"]["roc_auc"] is None
    # One class in an otherwise big segment: no AUC either, and no crash.
    labels = labels.copy()
    labels[frame["autopay"].to_numpy()] = 0
    one_class = evaluate_segments(frame, labels, scores, contract)["autopay=true"]
    assert one_class["positives"] == 0 and one_class["roc_auc"] is None


def test_floors_come_from_the_report_section() -> None:
    frame, labels, scores = scored_tiny_frame()
    tiny_mask = (frame["usage"] < 1).to_numpy()
    labels = labels.copy()
    labels[np.flatnonzero(tiny_mask)] = np.arange(tiny_mask.sum()) % 2  # both classes
    strict = evaluate_segments(frame, labels, scores, segmented_contract())
    loose = evaluate_segments(
        frame, labels, scores, segmented_contract(min_segment_rows=2, min_class_rows=1)
    )
    assert strict["usage_band=[0, 1)"]["roc_auc"] is None
    assert loose["usage_band=[0, 1)"]["roc_auc"] == pytest.approx(
        roc_auc_score(labels[tiny_mask], scores[tiny_mask])
    )


def test_absent_values_keep_their_key_with_n_zero() -> None:
    contract = segmented_contract()
    frame, labels, scores = scored_tiny_frame()
    only_basic = (frame["plan"] == "basic").to_numpy()
    segments = evaluate_segments(
        frame[only_basic], labels[only_basic], scores[only_basic], contract
    )
    assert segments["plan=premium"] == {
        "n": 0,
        "positives": 0,
        "observed_rate": None,
        "mean_score": None,
        "roc_auc": None,
        "pr_auc": None,
        "brier": None,
    }
    assert "plan=missing" not in segments  # extra values appear only when present


def test_encoded_and_raw_frames_give_the_same_segments() -> None:
    # The trainer holds the encoded test split (category codes, 0/1 floats), not raw values.
    contract = segmented_contract()
    frame, labels, scores = scored_tiny_frame()
    matrix = FeatureEncoder(contract).encode_frame(frame)
    encoded = pd.DataFrame(matrix, columns=contract.feature_names)
    assert evaluate_segments(encoded, labels, scores, contract) == evaluate_segments(
        frame, labels, scores, contract
    )


def test_no_report_section_means_no_segments(tiny_contract: FeatureContract) -> None:
    frame, labels, scores = scored_tiny_frame(100)
    assert evaluate_segments(frame, labels, scores, tiny_contract) == {}
    explicit = ReportSpec.model_validate({"segments": [{"column": "plan"}]})
    keys = evaluate_segments(frame, labels, scores, tiny_contract, explicit)
    assert list(keys) == ["plan=basic", "plan=premium", "plan=missing"]


def test_unknown_raw_category_is_other() -> None:
    contract = segmented_contract()
    frame, labels, scores = scored_tiny_frame(100)
    frame.loc[10, "plan"] = "gold"
    segments = evaluate_segments(frame, labels, scores, contract)
    assert segments["plan=other"]["n"] == 1


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        ({"column": "nope"}, "not a feature"),
        ({"column": "plan", "bins": [0, 1]}, "non-numeric"),
        ({"column": "usage"}, "needs bins"),
        ({"column": "usage", "bins": [0, 50, 50]}, "strictly ascending"),
        ({"column": "usage", "bins": [0]}, "at least 2"),
    ],
)
def test_bad_segment_declarations_are_rejected(segment: dict[str, Any], message: str) -> None:
    data = dict(TINY_CONTRACT, report={"segments": [segment]})
    with pytest.raises(ValueError, match=message):
        FeatureContract.model_validate(data)


def test_duplicate_segment_names_are_rejected() -> None:
    segments = [{"column": "plan"}, {"column": "usage", "bins": [0, 1], "name": "plan"}]
    with pytest.raises(ValueError, match="duplicate segment"):
        FeatureContract.model_validate(dict(TINY_CONTRACT, report={"segments": segments}))


@pytest.mark.parametrize("name", ["saas", "telco"])
def test_project_contracts_declare_segments_on_encoded_columns(name: str) -> None:
    contract = load_contract(REPO_ROOT / "configs" / "contracts" / f"{name}.yaml")
    assert contract.report is not None and contract.report.segments
    # An encoded frame of all-zero codes/values: every segment resolves to a declared value.
    rows = 60
    encoded = pd.DataFrame(np.zeros((rows, len(contract.features))), columns=contract.feature_names)
    labels = np.arange(rows) % 2
    segments = evaluate_segments(encoded, labels, np.full(rows, 0.5), contract)
    assert sum(m["n"] for m in segments.values()) == rows * len(contract.report.segments)
    assert not any(key.endswith(("=missing", "=other", "=out_of_bins")) for key in segments)


def test_report_section_survives_the_registry_round_trip() -> None:
    from churn_core.contract import parse_contract

    contract = segmented_contract()
    assert parse_contract(contract.to_yaml()) == contract
