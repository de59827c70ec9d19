"""Promotion gates, declared as data (``configs/promotion.yaml``) and checked before an alias moves.

A gate compares a candidate version with the version the alias points to now (the champion, or
none yet) and returns a :class:`GateResult` whose message carries the numbers, so a refusal
explains itself. Gates read only a version's metadata:

* ``metrics``: flat ``{name: value}`` (``roc_auc``, ``pr_auc``, ``ece`` ...);
* ``segments``: ``{"<segment name>=<value>": {metric: value | None}}``, e.g.
  ``{"contract_type=month_to_month": {"n": 1200, "positives": 310, "roc_auc": 0.71}}``.
  ``n`` is the segment's row count; a metric is ``None`` when the segment was too small to
  score (a gate never trips on such a segment).

Kinds:

* ``min_metric`` / ``max_metric``: the candidate's metric is at least ``min`` / at most ``max``;
* ``calibration``: ``max_metric`` for the expected calibration error (``ece``);
* ``beats_champion``: the candidate's metric is at least the champion's plus ``margin``
  (lower-is-better metrics set ``higher_is_better: false``); passes when there is no champion;
* ``segment_tolerance``: no segment's metric is worse than the champion's same segment by more
  than ``tolerance``; segments with fewer than ``min_rows`` rows on either side are skipped.

A gate that cannot be evaluated (the candidate lacks the metric, or has no segment metrics while
the champion has) fails: an unmeasured model is not a proven one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from churn_core.registry import ModelVersion

# Metric comparisons tolerate float noise: a re-evaluated equal model must not fail ">=".
_EPS = 1e-12


class GateResult(BaseModel):
    """The outcome of one gate for one candidate."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    message: str


class PromotionConfigError(ValueError):
    """The promotion gates file is missing or invalid."""


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _metric(version: ModelVersion, metric: str) -> float | None:
    """The version's metric, or None when missing or not a number (NaN is not evidence)."""
    value = version.metrics.get(metric)
    if value is None or math.isnan(value):
        return None
    return float(value)


def _missing(version: ModelVersion, metric: str) -> str:
    value = version.metrics.get(metric)
    what = "is NaN" if value is not None else "is missing"
    return f"candidate v{version.version}: metric {metric!r} {what}"


class _Gate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Shown in results and refusals; defaults to "<kind>(<metric>)".
    name: str | None = None
    metric: str

    @property
    def label(self) -> str:
        """The gate's display name."""
        kind: str = getattr(self, "kind", "gate")
        return self.name or f"{kind}({self.metric})"

    def _result(self, passed: bool, message: str) -> GateResult:
        return GateResult(name=self.label, passed=passed, message=message)


class MinMetricGate(_Gate):
    """The candidate's ``metric`` is at least ``min``."""

    kind: Literal["min_metric"] = "min_metric"
    metric: str = "roc_auc"
    min: float

    def evaluate(self, candidate: ModelVersion, champion: ModelVersion | None) -> GateResult:
        """Check the candidate alone (the champion does not matter)."""
        value = _metric(candidate, self.metric)
        if value is None:
            return self._result(False, _missing(candidate, self.metric))
        if value >= self.min - _EPS:
            return self._result(True, f"{self.metric} {_fmt(value)} >= {_fmt(self.min)}")
        return self._result(False, f"{self.metric} {_fmt(value)} < minimum {_fmt(self.min)}")


class _UpperBoundGate(_Gate):
    max: float

    def evaluate(self, candidate: ModelVersion, champion: ModelVersion | None) -> GateResult:
        """Check the candidate alone (the champion does not matter)."""
        value = _metric(candidate, self.metric)
        if value is None:
            return self._result(False, _missing(candidate, self.metric))
        if value <= self.max + _EPS:
            return self._result(True, f"{self.metric} {_fmt(value)} <= {_fmt(self.max)}")
        return self._result(False, f"{self.metric} {_fmt(value)} > maximum {_fmt(self.max)}")


class MaxMetricGate(_UpperBoundGate):
    """The candidate's ``metric`` is at most ``max`` (for lower-is-better metrics)."""

    kind: Literal["max_metric"] = "max_metric"


class CalibrationGate(_UpperBoundGate):
    """Expected calibration error at most ``max``: scores are used as probabilities downstream."""

    kind: Literal["calibration"] = "calibration"
    metric: str = "ece"


