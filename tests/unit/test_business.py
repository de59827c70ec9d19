"""Business metrics: churn rate, revenue at risk and campaign size, overall and per segment,
checked against an independent pandas computation; the contract's business section validated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churn_core.business import ALL, business_metrics
from churn_core.contract import FeatureContract, load_contract
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def saas() -> FeatureContract:
    return load_contract(REPO_ROOT / "configs" / "contracts" / "saas.yaml")


def frame(rows: int = 2_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "probability": rng.beta(1.5, 5, rows),
            "monthly_fee": rng.uniform(10, 200, rows).round(2),
            "contract_type": rng.choice(["month_to_month", "one_year", "two_year"], rows),
            "plan": rng.choice(["basic", "standard", "premium"], rows),
            "tenure_days": rng.integers(0, 1500, rows),
        }
    )


def test_the_whole_base_matches_a_direct_computation(saas: FeatureContract) -> None:
    data = frame()
    base = business_metrics(data, saas, threshold=0.4)[0]
    assert base.segment == ALL
    assert base.customers == len(data)
    assert base.predicted_churn_rate == pytest.approx(data.probability.mean())
    assert base.expected_churners == pytest.approx(data.probability.sum())
    assert base.revenue_at_risk == pytest.approx((data.monthly_fee * data.probability).sum())
    targeted = data[data.probability >= 0.4]
    assert base.campaign_size == len(targeted)
    assert base.campaign_revenue_at_risk == pytest.approx(
        (targeted.monthly_fee * targeted.probability).sum()
    )


def test_segments_partition_the_base(saas: FeatureContract) -> None:
    data = frame()
    rows = business_metrics(data, saas, threshold=0.4)
    by_key = {row.segment: row for row in rows}
    # Every declared segment of the contract's report, each a partition of the base.
    for prefix in ("contract_type", "plan", "tenure_band"):
        parts = [row for key, row in by_key.items() if key.startswith(prefix + "=")]
        assert sum(p.customers for p in parts) == len(data)
        assert sum(p.revenue_at_risk for p in parts) == pytest.approx(by_key[ALL].revenue_at_risk)
        assert sum(p.campaign_size for p in parts) == by_key[ALL].campaign_size
    monthly = data[data.contract_type == "month_to_month"]
    row = by_key["contract_type=month_to_month"]
    assert row.customers == len(monthly)
    assert row.predicted_churn_rate == pytest.approx(monthly.probability.mean())
    # Right-open bins, as the evaluation report cuts them: [90, 365) holds 90 but not 365.
    band = data[(data.tenure_days >= 90) & (data.tenure_days < 365)]
    assert by_key["tenure_band=[90, 365)"].customers == len(band)


def test_a_missing_revenue_adds_no_revenue_but_counts_the_customer(saas: FeatureContract) -> None:
    data = frame(rows=10)
    data.loc[0, "monthly_fee"] = np.nan
    data.loc[0, "probability"] = 0.99
    base = business_metrics(data, saas, threshold=0.5)[0]
    assert base.customers == 10 and base.campaign_size >= 1
    rest = data.iloc[1:]
    assert base.revenue_at_risk == pytest.approx((rest.monthly_fee * rest.probability).sum())


def test_missing_columns_and_probabilities_are_named(saas: FeatureContract) -> None:
    with pytest.raises(ValueError, match=r"columns \['monthly_fee'\]"):
        business_metrics(frame().drop(columns="monthly_fee"), saas, 0.5)
    broken = frame()
    broken.loc[3, "probability"] = np.nan
    with pytest.raises(ValueError, match="probability is missing"):
        business_metrics(broken, saas, 0.5)


@pytest.mark.parametrize(
    ("business", "says"),
    [
        ({"revenue": "plan"}, "revenue 'plan' is not a numeric feature"),
        ({"revenue": "no_such"}, "revenue 'no_such' is not a numeric feature"),
        (
            {"revenue": "monthly_fee", "segments": [{"column": "tenure_days"}]},
            "needs bins exactly when it is numeric",
        ),
    ],
)
def test_the_contract_refuses_a_bad_business_section(
    saas: FeatureContract, business: dict[str, object], says: str
) -> None:
    data = saas.model_dump()
    data["business"] = business
    with pytest.raises(ValueError, match=says):
        FeatureContract.model_validate(data)
