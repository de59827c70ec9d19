"""Properties of the sample data generator that downstream pipelines and models rely on."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import sample_data
from pipelines.sample_data import GenerationSummary, generate_sample_data

N_CUSTOMERS = 4_000
CHUNK_SIZE = 1_500  # several chunks, the last one partial
PAGE_SIZE = 300  # pages that straddle chunk boundaries
START = date(2024, 1, 1)
END = date(2025, 12, 31)
WINDOW_START = pd.Timestamp(START)
WINDOW_END = pd.Timestamp(END) + pd.Timedelta(days=1)  # exclusive
ISO_SECONDS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")

EXPECTED_SCHEMA = [
    ("customer_id", pa.string()),
    ("signup_date", pa.date32()),
    ("plan", pa.string()),
    ("contract_type", pa.string()),
    ("monthly_fee", pa.float64()),
    ("region", pa.string()),
    ("age", pa.int64()),
    ("payment_method", pa.string()),
    ("autopay", pa.bool_()),
    ("cancelled_at", pa.timestamp("us")),
    ("updated_at", pa.timestamp("us")),
]
PLAN_CHANGE_SCHEMA = [
    ("change_id", pa.string()),
    ("customer_id", pa.string()),
    ("changed_at", pa.timestamp("us")),
    ("change_type", pa.string()),
    ("from_plan", pa.string()),
    ("to_plan", pa.string()),
    ("from_contract", pa.string()),
    ("to_contract", pa.string()),
]
PLAN_LEVEL = {"basic": 0, "standard": 1, "premium": 2}


@dataclass(frozen=True)
class Dataset:
    out_dir: Path
    summary: GenerationSummary
    progress: list[int]
    customers: pd.DataFrame
    transaction_lines: list[str]
    transactions: pd.DataFrame  # one row per message, duplicates included
    pages: list[tuple[Path, dict[str, Any]]]
    support: pd.DataFrame
    plan_changes: pd.DataFrame


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _parse_times(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format="%Y-%m-%dT%H:%M:%S")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out_dir = tmp_path_factory.mktemp("sample")
    seen: list[int] = []
    summary = generate_sample_data(
        out_dir,
        N_CUSTOMERS,
        seed=11,
        start=START,
        end=END,
        chunk_size=CHUNK_SIZE,
        page_size=PAGE_SIZE,
        progress=seen.append,
    )
    customers = pq.read_table(out_dir / "customers").to_pandas()
    customers["signup_date"] = pd.to_datetime(customers["signup_date"])

    lines = [
        line
        for path in sorted((out_dir / "transactions").glob("part-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    transactions = pd.DataFrame([json.loads(line) for line in lines])
    transactions["event_time"] = _parse_times(transactions["event_time"])

    pages = [
        (path, json.loads(path.read_text()))
        for path in sorted((out_dir / "support").glob("page-*.json"))
    ]
    support = pd.DataFrame([record for _, page in pages for record in page["records"]])
    support["record_time"] = _parse_times(support["record_time"])
    plan_changes = pq.read_table(out_dir / "plan_changes").to_pandas()
    return Dataset(
        out_dir, summary, seen, customers, lines, transactions, pages, support, plan_changes
    )


def _with_customer(events: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    columns = ["customer_id", "signup_date", "cancelled_at", "autopay", "contract_type"]
    return events.merge(customers[columns], on="customer_id", how="left", validate="m:1")


def _churned_in_window(customers: pd.DataFrame) -> pd.DataFrame:
    cancelled = customers["cancelled_at"]
    return customers[cancelled.notna() & (cancelled >= WINDOW_START + pd.Timedelta(days=180))]


# --- files and schema ---------------------------------------------------------------------------


def test_layout_one_file_per_chunk(data: Dataset) -> None:
    chunks = -(-N_CUSTOMERS // CHUNK_SIZE)
    names = sorted(p.name for p in (data.out_dir / "customers").iterdir())
    assert names == [f"part-{i:05d}.parquet" for i in range(chunks)]
    names = sorted(p.name for p in (data.out_dir / "transactions").iterdir())
    assert names == [f"part-{i:05d}.jsonl" for i in range(chunks)]
    names = sorted(p.name for p in (data.out_dir / "plan_changes").iterdir())
    assert names == [f"part-{i:05d}.parquet" for i in range(chunks)]
    assert data.progress == [1_500, 3_000, 4_000]


def test_customers_schema_is_exact(data: Dataset) -> None:
    for path in sorted((data.out_dir / "customers").glob("*.parquet")):
        schema = pq.read_schema(path)
        assert [(f.name, f.type) for f in schema] == EXPECTED_SCHEMA
        assert schema.metadata is None or b"pandas" not in schema.metadata


def test_customer_values(data: Dataset) -> None:
    c = data.customers
    assert len(c) == N_CUSTOMERS
    assert c["customer_id"].tolist() == [f"C{i:09d}" for i in range(1, N_CUSTOMERS + 1)]
    assert set(c["plan"]) == {"basic", "standard", "premium"}
    assert set(c["contract_type"]) == {"month_to_month", "one_year", "two_year"}
    assert set(c["region"]) == {"north", "south", "east", "west", "central"}
    assert set(c["payment_method"]) == {"credit_card", "bank_transfer", "paypal", "invoice"}
    assert c["signup_date"].min() >= pd.Timestamp(2021, 1, 1)
    assert c["signup_date"].max() <= pd.Timestamp(END) - pd.Timedelta(days=30)
    assert (c["monthly_fee"] > 0).all()
    assert np.allclose(c["monthly_fee"] * 100, np.rint(c["monthly_fee"] * 100))
    # Plans are priced in order even after noise and contract discounts, on average.
    mean_fee = c.groupby("plan")["monthly_fee"].mean()
    assert mean_fee["basic"] < mean_fee["standard"] < mean_fee["premium"]
    age = c["age"].dropna()
    assert age.between(18, 90).all()
    assert 0.01 < c["age"].isna().mean() < 0.035
    cancelled = c["cancelled_at"].notna()
    assert (c.loc[cancelled, "updated_at"] == c.loc[cancelled, "cancelled_at"]).all()
    assert (c.loc[cancelled, "cancelled_at"] > c.loc[cancelled, "signup_date"]).all()
    assert (c["cancelled_at"].dropna() < WINDOW_END).all()
    active = c[~cancelled]
    assert (active["updated_at"] >= active["signup_date"]).all()
    assert (active["updated_at"] < WINDOW_END).all()


def test_summary_matches_files(data: Dataset) -> None:
    s = data.summary
    assert s.customers == len(data.customers) == N_CUSTOMERS
    assert s.transactions == len(data.transaction_lines) == len(data.transactions)
    assert s.support_records == len(data.support)
    assert s.pages == len(data.pages)
    assert s.plan_changes == len(data.plan_changes)
    assert s.churned == int(data.customers["cancelled_at"].notna().sum())
    assert s.seconds > 0


# --- determinism --------------------------------------------------------------------------------


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    args: dict[str, Any] = {"n_customers": 1_200, "seed": 5, "chunk_size": 500, "page_size": 200}
    generate_sample_data(tmp_path / "a", **args)
    generate_sample_data(tmp_path / "b", **args)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) > 5
    assert "plan_changes/part-00002.parquet" in first
    assert first == second


def test_other_sources_do_not_depend_on_the_plan_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The plan history has its own generator: without it, every other file is unchanged.
    args: dict[str, Any] = {"n_customers": 900, "seed": 4, "chunk_size": 400, "page_size": 150}
    generate_sample_data(tmp_path / "with", **args)
    fields = dataclasses.fields(sample_data._PlanChanges)

    def no_changes(rng: np.random.Generator, c: Any, window: Any) -> Any:
        return sample_data._PlanChanges(**{f.name: np.empty(0, np.int64) for f in fields})

    monkeypatch.setattr(sample_data, "_draw_plan_changes", no_changes)
    summary = generate_sample_data(tmp_path / "without", **args)
    assert summary.plan_changes == 0
    with_history, without = _files(tmp_path / "with"), _files(tmp_path / "without")
    assert with_history.keys() == without.keys()
    others = [k for k in without if not k.startswith("plan_changes/")]
    assert len(others) > 5
    assert all(with_history[k] == without[k] for k in others)
    assert (
        with_history["plan_changes/part-00000.parquet"]
        != without["plan_changes/part-00000.parquet"]
    )
    empty = pq.read_table(tmp_path / "without" / "plan_changes" / "part-00000.parquet")
    assert empty.num_rows == 0
    assert [(f.name, f.type) for f in empty.schema] == PLAN_CHANGE_SCHEMA


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    generate_sample_data(tmp_path / "a", 500, seed=1)
    generate_sample_data(tmp_path / "b", 500, seed=2)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first.keys() & second.keys()
    for name in (
        "customers/part-00000.parquet",
        "transactions/part-00000.jsonl",
        "plan_changes/part-00000.parquet",
    ):
        assert first[name] != second[name]


def test_rerun_replaces_previous_output(tmp_path: Path) -> None:
    generate_sample_data(tmp_path, 1_000, chunk_size=200, page_size=100)
    (tmp_path / "support" / "stale.json").write_text("{}")
    (tmp_path / "keep.txt").write_text("not ours")
    summary = generate_sample_data(tmp_path, 300, chunk_size=200, page_size=100)
    fresh = tmp_path / "fresh"
    generate_sample_data(fresh, 300, chunk_size=200, page_size=100)
    rerun = {k: v for k, v in _files(tmp_path).items() if not k.startswith("fresh")}
    assert rerun.pop("keep.txt") == b"not ours"
    assert rerun == _files(fresh)
    assert len(list((tmp_path / "support").iterdir())) == summary.pages


# --- transactions -------------------------------------------------------------------------------


def test_transaction_messages_are_well_formed(data: Dataset) -> None:
    keys = {"event_id", "customer_id", "event_time", "event_type", "amount"}
    for line in data.transaction_lines[:2_000]:
        message = json.loads(line)
        assert set(message) == keys
        assert ISO_SECONDS.match(message["event_time"])
        assert isinstance(message["amount"], float)
        assert re.search(r'"amount":\d+\.\d\d}$', line)
    tx = data.transactions
    assert set(tx["event_type"]) == {"payment", "payment_failed", "addon_purchase", "refund"}
    assert (tx["amount"] > 0).all()
    assert set(tx["customer_id"]) <= set(data.customers["customer_id"])


def test_duplicates_are_exact_and_about_half_a_percent(data: Dataset) -> None:
    tx = data.transactions
    duplicates = tx.duplicated(keep="first")
    rate = duplicates.mean()
    assert 0.003 < rate < 0.007, rate
    # A duplicate repeats the whole message; distinct events never share an id.
    assert tx.drop_duplicates()["event_id"].is_unique
    assert len(set(data.transaction_lines)) == len(tx) - duplicates.sum()


def test_transactions_are_out_of_order(data: Dataset) -> None:
    first_file = data.out_dir / "transactions" / "part-00000.jsonl"
    times = [json.loads(line)["event_time"] for line in first_file.read_text().splitlines()]
    backwards = sum(a > b for a, b in itertools.pairwise(times))
    assert backwards > len(times) // 4


def test_transactions_respect_signup_cancel_and_window(data: Dataset) -> None:
    tx = _with_customer(data.transactions, data.customers)
    assert (tx["event_time"] >= tx["signup_date"]).all()
    assert (tx["event_time"] >= WINDOW_START).all()
    assert (tx["event_time"] < WINDOW_END).all()
    cancelled = tx[tx["cancelled_at"].notna()]
    assert (cancelled["event_time"] < cancelled["cancelled_at"]).all()
    # Customers who left before the window have no events in it.
    gone = data.customers[data.customers["cancelled_at"] < WINDOW_START]
    assert len(gone) > 0
    assert not set(gone["customer_id"]) & set(tx["customer_id"])


def test_every_active_month_is_billed(data: Dataset) -> None:
    c = data.customers
    loyal = c[c["cancelled_at"].isna() & (c["signup_date"] < WINDOW_START)]["customer_id"]
    assert len(loyal) > 100
    tx = data.transactions
    charges = tx[tx["event_type"].isin(["payment", "payment_failed"])]
    charges = charges[charges["customer_id"].isin(loyal)]
    months = charges.groupby("customer_id")["event_time"].apply(
        lambda t: t.dt.to_period("M").nunique()
    )
    assert len(months) == len(loyal)
    assert (months == 24).all()
    # Roughly one charge per month: failures add retries, but not many.
    per_month = charges.drop_duplicates("event_id").groupby("customer_id").size() / 24
    assert 1.0 <= per_month.mean() < 1.15


def test_payment_amount_is_the_monthly_fee(data: Dataset) -> None:
    tx = data.transactions
    payments = tx[tx["event_type"] == "payment"].merge(
        data.customers[["customer_id", "monthly_fee"]], on="customer_id"
    )
    assert np.allclose(payments["amount"], payments["monthly_fee"])


# --- support pages ------------------------------------------------------------------------------


def test_pages_are_a_consistent_chain(data: Dataset) -> None:
    total = len(data.pages)
    assert total == -(-len(data.support) // PAGE_SIZE)
    for number, (path, page) in enumerate(data.pages, start=1):
        assert path.name == f"page-{number:05d}.json"
        assert set(page) == {"page", "page_size", "total_pages", "next_page", "records"}
        assert page["page"] == number
        assert page["page_size"] == PAGE_SIZE
        assert page["total_pages"] == total
        assert page["next_page"] == (number + 1 if number < total else None)
        # Only the last page may be short.
        if number < total:
            assert len(page["records"]) == PAGE_SIZE
        else:
            assert 1 <= len(page["records"]) <= PAGE_SIZE


def test_support_records_are_well_formed(data: Dataset) -> None:
    s = data.support
    assert list(s.columns) == ["record_id", "customer_id", "record_time", "record_type", "value"]
    assert s["record_id"].is_unique
    assert set(s["record_type"]) == {"ticket", "usage"}
    tickets = s[s["record_type"] == "ticket"]
    assert set(tickets["value"]) == {1.0, 2.0, 3.0}
    usage = s[s["record_type"] == "usage"]
    assert (usage["value"] >= 0).all()
    month_end = usage["record_time"].dt.normalize() + pd.offsets.MonthEnd(0)
    assert (usage["record_time"] == month_end + pd.Timedelta(seconds=86_399)).all()
    # The API returns records ordered by customer, then time.
    ordered = s.sort_values(["customer_id", "record_time"], kind="stable")
    assert ordered.index.equals(s.index)


def test_support_respects_signup_cancel_and_window(data: Dataset) -> None:
    s = _with_customer(data.support, data.customers)
    assert (s["record_time"] >= s["signup_date"]).all()
    assert (s["record_time"] >= WINDOW_START).all()
    assert (s["record_time"] < WINDOW_END).all()
    cancelled = s[s["cancelled_at"].notna()]
    assert (cancelled["record_time"] < cancelled["cancelled_at"]).all()


def test_single_empty_page_when_no_records(tmp_path: Path) -> None:
    # A two-day window without a month end: this customer has no records at all.
    summary = generate_sample_data(
        tmp_path, 1, seed=0, start=date(2020, 1, 1), end=date(2020, 1, 2), page_size=10
    )
    assert summary.support_records == 0
    assert summary.pages == 1
    pages = [json.loads(p.read_text()) for p in sorted((tmp_path / "support").iterdir())]
    assert pages == [
        {"page": 1, "page_size": 10, "records": [], "next_page": None, "total_pages": 1}
    ]


# --- plan changes -------------------------------------------------------------------------------


def test_plan_changes_schema_is_exact(data: Dataset) -> None:
    for path in sorted((data.out_dir / "plan_changes").glob("*.parquet")):
        schema = pq.read_schema(path)
        assert [(f.name, f.type) for f in schema] == PLAN_CHANGE_SCHEMA
        assert schema.metadata is None or b"pandas" not in schema.metadata


def test_plan_changes_are_well_formed(data: Dataset) -> None:
    ch = data.plan_changes
    assert len(ch) > 300
    assert ch.notna().all().all()
    assert ch["change_id"].is_unique
    assert set(ch["customer_id"]) <= set(data.customers["customer_id"])
    ids = ch["change_id"].str.extract(r"^P(\d{9})-(\d{4})$")
    assert ids.notna().all().all()
    assert ("C" + ids[0]).equals(ch["customer_id"])
    # Whole seconds.
    assert (ch["changed_at"] == ch["changed_at"].dt.floor("s")).all()
    # The table is ordered by customer, then time, and seq numbers each customer's changes.
    ordered = ch.sort_values(["customer_id", "changed_at"], kind="stable")
    assert ordered.index.equals(ch.index)
    assert (ids[1].astype(int) == ch.groupby("customer_id").cumcount() + 1).all()


def test_plan_changes_move_one_thing_within_valid_values(data: Dataset) -> None:
    ch = data.plan_changes
    assert set(ch["change_type"]) == {"upgrade", "downgrade", "contract_change"}
    assert set(ch["from_plan"]) | set(ch["to_plan"]) == set(PLAN_LEVEL)
    contracts = {"month_to_month", "one_year", "two_year"}
    assert set(ch["from_contract"]) | set(ch["to_contract"]) == contracts
    step = ch["to_plan"].map(PLAN_LEVEL) - ch["from_plan"].map(PLAN_LEVEL)
    same_contract = ch["from_contract"] == ch["to_contract"]
    kind = ch["change_type"]
    assert ((step == 1) & same_contract)[kind == "upgrade"].all()
    assert ((step == -1) & same_contract)[kind == "downgrade"].all()
    assert ((step == 0) & ~same_contract)[kind == "contract_change"].all()


def test_plan_history_chains_from_the_signup_values(data: Dataset) -> None:
    ch = data.plan_changes.merge(
        data.customers[["customer_id", "plan", "contract_type"]], on="customer_id"
    )
    by_customer = ch.groupby("customer_id")
    previous_plan = by_customer["to_plan"].shift().fillna(ch["plan"])
    previous_contract = by_customer["to_contract"].shift().fillna(ch["contract_type"])
    assert (ch["from_plan"] == previous_plan).all()
    assert (ch["from_contract"] == previous_contract).all()
    assert (by_customer.size() > 1).sum() > 20  # the chain is exercised


def test_plan_changes_respect_signup_cancel_and_window(data: Dataset) -> None:
    ch = _with_customer(data.plan_changes, data.customers)
    assert (ch["changed_at"] >= ch["signup_date"]).all()
    assert (ch["changed_at"] >= WINDOW_START).all()
    assert (ch["changed_at"] < WINDOW_END).all()
    cancelled = ch[ch["cancelled_at"].notna()]
    assert (cancelled["changed_at"] < cancelled["cancelled_at"]).all()
    gone = data.customers[data.customers["cancelled_at"] < WINDOW_START]
    assert not set(gone["customer_id"]) & set(ch["customer_id"])


def test_plan_change_baseline_rates(data: Dataset) -> None:
    c = data.customers
    stayers = c[c["cancelled_at"].isna()]
    months = float(_active_months(stayers).sum())
    ch = data.plan_changes
    counts = ch[ch["customer_id"].isin(stayers["customer_id"])]["change_type"].value_counts()
    # Proposed at 0.02 (plans, half of them impossible at basic/premium) and 0.01 (contracts).
    assert 0.007 < counts["contract_change"] / months < 0.013
    plan_rate = (counts["upgrade"] + counts["downgrade"]) / months
    assert 0.01 < plan_rate < 0.018, plan_rate
    assert 0.5 < counts["upgrade"] / counts["downgrade"] < 2.5


def test_customer_table_keeps_the_signup_plan(data: Dataset) -> None:
    # The fee charged is the signup fee even after plan changes (grandfathered).
    changed = set(data.plan_changes["customer_id"])
    tx = data.transactions
    payments = tx[(tx["event_type"] == "payment") & tx["customer_id"].isin(changed)]
    payments = payments.merge(data.customers[["customer_id", "monthly_fee"]], on="customer_id")
    assert len(payments) > 1_000
    assert np.allclose(payments["amount"], payments["monthly_fee"])


def test_churners_downgrade_before_cancelling(data: Dataset) -> None:
    c = data.customers
    churners = _churned_in_window(c)
    stayers = c[c["cancelled_at"].isna()]
    downgrades = data.plan_changes[data.plan_changes["change_type"] == "downgrade"]
    lead = downgrades.merge(churners[["customer_id", "cancelled_at"]], on="customer_id")
    lead = lead[lead["changed_at"] >= lead["cancelled_at"] - pd.Timedelta(days=90)]
    lead_share = lead["customer_id"].nunique() / len(churners)
    stayer_downgrades = downgrades["customer_id"].isin(stayers["customer_id"]).sum()
    per_90_days = stayer_downgrades / float(_active_months(stayers).sum()) * 90 / 30.44
    # A real signal (several times the baseline), but modest: most churners do not downgrade.
    assert lead_share > 3 * per_90_days, (lead_share, per_90_days)
    assert 0.04 < lead_share < 0.2, lead_share


# --- churn drivers ------------------------------------------------------------------------------


def test_contract_drives_churn(data: Dataset) -> None:
    rate = data.customers.groupby("contract_type")["cancelled_at"].apply(lambda s: s.notna().mean())
    assert rate["month_to_month"] > rate["one_year"] > rate["two_year"]
    assert rate["month_to_month"] > 2 * rate["two_year"]
    autopay = data.customers.groupby("autopay")["cancelled_at"].apply(lambda s: s.notna().mean())
    assert autopay[False] > autopay[True]


def test_monthly_churn_rate_is_realistic(data: Dataset) -> None:
    c = data.customers
    rates = []
    for month in pd.date_range(WINDOW_START, periods=24, freq="MS"):
        following = month + pd.offsets.MonthBegin(1)
        active = (c["signup_date"] <= month) & ~(c["cancelled_at"] < month)
        left = active & (c["cancelled_at"] < following)
        rates.append(left.sum() / active.sum())
    assert 0.015 < float(np.mean(rates)) < 0.045


def test_usage_declines_before_cancelling(data: Dataset) -> None:
    churners = _churned_in_window(data.customers)
    usage = data.support[data.support["record_type"] == "usage"]
    usage = usage.merge(churners[["customer_id", "cancelled_at", "signup_date"]], on="customer_id")
    # The signup month is pro-rated, so it would look like low usage.
    usage = usage[usage["record_time"] >= usage["signup_date"] + pd.Timedelta(days=31)]
    late = usage["record_time"] >= usage["cancelled_at"] - pd.Timedelta(days=90)
    before = usage[~late].groupby("customer_id")["value"].mean()
    last = usage[late].groupby("customer_id")["value"].mean()
    both = before.index.intersection(last.index)
    assert len(both) > 100
    ratio = (last[both] / before[both]).median()
    assert ratio < 0.85, ratio


def test_usage_of_staying_customers_is_stable(data: Dataset) -> None:
    c = data.customers
    stayers = c[c["cancelled_at"].isna() & (c["signup_date"] < WINDOW_START)]["customer_id"]
    usage = data.support[data.support["record_type"] == "usage"]
    usage = usage[usage["customer_id"].isin(stayers)]
    late = usage["record_time"] >= WINDOW_END - pd.Timedelta(days=90)
    before = usage[~late].groupby("customer_id")["value"].mean()
    last = usage[late].groupby("customer_id")["value"].mean()
    ratio = (last / before).median()
    assert 0.9 < ratio < 1.1, ratio


def _active_months(customers: pd.DataFrame) -> pd.Series:
    active_from = customers["signup_date"].clip(lower=WINDOW_START)
    active_to = customers["cancelled_at"].fillna(WINDOW_END)
    days = (active_to - active_from).dt.total_seconds() / 86_400
    return (days / 30.44).clip(lower=0).set_axis(customers["customer_id"])


def test_churners_file_more_tickets(data: Dataset) -> None:
    c = data.customers
    churners = _churned_in_window(c)
    stayers = c[c["cancelled_at"].isna()]
    tickets = data.support[data.support["record_type"] == "ticket"]
    per_customer = tickets.groupby("customer_id").size()
    severe = tickets[tickets["value"] == 3.0].groupby("customer_id").size()

    def rate(group: pd.DataFrame, counts: pd.Series) -> float:
        months = _active_months(group)
        return float(counts.reindex(months.index, fill_value=0).sum() / months.sum())

    # Over their whole active time in the window ...
    assert rate(churners, per_customer) > 1.3 * rate(stayers, per_customer)
    assert rate(churners, severe) > 2 * rate(stayers, severe)

    # ... and, where the effect lives, in the 90 days before cancelling.
    lead_from = (churners["cancelled_at"] - pd.Timedelta(days=90)).clip(lower=WINDOW_START)
    lead_from = lead_from.where(lead_from > churners["signup_date"], churners["signup_date"])
    lead_days = (churners["cancelled_at"] - lead_from).dt.total_seconds() / 86_400
    lead_months = float(lead_days.sum() / 30.44)
    lead = tickets.merge(churners[["customer_id", "cancelled_at"]], on="customer_id")
    lead = lead[lead["record_time"] >= lead["cancelled_at"] - pd.Timedelta(days=90)]
    assert len(lead) / lead_months > 2.5 * rate(stayers, per_customer), len(lead) / lead_months
    severe_lead = (lead["value"] == 3.0).sum()
    assert severe_lead / lead_months > 5 * rate(stayers, severe)


def test_payment_failures_lead_churn_and_follow_autopay(data: Dataset) -> None:
    tx = _with_customer(data.transactions.drop_duplicates(), data.customers)
    charges = tx[tx["event_type"].isin(["payment", "payment_failed"])]
    failed = charges["event_type"] == "payment_failed"
    near_churn = charges["cancelled_at"].notna() & (
        charges["event_time"] >= charges["cancelled_at"] - pd.Timedelta(days=90)
    )
    assert failed[near_churn].mean() > 2 * failed[charges["cancelled_at"].isna()].mean()
    assert failed[~charges["autopay"]].mean() > 2 * failed[charges["autopay"]].mean()


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_customers": 0}, "n_customers"),
        ({"n_customers": -5}, "n_customers"),
        ({"seed": -1}, "seed"),
        ({"start": date(2025, 1, 1), "end": date(2025, 1, 1)}, "start"),
        ({"start": date(2025, 6, 1), "end": date(2025, 1, 1)}, "start"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"page_size": 0}, "page_size"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"out_dir": tmp_path, "n_customers": 10, **overrides}
    with pytest.raises(ValueError, match=message):
        generate_sample_data(**args)
    assert not (tmp_path / "customers").exists()  # validation happens before deleting anything
