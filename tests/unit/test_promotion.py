"""Promotion gates as data, gated promotion, rollback, compare and the ``churn models`` commands."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from churn_core.contract import FeatureContract
from churn_core.promotion import (
    BeatsChampionGate,
    CalibrationGate,
    MaxMetricGate,
    MinMetricGate,
    PromotionConfigError,
    PromotionPolicy,
    SegmentToleranceGate,
    evaluate_gates,
    load_policy,
    parse_policy,
)
from churn_core.registry import (
    LocalRegistry,
    ModelVersion,
    PromotionRefused,
    RegistryError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

POLICY = PromotionPolicy(
    gates=[
        MinMetricGate(metric="roc_auc", min=0.6),
        CalibrationGate(max=0.1),
        BeatsChampionGate(metric="roc_auc", margin=0.01),
        SegmentToleranceGate(metric="roc_auc", tolerance=0.03, min_rows=100),
    ]
)


def version(
    number: int,
    metrics: dict[str, float],
    segments: dict[str, dict[str, float | None]] | None = None,
) -> ModelVersion:
    return ModelVersion(
        name="m",
        version=number,
        created_at=datetime.now(UTC),
        artifact_sha256="x",
        metrics=metrics,
        segments=segments or {},
    )


# --- gates ----------------------------------------------------------------------------------


def test_min_metric_gate_passes_and_fails_with_the_numbers() -> None:
    gate = MinMetricGate(metric="roc_auc", min=0.6)
    passed = gate.evaluate(version(2, {"roc_auc": 0.65}), None)
    assert (passed.name, passed.passed, passed.message) == (
        "min_metric(roc_auc)",
        True,
        "roc_auc 0.6500 >= 0.6000",
    )
    failed = gate.evaluate(version(2, {"roc_auc": 0.55}), None)
    assert not failed.passed and failed.message == "roc_auc 0.5500 < minimum 0.6000"
    assert gate.evaluate(version(2, {"roc_auc": 0.6}), None).passed  # the bound itself passes


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({}, "candidate v2: metric 'roc_auc' is missing"),
        ({"roc_auc": float("nan")}, "candidate v2: metric 'roc_auc' is NaN"),
    ],
)
def test_a_metric_that_was_not_measured_fails(metrics: dict[str, float], message: str) -> None:
    for gate in (
        MinMetricGate(metric="roc_auc", min=0.6),
        BeatsChampionGate(metric="roc_auc"),
        MaxMetricGate(metric="roc_auc", max=1.0),
    ):
        result = gate.evaluate(version(2, metrics), version(1, {"roc_auc": 0.7}))
        assert not result.passed and result.message == message


def test_calibration_gate_bounds_the_expected_calibration_error() -> None:
    gate = CalibrationGate(max=0.05)
    assert gate.label == "calibration(ece)"
    assert gate.evaluate(version(2, {"ece": 0.031}), None).message == "ece 0.0310 <= 0.0500"
    failed = gate.evaluate(version(2, {"ece": 0.08}), None)
    assert not failed.passed and failed.message == "ece 0.0800 > maximum 0.0500"
    missing = gate.evaluate(version(2, {"roc_auc": 0.8}), None)
    assert not missing.passed and "'ece' is missing" in missing.message


def test_beats_champion_gate_compares_with_margin() -> None:
    gate = BeatsChampionGate(metric="roc_auc", margin=0.01)
    champion = version(1, {"roc_auc": 0.70})
    passed = gate.evaluate(version(2, {"roc_auc": 0.72}), champion)
    assert passed.passed
    assert passed.message == "roc_auc 0.7200 >= champion v1 0.7000 + margin 0.0100 = 0.7100"
    failed = gate.evaluate(version(2, {"roc_auc": 0.705}), champion)
    assert not failed.passed
    assert failed.message == "roc_auc 0.7050 < champion v1 0.7000 + margin 0.0100 = 0.7100"
    first = gate.evaluate(version(1, {"roc_auc": 0.61}), None)
    assert first.passed and first.message == "no champion yet (roc_auc 0.6100)"
    old = gate.evaluate(version(2, {"roc_auc": 0.61}), version(1, {}))
    assert old.passed and "champion v1 has no roc_auc" in old.message


def test_beats_champion_gate_for_a_lower_is_better_metric() -> None:
    gate = BeatsChampionGate(metric="log_loss", margin=0.01, higher_is_better=False)
    champion = version(1, {"log_loss": 0.40})
    assert gate.evaluate(version(2, {"log_loss": 0.38}), champion).passed
    failed = gate.evaluate(version(2, {"log_loss": 0.395}), champion)
    assert not failed.passed
    assert failed.message == "log_loss 0.3950 > champion v1 0.4000 - margin 0.0100 = 0.3900"


CHAMPION_SEGMENTS: dict[str, dict[str, float | None]] = {
    "plan=basic": {"n": 800, "roc_auc": 0.70},
    "plan=premium": {"n": 700, "roc_auc": 0.80},
    "tenure_band=[0, 90)": {"n": 40, "roc_auc": 0.90},  # below min_rows
    "region=north": {"n": 500, "roc_auc": None},  # too small to score when evaluated
}


def test_segment_tolerance_gate_names_every_segment_that_got_worse() -> None:
    gate = SegmentToleranceGate(metric="roc_auc", tolerance=0.03, min_rows=100)
    champion = version(1, {"roc_auc": 0.75}, CHAMPION_SEGMENTS)
    candidate = version(
        2,
        {"roc_auc": 0.78},
        {
            "plan=basic": {"n": 800, "roc_auc": 0.65},  # -0.05: too much
            "plan=premium": {"n": 700, "roc_auc": 0.76},  # -0.04: too much
            "tenure_band=[0, 90)": {"n": 40, "roc_auc": 0.50},  # skipped: 40 rows
            "region=north": {"n": 500, "roc_auc": 0.10},  # skipped: champion unscored
        },
    )
    result = gate.evaluate(candidate, champion)
    assert not result.passed
    assert result.message == (
        "roc_auc worse than the champion by more than 0.0300 in 2 segment(s): "
        "plan=basic 0.6500 vs 0.7000 (-0.0500); plan=premium 0.7600 vs 0.8000 (-0.0400) "
        "(2 segments compared with champion v1, 2 skipped)"
    )


def test_segment_tolerance_gate_passes_within_tolerance() -> None:
    gate = SegmentToleranceGate(metric="roc_auc", tolerance=0.03, min_rows=100)
    champion = version(1, {"roc_auc": 0.75}, CHAMPION_SEGMENTS)
    candidate = version(
        2,
        {"roc_auc": 0.78},
        {"plan=basic": {"n": 800, "roc_auc": 0.68}, "plan=premium": {"n": 700, "roc_auc": 0.85}},
    )
    result = gate.evaluate(candidate, champion)
    assert result.passed
    assert result.message == (
        "roc_auc within 0.0300 everywhere, worst plan=basic 0.6800 vs 0.7000 (-0.0200) "
        "(2 segments compared with champion v1, 2 skipped)"
    )


def test_segment_tolerance_gate_without_segments() -> None:
    gate = SegmentToleranceGate(tolerance=0.03)
    with_segments = version(1, {}, CHAMPION_SEGMENTS)
    assert gate.evaluate(version(2, {}), None).passed
    assert gate.evaluate(version(2, {}, CHAMPION_SEGMENTS), version(1, {})).passed
    missing = gate.evaluate(version(2, {}), with_segments)
    assert not missing.passed
    assert missing.message == "candidate v2 has no segment metrics (champion v1 has 4)"


def test_evaluate_gates_runs_every_gate_in_order() -> None:
    results = evaluate_gates(version(2, {"roc_auc": 0.5, "ece": 0.2}), None, POLICY)
    assert [(r.name, r.passed) for r in results] == [
        ("min_metric(roc_auc)", False),
        ("calibration(ece)", False),
        ("beats_champion(roc_auc)", True),
        ("segment_tolerance(roc_auc)", True),
    ]


def test_the_repository_gates_file_is_valid() -> None:
    policy = load_policy(REPO_ROOT / "configs" / "promotion.yaml")
    kinds = {gate.kind for gate in policy.gates}
    assert {"min_metric", "beats_champion", "segment_tolerance", "calibration"} <= kinds


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"gates": [{"kind": "best_ever"}]}, r"gates\.0: Input tag 'best_ever'"),
        ({"gates": [{"kind": "min_metric", "metric": "roc_auc"}]}, r"gates\.0\.min_metric\.min"),
        ({"gates": [{"kind": "calibration", "max": 0.1, "maxx": 1}]}, r"maxx: Extra inputs"),
        ({"gates": [{"kind": "segment_tolerance", "tolerance": -1}]}, r"tolerance: Input should"),
        ({"rules": []}, r"rules: Extra inputs"),
    ],
)
def test_invalid_gates_are_named(document: object, message: str) -> None:
    with pytest.raises(PromotionConfigError, match=message):
        parse_policy(document)


def test_gates_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(PromotionConfigError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "gates.yaml"
    bad.write_text("gates: [")
    with pytest.raises(PromotionConfigError, match="not valid YAML"):
        load_policy(bad)
    bad.write_text(yaml.safe_dump({"gates": [{"kind": "min_metric"}]}))
    with pytest.raises(PromotionConfigError) as caught:
        load_policy(bad)
    assert "\n" not in str(caught.value) and str(bad) in str(caught.value)


# --- promotion, rollback, compare on the registry -------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path, policy=POLICY)


def add(
    registry: LocalRegistry,
    model: bytes,
    contract: FeatureContract,
    auc: float,
    ece: float = 0.02,
    segments: dict[str, dict[str, float | None]] | None = None,
    **params: object,
) -> int:
    return registry.register(
        "m",
        model,
        contract,
        params={"max_depth": 3, **params},
        metrics={"roc_auc": auc, "ece": ece},
        lineage={},
        feature_importance={},
        segments=segments,
    ).version


def test_promotion_moves_the_alias_and_records_who_why_and_the_gates(
    registry: LocalRegistry, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    add(registry, tiny_model_bytes, tiny_contract, 0.70)
    add(registry, tiny_model_bytes, tiny_contract, 0.75)
    first = registry.promote("m", 1, reason="first model", actor="alice")
    assert (first.changed, first.previous, first.version, first.forced) == (True, None, 1, False)
    second = registry.promote("m", "v2", reason="better", actor="bob")
    assert second.previous == 1 and all(g.passed for g in second.gates)
    assert registry.aliases("m") == {"champion": 2}
    assert registry.load_model("m").version == 2
    again = registry.promote("m", 2, reason="again")
    assert not again.changed and again.event is None
    history = registry.alias_history("m", "champion")
    assert [(e.action, e.from_version, e.to_version, e.actor, e.reason) for e in history] == [
        ("promote", None, 1, "alice", "first model"),
        ("promote", 1, 2, "bob", "better"),
    ]
    assert history[1].gates[2].message.startswith("roc_auc 0.7500 >= champion v1 0.7000")


def test_promotion_refused_names_every_failed_gate_and_changes_nothing(
    registry: LocalRegistry, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    add(registry, tiny_model_bytes, tiny_contract, 0.75)
    add(registry, tiny_model_bytes, tiny_contract, 0.755, ece=0.2)
    registry.promote("m", 1, reason="first")
    with pytest.raises(PromotionRefused) as caught:
        registry.promote("m", 2, reason="try")
    message = str(caught.value)
    assert message == (
        "refused to make m v2 'champion': 2 gate(s) failed: "
        "calibration(ece): ece 0.2000 > maximum 0.1000; "
        "beats_champion(roc_auc): roc_auc 0.7550 < champion v1 0.7500 + margin 0.0100 = 0.7600"
    )
    assert [g.name for g in caught.value.failed] == ["calibration(ece)", "beats_champion(roc_auc)"]
    assert len(caught.value.results) == 4
    # Crosses process boundaries (Ray) intact.
    assert str(pickle.loads(pickle.dumps(caught.value))) == message
    assert registry.aliases("m") == {"champion": 1}
    assert len(registry.alias_history("m")) == 1


def test_forced_promotion_needs_a_reason_and_is_recorded(
    registry: LocalRegistry, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    add(registry, tiny_model_bytes, tiny_contract, 0.75)
    add(registry, tiny_model_bytes, tiny_contract, 0.70)
    registry.promote("m", 1)
    with pytest.raises(RegistryError, match="forced promotion needs a reason"):
        registry.promote("m", 2, force=True)
    result = registry.promote("m", 2, force=True, reason="v1 leaks a feature")
    assert result.forced and registry.aliases("m") == {"champion": 2}
    event = registry.alias_history("m")[-1]
    assert event.forced and event.reason == "v1 leaks a feature"
    assert [g.passed for g in event.gates] == [True, True, False, True]


def test_promotion_needs_gates(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path, policy_path=tmp_path / "none.yaml")
    add(registry, tiny_model_bytes, tiny_contract, 0.75)
    with pytest.raises(PromotionConfigError, match=r"none\.yaml does not exist"):
        registry.promote("m", 1)
    registry.policy_path = None
    with pytest.raises(RegistryError, match="no promotion gates configured"):
        registry.promote("m", 1)
    # The packaged gates by default.
    assert LocalRegistry(tmp_path).promote("m", 1).gates[0].name == "min_metric(roc_auc)"
    gates = tmp_path / "gates.yaml"
    gates.write_text(yaml.safe_dump({"gates": [{"kind": "min_metric", "min": 0.8}]}))
    registry = LocalRegistry(tmp_path, policy_path=gates)
    add(registry, tiny_model_bytes, tiny_contract, 0.76)
    with pytest.raises(PromotionRefused, match=r"roc_auc 0.7600 < minimum 0.8000"):
        registry.promote("m", 2)


def test_rollback_walks_back_through_the_history(
    registry: LocalRegistry, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    for auc in (0.70, 0.72, 0.74):
        add(registry, tiny_model_bytes, tiny_contract, auc)
    with pytest.raises(RegistryError, match="has no alias 'champion' to roll back"):
        registry.rollback("m")
    for number in (1, 2, 3):
        registry.promote("m", number, reason=f"v{number}")
    event = registry.rollback("m", reason="v3 drifts", actor="carol")
    assert (event.action, event.from_version, event.to_version) == ("rollback", 3, 2)
    assert registry.aliases("m") == {"champion": 2}
    assert registry.rollback("m", reason="v2 too").to_version == 1  # not back to 3
    with pytest.raises(RegistryError, match=r"\(v1\) has no earlier version"):
        registry.rollback("m")
    registry.promote("m", 3, reason="fixed", force=True)  # 0.74 vs 0.70: passes anyway
    assert registry.rollback("m", reason="no").to_version == 1
    assert [e.action for e in registry.alias_history("m", "champion")] == [
        "promote",
        "promote",
        "promote",
        "rollback",
        "rollback",
        "promote",
        "rollback",
    ]


def test_promote_or_challenge_after_training(
    registry: LocalRegistry, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    add(registry, tiny_model_bytes, tiny_contract, 0.75)
    assert registry.promote_or_challenge("m", 1, reason="train") == ["champion"]
    add(registry, tiny_model_bytes, tiny_contract, 0.74)  # good, but not better
    assert registry.promote_or_challenge("m", 2, reason="train") == ["challenger"]
    add(registry, tiny_model_bytes, tiny_contract, 0.55)  # below the floor
    assert registry.promote_or_challenge("m", 3, reason="train") == []
    add(registry, tiny_model_bytes, tiny_contract, 0.80, ece=0.3)  # miscalibrated
    assert registry.promote_or_challenge("m", 4, reason="train") == []
    assert registry.aliases("m") == {"challenger": 2, "champion": 1}


def test_a_concurrent_alias_move_makes_promotion_re_check_the_gates(
    registry: LocalRegistry,
    tiny_model_bytes: bytes,
    tiny_contract: FeatureContract,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add(registry, tiny_model_bytes, tiny_contract, 0.70)
    add(registry, tiny_model_bytes, tiny_contract, 0.80)
    add(registry, tiny_model_bytes, tiny_contract, 0.75)
    registry.promote("m", 1)
    real_states = registry.metadata.alias_states
    calls = 0

    def racing_states(name: str) -> object:
        # Our promotion of v3 reads the alias; someone promotes v2 before our write.
        nonlocal calls
        calls += 1
        states = real_states(name)
        if calls == 1:
            monkeypatch.setattr(registry.metadata, "alias_states", real_states)
            registry.promote("m", 2, reason="the other writer")
        return states

    monkeypatch.setattr(registry.metadata, "alias_states", racing_states)
    # First attempt: v3 beats v1 but the write conflicts; the retry compares with v2 and fails.
    with pytest.raises(PromotionRefused, match=r"champion v2 0.8000"):
        registry.promote("m", 3, reason="mine")
    assert registry.aliases("m") == {"champion": 2}
    assert [e.seq for e in registry.alias_history("m")] == [1, 2]


def test_compare_reports_metric_segment_and_param_differences(
    registry: LocalRegistry, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    add(
        registry,
        tiny_model_bytes,
        tiny_contract,
        0.70,
        segments={"plan=basic": {"n": 10, "roc_auc": 0.6}},
    )
    add(
        registry,
        tiny_model_bytes,
        tiny_contract,
        0.75,
        eta=0.1,
        segments={"plan=basic": {"n": 10, "roc_auc": None}},
    )
    registry.promote("m", 2)
    diff = registry.compare("m", 1, "champion")
    assert (diff.a, diff.b) == (1, 2)
    by_metric = {d.metric: d for d in diff.metrics}
    assert by_metric["roc_auc"].delta == pytest.approx(0.05)
    assert by_metric["ece"].delta == 0.0
    assert [(s.segment, s.metric, s.a, s.b, s.delta) for s in diff.segments] == [
        ("plan=basic", "n", 10.0, 10.0, 0.0),
        ("plan=basic", "roc_auc", 0.6, None, None),
    ]
    assert diff.params == {"eta": (None, 0.1)}


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def cli_registry(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_bytes: bytes,
    tiny_contract: FeatureContract,
) -> LocalRegistry:
    """Three versions under the test environment's settings pointed at ``tmp_path``."""
    monkeypatch.setenv("CHURN_ENV", "test")
    monkeypatch.setenv("CHURN_REGISTRY__ROOT", str(tmp_path))
    monkeypatch.setenv("CHURN_REGISTRY__MODEL_NAME", "m")
    gates = tmp_path / "gates.yaml"
    gates.write_text(yaml.safe_dump(POLICY.model_dump(mode="json")))
    monkeypatch.setenv("CHURN_REGISTRY__GATES_PATH", str(gates))
    registry = LocalRegistry(tmp_path, policy=POLICY)
    add(registry, tiny_model_bytes, tiny_contract, 0.70)
    add(registry, tiny_model_bytes, tiny_contract, 0.75, eta=0.1)
    add(registry, tiny_model_bytes, tiny_contract, 0.72, ece=0.3)
    return registry


