"""Segments of a contract's report: each row's segment value, shared by the evaluation report
(training/evaluate.py) and the business metrics of batch scoring (churn_core/business.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from churn_core.contract import FeatureSpec, SegmentSpec


def _format_edge(edge: float) -> str:
    return str(int(edge)) if float(edge).is_integer() else repr(float(edge))


def _bin_labels(bins: Sequence[float]) -> list[str]:
    return [f"[{_format_edge(a)}, {_format_edge(b)})" for a, b in itertools.pairwise(bins)]


def segment_values(
    spec: SegmentSpec, feature: FeatureSpec, column: pd.Series
) -> tuple[pd.Series, list[str]]:
    """Each row's segment value (a string) and the declared values in report order.

    Accepts the raw column (category strings, booleans) or the encoded one the trainer holds
    (category codes and 0/1 as floats). Rows without a value are ``missing``; numeric values
    outside the bins are ``out_of_bins``. Both show up only when present.
    """
    if spec.bins:
        numbers = pd.to_numeric(column, errors="coerce").astype(np.float64)
        declared = _bin_labels(spec.bins)
        # right=False: [lo, hi), so a value equal to an edge falls in the bin the edge starts.
        binned = pd.cut(numbers, bins=list(spec.bins), right=False, labels=declared)
        values = binned.astype(object).where(binned.notna(), "out_of_bins")
        values = values.where(numbers.notna(), "missing")
        return values, declared
    if feature.type == "categorical":
        declared = list(feature.categories or [])
        if pd.api.types.is_numeric_dtype(column):
            # Encoded: the value is the index in the contract's category list.
            codes = column.to_numpy(dtype=np.float64, na_value=np.nan)
            lookup = np.array([*declared, "missing"], dtype=object)
            valid = np.isfinite(codes) & (codes >= 0) & (codes < len(declared))
            index = np.where(valid, np.nan_to_num(codes, nan=len(declared)), len(declared))
            return pd.Series(lookup[index.astype(int)], index=column.index), declared
        values = column.astype(object).where(column.notna(), "missing")
        values = values.where(values.isin([*declared, "missing"]), "other")
        return values.astype(str), declared
    # Boolean: raw True/False or encoded 1.0/0.0.
    declared = ["false", "true"]
    numbers = pd.to_numeric(column.astype(object), errors="coerce").astype(np.float64)
    values = pd.Series(np.where(numbers > 0.5, "true", "false"), index=column.index, dtype=object)
    return values.where(numbers.notna(), "missing"), declared
