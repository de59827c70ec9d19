"""Drift statistics: how far a window of predictions has moved from the champion's training data.

Reference is the champion's training data, current a window of prediction inputs (and scores).
Both are pandas DataFrames; this module only computes, it reads and writes nothing, so the same
code runs in a batch job, a test or a notebook. Every contract feature is compared: numeric
features on quantile bins of the reference, categorical and boolean features on their category
frequencies, plus the score distribution when both frames carry it.

Alarm rule (see ``DriftThresholds``): PSI and Jensen-Shannon distance are effect sizes and alarm
on their own. KS and chi-square p-values measure evidence, not size: on 100,000 rows a shift of
0.02 standard deviations is "significant" yet irrelevant to the model. A p-value test therefore
alarms only when the PSI also reaches ``pvalue_min_psi`` (the conventional "moderate shift"
floor of 0.1), so it can confirm a moderate shift but never raise a meaningless one. Below
``min_samples`` rows in either frame nothing alarms at all: the statistics are reported, the
status is ``insufficient_data``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp

from churn_core.contract import FeatureContract

Counts = npt.NDArray[np.float64]
DriftKind = Literal["numeric", "categorical", "boolean", "score"]
DriftStatus = Literal["ok", "drift", "insufficient_data"]
AlarmStatistic = Literal["psi", "js_distance", "ks_pvalue", "chi2_pvalue"]
DEFAULT_ALARM_ON: tuple[AlarmStatistic, ...] = ("psi", "js_distance", "ks_pvalue", "chi2_pvalue")

# Stand-in share for a bin that is empty on one side: PSI's log ratio is infinite otherwise. Small
# enough that a category seen in 1% of rows on one side only still scores PSI of about 0.05.
EPSILON = 1e-4
# The category name of missing values: a feature going missing is drift like any other shift.
MISSING = "<missing>"


class DriftThresholds(BaseModel):
    """When a feature counts as drifted (the ``drift:`` section of ``configs/monitoring.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    psi: float = Field(0.2, gt=0)
    ks_pvalue: float = Field(0.01, gt=0, lt=1)
    chi2_pvalue: float = Field(0.01, gt=0, lt=1)
    js_distance: float = Field(0.1, gt=0, le=1)
    # A KS/chi-square p-value below its threshold alarms only with PSI at least this large.
    pvalue_min_psi: float = Field(0.1, ge=0)
    min_samples: int = Field(500, ge=1)
    bins: int = Field(10, ge=2)
    # A configuration that can never alarm is a mistake, not a choice: at least one statistic.
    alarm_on: list[AlarmStatistic] = Field(
        default_factory=lambda: list(DEFAULT_ALARM_ON), min_length=1
    )


class FeatureDrift(BaseModel):
    """One feature's (or the score's) drift statistics and verdict.

    Statistics are None when they do not apply (KS for categories, chi-square for numbers) or
    cannot be computed (an empty sample, no non-missing value for KS).
    """

    model_config = ConfigDict(frozen=True)

    feature: str
    kind: DriftKind
    n_reference: int
    n_current: int
    psi: float | None = None
    js_distance: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    chi2_statistic: float | None = None
    chi2_pvalue: float | None = None
    status: DriftStatus
    reasons: list[str] = Field(default_factory=list)


class DriftReport(BaseModel):
    """Drift of every contract feature and the score between a reference and a current window."""

    model_config = ConfigDict(frozen=True)

    features: list[FeatureDrift]
    n_reference: int
    n_current: int
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def drifted(self) -> list[str]:
        """Names of the features (and score) whose status is ``drift``, in report order."""
        return [f.feature for f in self.features if f.status == "drift"]

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per feature, stamped with ``created_at``: rows for a metrics table."""
        return [{"created_at": self.created_at, **f.model_dump()} for f in self.features]


def load_thresholds(path: Path) -> DriftThresholds:
    """Load the ``drift:`` section of a monitoring YAML file; errors name the file and field.

    The section is required: a misspelt key silently falling back to defaults would hide a
    threshold someone meant to change.
    """
    if not path.exists():
        raise FileNotFoundError(f"monitoring config not found: {path}")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict) or "drift" not in loaded:
        raise ValueError(f"{path}: expected a 'drift:' section")
    try:
        return DriftThresholds.model_validate(loaded["drift"] or {})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"{path}: drift: {problems}") from None


def psi(
    reference: pd.Series, current: pd.Series, bins: int = 10, *, categorical: bool | None = None
) -> float:
    """Population stability index of ``current`` against ``reference``.

    Numeric values fall in quantile bins of the reference (so each bin holds about the same
    share of reference rows), categories are compared by frequency including categories unseen
    in the reference; missing values are a bin of their own either way. ``categorical`` None
    decides by dtype (booleans and non-numbers are categorical).
    """
    return _psi(*_histograms(reference, current, bins, categorical))


def js_distance(
    reference: pd.Series, current: pd.Series, bins: int = 10, *, categorical: bool | None = None
) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) on the same bins as ``psi``.

    Unlike PSI it is bounded and needs no epsilon, so one unseen category cannot blow it up.
    """
    return _js_distance(*_histograms(reference, current, bins, categorical))


def ks_test(reference: pd.Series, current: pd.Series) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov (statistic, p-value) on the non-missing values.

    Missing values are left to PSI: KS compares continuous distributions and has no place for
    them. Raises ValueError when either side has no non-missing value.
    """
    ref, cur = _finite_or_nan(reference), _finite_or_nan(current)
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if ref.size == 0 or cur.size == 0:
        raise ValueError("ks_test needs at least one non-missing value on each side")
    result = ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def chi2_test(reference: pd.Series, current: pd.Series) -> tuple[float, float]:
    """Chi-square test of homogeneity (statistic, p-value) on the 2xK table of category counts.

    Missing is a category. Categories with no row on either side are dropped (their expected
    count is zero); with fewer than two categories left there is nothing to compare.
    """
    table = np.vstack(_category_counts(reference, current))
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    result = chi2_contingency(table)
    return float(result.statistic), float(result.pvalue)


def detect_drift(
    contract: FeatureContract,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: DriftThresholds,
    score_column: str | None = "probability",
) -> DriftReport:
    """Compare every contract feature, and the score when both frames have it, and judge drift.

    A contract feature missing from either frame is an error, not a skipped check: silently
    dropping it would report "no drift" for a feature nobody looked at.
    """
    names = contract.feature_names
    absent = sorted({n for n in names if n not in reference or n not in current})
    if absent:
        raise ValueError(f"contract features missing from the reference or current: {absent}")
    results = [
        _feature_drift(spec.name, spec.type, reference[spec.name], current[spec.name], thresholds)
        for spec in contract.features
    ]
    score = _score_column(score_column, names, reference, current)
    if score is not None:
        results.append(_feature_drift(score, "score", reference[score], current[score], thresholds))
    return DriftReport(features=results, n_reference=len(reference), n_current=len(current))


def _score_column(
    score_column: str | None, names: list[str], reference: pd.DataFrame, current: pd.DataFrame
) -> str | None:
    """The score column to compare, or None when it is absent from either frame."""
    # A score column named like a feature is that feature, compared already.
    if score_column is None or score_column in names:
        return None
    if score_column in reference and score_column in current:
        return score_column
    return None


def _feature_drift(
    name: str,
    kind: DriftKind,
    reference: pd.Series,
    current: pd.Series,
    thresholds: DriftThresholds,
) -> FeatureDrift:
    n_ref, n_cur = len(reference), len(current)
    stats = _statistics(kind, reference, current, thresholds.bins) if n_ref and n_cur else {}
    if min(n_ref, n_cur) < thresholds.min_samples:
        status: DriftStatus = "insufficient_data"
        sizes = {"n_reference": n_ref, "n_current": n_cur}
        reasons = [
            f"{side} {n} < min_samples {thresholds.min_samples}"
            for side, n in sizes.items()
            if n < thresholds.min_samples
        ]
    else:
        reasons = _alarm_reasons(stats, thresholds)
        status = "drift" if reasons else "ok"
    return FeatureDrift(
        feature=name,
        kind=kind,
        n_reference=n_ref,
        n_current=n_cur,
        status=status,
        reasons=reasons,
        **stats,
    )


def _statistics(
    kind: DriftKind, reference: pd.Series, current: pd.Series, bins: int
) -> dict[str, float | None]:
    categorical = kind in ("categorical", "boolean")
    ref_counts, cur_counts = _histograms(reference, current, bins, categorical)
    stats: dict[str, float | None] = {
        "psi": _psi(ref_counts, cur_counts),
        "js_distance": _js_distance(ref_counts, cur_counts),
    }
    if categorical:
        stats["chi2_statistic"], stats["chi2_pvalue"] = chi2_test(reference, current)
    elif reference.notna().any() and current.notna().any():
        stats["ks_statistic"], stats["ks_pvalue"] = ks_test(reference, current)
    return stats


def _alarm_reasons(stats: dict[str, float | None], thresholds: DriftThresholds) -> list[str]:
    """Why a feature drifted, one line per statistic past its threshold (empty: no drift)."""
    alarm_on = set(thresholds.alarm_on)
    reasons = []
    for name in ("psi", "js_distance"):
        value, limit = stats.get(name), getattr(thresholds, name)
        if name in alarm_on and value is not None and value >= limit:
            reasons.append(f"{name} {value:.3g} >= {limit:g}")
    effect = stats.get("psi")
    large_enough = effect is not None and effect >= thresholds.pvalue_min_psi
    for name in ("ks_pvalue", "chi2_pvalue"):
        value, limit = stats.get(name), getattr(thresholds, name)
        if name in alarm_on and value is not None and value < limit and large_enough:
            reasons.append(
                f"{name} {value:.3g} < {limit:g} and psi {effect:.3g} >= {thresholds.pvalue_min_psi:g}"
            )
    return reasons


def _histograms(
    reference: pd.Series, current: pd.Series, bins: int, categorical: bool | None
) -> tuple[Counts, Counts]:
    if categorical is None:
        categorical = not _is_number(reference) or not _is_number(current)
    if categorical:
        return _category_counts(reference, current)
    return _numeric_counts(reference, current, bins)


def _is_number(series: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def _numeric_counts(reference: pd.Series, current: pd.Series, bins: int) -> tuple[Counts, Counts]:
    """Counts per reference-quantile bin, the last entry counting missing values."""
    ref, cur = _finite_or_nan(reference), _finite_or_nan(current)
    edges = _quantile_edges(ref[~np.isnan(ref)], bins)
    return _bin_counts(ref, edges), _bin_counts(cur, edges)


def _quantile_edges(values: Counts, bins: int) -> Counts:
    """Inner bin edges at the reference's quantiles.

    Repeated quantiles (a count feature that is mostly 0) collapse into one edge rather than
    empty bins, so discrete features get as many bins as they have distinct levels.
    """
    if values.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))


def _bin_counts(values: Counts, edges: Counts) -> Counts:
    present = values[~np.isnan(values)]
    # side="right": bin i is [edge i-1, edge i), so a value equal to an edge goes up, and values
    # outside the reference's range still land in the open-ended first and last bins.
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=edges.size + 1)
    return np.append(counts, values.size - present.size).astype(np.float64)


def _category_counts(reference: pd.Series, current: pd.Series) -> tuple[Counts, Counts]:
    """Counts per category over the union of both sides' categories (missing is a category)."""
    ref, cur = _as_categories(reference), _as_categories(current)
    categories = sorted(set(ref.unique()) | set(cur.unique()))
    ref_counts = ref.value_counts().reindex(categories, fill_value=0)
    cur_counts = cur.value_counts().reindex(categories, fill_value=0)
    return ref_counts.to_numpy(np.float64), cur_counts.to_numpy(np.float64)


def _as_categories(series: pd.Series) -> pd.Series:
    # Strings, so that an int-coded category and its string form count as the same one.
    return series.astype(object).where(series.notna(), MISSING).astype(str)


def _finite_or_nan(series: pd.Series) -> Counts:
    # Nullable dtypes (Float64, Int64) hold pd.NA, which numpy cannot compare: make it NaN.
    return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def _shares(counts: Counts) -> Counts:
    total = counts.sum()
    if total == 0:
        raise ValueError("cannot compare an empty sample")
    shares: Counts = counts / total
    return shares


def _psi(ref_counts: Counts, cur_counts: Counts) -> float:
    ref = np.clip(_shares(ref_counts), EPSILON, None)
    cur = np.clip(_shares(cur_counts), EPSILON, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _js_distance(ref_counts: Counts, cur_counts: Counts) -> float:
    return float(jensenshannon(_shares(ref_counts), _shares(cur_counts), base=2))