class BeatsChampionGate(_Gate):
    """The candidate's ``metric`` beats (or ties, with margin 0) the current champion's."""

    kind: Literal["beats_champion"] = "beats_champion"
    metric: str = "roc_auc"
    margin: float = Field(0.0, ge=0)
    higher_is_better: bool = True

    def evaluate(self, candidate: ModelVersion, champion: ModelVersion | None) -> GateResult:
        """Compare with the champion; there is nothing to beat without one."""
        value = _metric(candidate, self.metric)
        if value is None:
            return self._result(False, _missing(candidate, self.metric))
        if champion is None:
            return self._result(True, f"no champion yet ({self.metric} {_fmt(value)})")
        reference = _metric(champion, self.metric)
        if reference is None:
            # An old champion registered without this metric cannot be compared against.
            return self._result(
                True, f"champion v{champion.version} has no {self.metric}: nothing to beat"
            )
        if self.higher_is_better:
            bound = reference + self.margin
            passed = value >= bound - _EPS
            relation = ">=" if passed else "<"
            sign = "+"
        else:
            bound = reference - self.margin
            passed = value <= bound + _EPS
            relation = "<=" if passed else ">"
            sign = "-"
        return self._result(
            passed,
            f"{self.metric} {_fmt(value)} {relation} champion v{champion.version} "
            f"{_fmt(reference)} {sign} margin {_fmt(self.margin)} = {_fmt(bound)}",
        )


class SegmentToleranceGate(_Gate):
    """No segment's ``metric`` is worse than the champion's same segment by more than ``tolerance``."""

    kind: Literal["segment_tolerance"] = "segment_tolerance"
    metric: str = "roc_auc"
    tolerance: float = Field(ge=0)
    # Segments with fewer rows (key ``n``) on either side are skipped: their metric is noise.
    min_rows: int = Field(0, ge=0)
    higher_is_better: bool = True

    def _value(self, metrics: Mapping[str, float | None], key: str) -> float | None:
        value = metrics.get(key)
        return None if value is None or math.isnan(value) else float(value)

    def evaluate(self, candidate: ModelVersion, champion: ModelVersion | None) -> GateResult:
        """Compare each segment both versions scored."""
        if champion is None:
            return self._result(True, "no champion yet: no segments to compare")
        if not champion.segments:
            return self._result(
                True, f"champion v{champion.version} has no segment metrics: nothing to compare"
            )
        if not candidate.segments:
            return self._result(
                False,
                f"candidate v{candidate.version} has no segment metrics "
                f"(champion v{champion.version} has {len(champion.segments)})",
            )
        worse: list[tuple[float, str]] = []
        compared: list[tuple[float, str]] = []
        skipped = 0
        for segment, reference_metrics in sorted(champion.segments.items()):
            candidate_metrics = candidate.segments.get(segment)
            if candidate_metrics is None:
                skipped += 1
                continue
            value = self._value(candidate_metrics, self.metric)
            reference = self._value(reference_metrics, self.metric)
            rows = min(
                self._value(candidate_metrics, "n") or 0.0,
                self._value(reference_metrics, "n") or 0.0,
            )
            if value is None or reference is None or rows < self.min_rows:
                skipped += 1
                continue
            # Positive change = the candidate is better, whatever the metric's direction.
            change = value - reference if self.higher_is_better else reference - value
            text = f"{segment} {_fmt(value)} vs {_fmt(reference)} ({change:+.4f})"
            compared.append((change, text))
            if change < -self.tolerance - _EPS:
                worse.append((change, text))
        scope = (
            f"{len(compared)} segments compared with champion v{champion.version}, "
            f"{skipped} skipped"
        )
        if worse:
            listed = "; ".join(text for _, text in sorted(worse))
            return self._result(
                False,
                f"{self.metric} worse than the champion by more than "
                f"{_fmt(self.tolerance)} in {len(worse)} segment(s): {listed} ({scope})",
            )
        if not compared:
            return self._result(True, f"no segment scored on both sides ({scope})")
        worst = min(compared)[1]
        return self._result(
            True, f"{self.metric} within {_fmt(self.tolerance)} everywhere, worst {worst} ({scope})"
        )


Gate = Annotated[
    MinMetricGate | MaxMetricGate | CalibrationGate | BeatsChampionGate | SegmentToleranceGate,
    Field(discriminator="kind"),
]


class PromotionPolicy(BaseModel):
    """Every gate a candidate must pass before an alias (``champion``) moves to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gates: list[Gate] = Field(default_factory=list)

    @property
    def absolute_gates(self) -> list[Gate]:
        """Gates that judge the candidate alone (a model failing these is no challenger either)."""
        return [g for g in self.gates if isinstance(g, MinMetricGate | _UpperBoundGate)]


def evaluate_gates(
    candidate: ModelVersion,
    champion: ModelVersion | None,
    gates: Sequence[Gate] | PromotionPolicy,
) -> list[GateResult]:
    """Every gate's result for ``candidate`` against ``champion`` (None: no champion yet)."""
    selected = gates.gates if isinstance(gates, PromotionPolicy) else gates
    return [gate.evaluate(candidate, champion) for gate in selected]


def parse_policy(data: object, source: str = "promotion gates") -> PromotionPolicy:
    """Validate a parsed gates document; errors name the gate and the field, on one line."""
    try:
        return PromotionPolicy.model_validate(data if data is not None else {})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise PromotionConfigError(f"{source}: {problems}") from None


def load_policy(path: Path) -> PromotionPolicy:
    """Load and validate the gates file (``configs/promotion.yaml``)."""
    if not path.exists():
        raise PromotionConfigError(f"promotion gates file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise PromotionConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_policy(data, str(path))
