"""Business metrics of a scored customer base: what retention teams plan with.

For the whole base and each segment the contract declares (``business`` in the contract):
customers, predicted churn rate (mean probability), expected churners (sum of probabilities),
monthly revenue and revenue at risk (sum of revenue x probability), and the retention campaign
at the model's threshold (customers at or above it, and their revenue at risk). Pure functions
over arrays; batch scoring feeds them the committed slice joined to gold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from churn_core.contract import FeatureContract
from churn_core.segments import segment_values

ALL = "all"

# Field -> (metric name, help) of the gauges `churn score` publishes per segment; the Grafana
# model dashboard (monitoring/dashboards.py) queries these names.
METRICS: dict[str, tuple[str, str]] = {
    "customers": ("churn_business_customers", "Customers scored in the latest snapshot."),
    "predicted_churn_rate": (
        "churn_business_predicted_churn_rate",
        "Mean predicted probability of churn (expected share of customers leaving).",
    ),
    "expected_churners": (
        "churn_business_expected_churners",
        "Sum of predicted probabilities: customers expected to leave.",
    ),
    "monthly_revenue": (
        "churn_business_monthly_revenue",
        "Monthly revenue of the customers scored.",
    ),
    "revenue_at_risk": (
        "churn_business_revenue_at_risk",
        "Sum of monthly revenue x probability of churn.",
    ),
    "campaign_size": (
        "churn_business_campaign_size",
        "Customers at or above the model's threshold: the retention campaign's size.",
    ),
    "campaign_revenue_at_risk": (
        "churn_business_campaign_revenue_at_risk",
        "Revenue at risk of the customers the campaign targets.",
    ),
}


@dataclass(frozen=True)
class SegmentBusiness:
    """The business metrics of one segment (``all`` for the whole base)."""

    segment: str
    customers: int
    predicted_churn_rate: float
    expected_churners: float
    monthly_revenue: float
    revenue_at_risk: float
    campaign_size: int
    campaign_revenue_at_risk: float

    def as_dict(self) -> dict[str, float | int | str]:
        """Plain values (JSON, metrics)."""
        return asdict(self)


def _summarise(
    segment: str, probability: np.ndarray, revenue: np.ndarray, threshold: float
) -> SegmentBusiness:
    # A customer without a revenue value counts as a churner but adds no revenue: the sums stay
    # honest lower bounds instead of becoming NaN.
    revenue = np.nan_to_num(revenue, nan=0.0)
    at_risk = revenue * probability
    targeted = probability >= threshold
    return SegmentBusiness(
        segment=segment,
        customers=int(probability.size),
        predicted_churn_rate=float(probability.mean()) if probability.size else 0.0,
        expected_churners=float(probability.sum()),
        monthly_revenue=float(revenue.sum()),
        revenue_at_risk=float(at_risk.sum()),
        campaign_size=int(targeted.sum()),
        campaign_revenue_at_risk=float(at_risk[targeted].sum()),
    )


def business_metrics(
    frame: pd.DataFrame, contract: FeatureContract, threshold: float
) -> list[SegmentBusiness]:
    """The whole base first, then every segment value present, in the contract's order.

    ``frame`` holds ``probability``, the contract's revenue feature and each segment column
    (raw gold values). Raises ``ValueError`` naming what is missing.
    """
    if contract.business is None:
        raise ValueError(f"contract {contract.name!r} declares no business section")
    revenue_column = contract.business.revenue
    segments = contract.business_segments
    needed = ["probability", revenue_column, *(s.column for s in segments)]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"business metrics need columns {missing}")
    probability = frame["probability"].to_numpy(dtype=np.float64)
    if np.isnan(probability).any():
        raise ValueError("business metrics: a probability is missing")
    revenue = pd.to_numeric(frame[revenue_column], errors="coerce").to_numpy(dtype=np.float64)
    rows = [_summarise(ALL, probability, revenue, threshold)]
    for spec in segments:
        values, declared = segment_values(spec, contract.feature(spec.column), frame[spec.column])
        keys = values.to_numpy(dtype=object)
        present = set(keys.tolist())
        order = [v for v in declared if v in present] + sorted(present - set(declared))
        for value in order:
            mask = keys == value
            rows.append(
                _summarise(f"{spec.label}={value}", probability[mask], revenue[mask], threshold)
            )
    return rows
