"""Global feature importance of one model version, by several measures, per contract feature.

Measures (none normalised: each is in its own unit, and every contract feature has every measure,
0.0 when the trees never split on it):

* ``gain``: average loss reduction of the splits on the feature (XGBoost ``gain``). Favours a
  feature split on rarely but decisively.
* ``total_gain``: summed loss reduction (``total_gain``): average gain times ``weight``.
* ``cover``: average number of (hessian-weighted) training rows reaching those splits.
* ``weight``: number of splits on the feature.
* ``mean_abs_shap``: mean |SHAP contribution| in log-odds over a sample of rows, from XGBoost's
  own TreeSHAP (``pred_contribs=True``). The only measure computed on data (use held-out rows),
  and the one that says how much a feature moves actual predictions.

To compare features within a measure, divide by the measure's sum (the report's bar chart does).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churn_core.model import ChurnModel

TREE_MEASURES = ("gain", "total_gain", "cover", "weight")
SHAP_MEASURE = "mean_abs_shap"
# TreeSHAP costs O(rows x trees x leaves x depth^2); a few thousand rows pin the mean well.
DEFAULT_SHAP_ROWS = 2000


def encoded_features(model: ChurnModel, features: pd.DataFrame | np.ndarray) -> np.ndarray:
    """The float32 model matrix of ``features``: encoded already, or raw contract columns.

    A frame counts as encoded when every categorical feature column is numeric (category codes),
    which is what the trainer's held-out split holds; raw frames carry category strings.
    """
    if isinstance(features, np.ndarray):
        matrix = features
    else:
        contract = model.contract
        categorical = [f.name for f in contract.features if f.type == "categorical"]
        columns = features[contract.feature_names]
        if all(pd.api.types.is_numeric_dtype(columns[name]) for name in categorical):
            matrix = columns.to_numpy(dtype=np.float32, na_value=np.nan)
        else:
            matrix = model.encoder.encode_frame(columns)
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != len(model.contract.features):
        raise ValueError(
            f"expected {len(model.contract.features)} feature columns, got shape {matrix.shape}"
        )
    return matrix


def mean_abs_shap(
    model: ChurnModel,
    features: pd.DataFrame | np.ndarray,
    max_rows: int = DEFAULT_SHAP_ROWS,
    seed: int = 0,
) -> dict[str, float]:
    """Mean |SHAP| per contract feature over at most ``max_rows`` rows (a seeded sample)."""
    matrix = encoded_features(model, features)
    names = model.contract.feature_names
    if len(matrix) == 0:
        return dict.fromkeys(names, 0.0)
    if len(matrix) > max_rows:
        rows = np.random.default_rng(seed).choice(len(matrix), size=max_rows, replace=False)
        matrix = matrix[np.sort(rows)]
    contribs = np.asarray(model.booster.predict(model.encoder.dmatrix(matrix), pred_contribs=True))
    means = np.abs(contribs[:, :-1]).mean(axis=0)  # the last column is the bias
    return {name: float(value) for name, value in zip(names, means, strict=True)}


def feature_importance(
    model: ChurnModel,
    features: pd.DataFrame | np.ndarray | None = None,
    max_rows: int = DEFAULT_SHAP_ROWS,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Importance by measure, then by feature: ``{"gain": {"tenure_days": 12.3, ...}, ...}``.

    Features are in contract order under every measure. ``mean_abs_shap`` is present only when
    ``features`` (rows to explain, raw or encoded) is given.
    """
    result = {measure: model.feature_importance(measure) for measure in TREE_MEASURES}
    if features is not None:
        result[SHAP_MEASURE] = mean_abs_shap(model, features, max_rows=max_rows, seed=seed)
    return result