def run(*args: str) -> tuple[int, str, str]:
    from churn.models_cli import app

    result = CliRunner().invoke(app, list(args), terminal_width=200)
    return result.exit_code, result.stdout, result.stderr


def test_cli_list_show_compare(cli_registry: LocalRegistry) -> None:
    cli_registry.promote("m", 1)
    code, out, _ = run("list")
    assert code == 0
    assert "0.7500" in out and "champion" in out and "files:" in out
    code, out, _ = run("show", "champion")
    assert code == 0 and "m v1" in out and "model.ubj" in out and "params.max_depth" in out
    code, out, _ = run("compare", "1", "2")
    assert code == 0 and "+0.0500" in out and "eta" in out


def test_cli_promote_refused_then_forced_then_rolled_back(cli_registry: LocalRegistry) -> None:
    assert run("promote", "1")[0] == 0
    code, out, err = run("promote", "3")
    assert code == 1
    assert "FAIL" in out and "calibration(ece)" in out
    assert err.count("\n") == 1
    assert "churn models promote failed: PromotionRefused: refused to make m v3" in err
    assert "ece 0.3000 > maximum 0.1000" in err and "--force" in err
    code, out, err = run("promote", "3", "--dry-run")
    assert code == 0 and "would refuse" in out
    code, out, _ = run("promote", "3", "--force", "--reason", "hotfix")
    assert code == 0 and "forced" in out
    code, out, _ = run("rollback", "--reason", "bad")
    assert code == 0 and "v3 -> v1" in out
    code, out, _ = run("history")
    assert code == 0 and "hotfix" in out and "rollback" in out
    assert cli_registry.aliases("m") == {"champion": 1}


def test_cli_errors_are_one_line(cli_registry: LocalRegistry) -> None:
    code, _, err = run("show", "9")
    assert code == 1
    assert err == "churn models show failed: RegistryError: model 'm' has no version 9\n"
    code, _, err = run("rollback")
    assert code == 1 and err.startswith("churn models rollback failed: RegistryError:")
