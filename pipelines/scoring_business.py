"""Business metrics of a committed scoring slice: the scores joined to the gold columns the
contract's ``business`` section names (revenue, segments), summarised by churn_core.business."""

from __future__ import annotations

import pandas as pd

from churn_core.business import SegmentBusiness, business_metrics
from pipelines.scoring import ScoringPlan, query


def slice_business_frame(plan: ScoringPlan) -> pd.DataFrame:
    """Probability, revenue and segment columns of every customer of the committed slice."""
    from deltalake import DeltaTable

    contract = plan.model.contract
    assert contract.business is not None  # callers check
    columns = [contract.business.revenue, *(s.column for s in contract.business_segments)]
    selected = ", ".join(f'g."{c}"' for c in dict.fromkeys(columns))
    on = f'CAST(g."{plan.entity_key}" AS VARCHAR) = s.customer_id'
    if plan.snapshot_column:
        on += f" AND g.\"{plan.snapshot_column}\" = DATE '{plan.snapshot.isoformat()}'"
    statement = (
        f"SELECT s.probability, {selected} FROM scores s JOIN gold g ON {on} "
        f"WHERE {plan.slice_filter('s')}"
    )
    gold = DeltaTable(plan.gold_path, version=plan.gold_version)
    return query({"scores": DeltaTable(plan.scores_path), "gold": gold}, statement).to_pandas()


def slice_business_metrics(plan: ScoringPlan) -> list[SegmentBusiness]:
    """The slice's business metrics at the plan's threshold (empty without a business section)."""
    if plan.model.contract.business is None:
        return []
    return business_metrics(slice_business_frame(plan), plan.model.contract, plan.threshold)
