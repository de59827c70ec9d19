"""The predictor used everywhere a model scores: training evaluation, online serving, batch scoring.

Encoding is derived from the feature contract, so the preprocessing travels with the model:
categorical values become their index in the contract's category list (unknown or missing become
NaN, which XGBoost routes down its learned default branch), booleans become 0/1 and the contract's
missing-value policy fills imputed columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from churn_core.contract import FeatureContract, FeatureSpec


def _encode_value(spec: FeatureSpec, value: Any, codes: Mapping[str, int]) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if spec.missing != "impute":
            return math.nan
        value = spec.impute_value
    if spec.type == "categorical":
        return float(codes.get(str(value), math.nan))
    if spec.type == "boolean":
        return 1.0 if bool(value) else 0.0
    return float(value)


@dataclass(frozen=True)
class FeatureEncoder:
    """Turns records or frames into the float32 matrix the model was trained on."""

    contract: FeatureContract
    _codes: dict[str, dict[str, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        codes = {
            f.name: {c: i for i, c in enumerate(f.categories or [])}
            for f in self.contract.features
            if f.type == "categorical"
        }
        object.__setattr__(self, "_codes", codes)

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Encode a few records (the online path: no pandas, ~microseconds per row)."""
        features = self.contract.features
        matrix = np.empty((len(records), len(features)), dtype=np.float32)
        # A column at a time: one numpy assignment per feature, not one per cell (3x faster).
        for col, spec in enumerate(features):
            codes = self._codes.get(spec.name, {})
            matrix[:, col] = [_encode_value(spec, r.get(spec.name), codes) for r in records]
        return matrix

    def encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode a whole frame column by column (the batch path: vectorised)."""
        columns = []
        for spec in self.contract.features:
            series = frame[spec.name]
            if spec.missing == "impute":
                series = series.where(series.notna(), spec.impute_value)
            if spec.type == "categorical":
                codes = pd.Categorical(series, categories=spec.categories).codes
                column = np.where(codes < 0, np.nan, codes).astype(np.float32)
            else:
                # Nullable dtypes (pd.NA, as Arrow-backed readers give) become NaN here.
                column = series.to_numpy(dtype=np.float32, na_value=np.nan)
            columns.append(column)
        return np.column_stack(columns) if columns else np.empty((len(frame), 0), np.float32)

    def dmatrix(self, matrix: np.ndarray, label: np.ndarray | None = None) -> xgb.DMatrix:
        """An XGBoost DMatrix carrying the contract's feature names and types."""
        return xgb.DMatrix(
            matrix,
            label=label,
            feature_names=self.contract.feature_names,
            feature_types=self.contract.xgboost_feature_types,
            enable_categorical=True,
        )


@dataclass(frozen=True)
class Reason:
    """One feature's contribution to a prediction, in log-odds (positive pushes toward churn)."""

    feature: str
    contribution: float


@dataclass
class ChurnModel:
    """A booster plus the contract it was trained on; one object for online and batch scoring."""

    booster: xgb.Booster
    contract: FeatureContract
    version: int | None = None
    encoder: FeatureEncoder = field(init=False)

    def __post_init__(self) -> None:
        self.encoder = FeatureEncoder(self.contract)
        if list(self.booster.feature_names or []) != self.contract.feature_names:
            raise ValueError("model features do not match its contract's features")

    @classmethod
    def from_bytes(
        cls, raw: bytes, contract: FeatureContract, version: int | None = None, nthread: int = 1
    ) -> ChurnModel:
        """Load a saved booster (UBJSON or JSON bytes)."""
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        # One thread per call: requests are tiny and threads cost more than they save.
        booster.set_param({"nthread": nthread})
        return cls(booster=booster, contract=contract, version=version)

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Churn probabilities for an encoded matrix."""
        return np.asarray(self.booster.inplace_predict(matrix), dtype=np.float64)

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Churn probabilities for raw feature records."""
        return self.predict_matrix(self.encoder.encode_records(records))

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Churn probabilities for a frame holding the contract's feature columns."""
        return self.predict_matrix(self.encoder.encode_frame(frame))

    def explain_matrix(
        self, matrix: np.ndarray, top_k: int, approximate: bool = False
    ) -> list[list[Reason]]:
        """Top ``top_k`` SHAP contributions per row, largest absolute value first.

        ``approximate`` uses Saabas attributions (each split's gain credited along the path):
        ~10x faster than exact TreeSHAP (~75 us a row for 200 depth-6 trees here) and the same
        top feature for ~80% of rows.
        """
        if top_k <= 0 or len(matrix) == 0:
            return [[] for _ in range(len(matrix))]
        contribs = self.booster.predict(
            self.encoder.dmatrix(matrix), pred_contribs=True, approx_contribs=approximate
        )
        names = self.contract.feature_names
        reasons = []
        for row in np.asarray(contribs)[:, :-1]:  # the last column is the bias
            order = np.argsort(-np.abs(row))[:top_k]
            reasons.append([Reason(names[i], float(row[i])) for i in order])
        return reasons

    def feature_importance(self, importance_type: str = "gain") -> dict[str, float]:
        """Global importance per contract feature (features never split on get 0)."""
        scores = self.booster.get_score(importance_type=importance_type)
        values = {name: scores.get(name, 0.0) for name in self.contract.feature_names}
        # get_score gives one float per feature for tree models (lists only for linear boosters).
        return {
            name: float(v) if isinstance(v, float) else float(v[0]) for name, v in values.items()
        }
