"""Deterministic sample data for a subscription business, shaped like its source systems.

``generate_sample_data`` writes what the ingestion pipeline would find in production:

* ``customers/part-NNNNN.parquet``: the customer table as PostgreSQL holds it (one file per
  chunk of customers).
* ``plan_changes/part-NNNNN.parquet``: the plan/contract history table from the same database,
  one row per change, ordered by ``customer_id`` then ``changed_at`` (one file per chunk of
  customers, like ``customers``; a chunk without changes writes a file without rows).
* ``transactions/part-NNNNN.jsonl``: billing events as the values of a Kafka topic carry them,
  one compact JSON object per line, at-least-once (about 0.5% of messages are exact duplicates)
  and out of order (shuffled within each file).
* ``support/page-NNNNN.json``: support tickets and monthly usage summaries as a paginated REST
  API returns them, ordered by ``customer_id`` then ``record_time``; every page except the last
  holds exactly ``page_size`` records. The page keys are ``page``, ``page_size``, ``records``,
  ``next_page`` and ``total_pages``; the last two are written after the records because they are
  only known once every chunk is done. Follow ``next_page`` rather than sorting file names: past
  page 99999 the names grow a digit. If there are no records at all, one empty page is written.

Generative model
================
Time is handled in whole seconds, UTC-naive. The observation window is ``[start 00:00:00,
end 23:59:59]``. Every customer is drawn independently:

* ``signup_date`` uniform over ``[start - 3 years, end - 30 days]``, so the table also holds
  customers who signed up, and often cancelled, before the window opens.
* ``plan`` basic/standard/premium (45/35/20%), list price 19.99/39.99/69.99.
  ``contract_type`` month_to_month/one_year/two_year (55/28/17%), discounted 0/8/15% off list.
  ``monthly_fee`` = list * (1 - discount) * (1 + e), e ~ N(0, 0.08) clipped to [-0.2, 0.3]:
  ``e`` is how overpriced the customer is for the plan, rounded to cents. The customer table
  keeps these three as chosen at signup: the current plan and contract live in the plan
  history (below).
* ``payment_method`` credit_card/bank_transfer/paypal/invoice (42/25/20/13%); ``autopay`` with
  probability 0.80/0.75/0.55/0.10 by payment method.
* ``region`` uniform over five regions and ``age`` ~ N(44, 15) clipped to 18..90 with 2% nulls:
  neither affects anything (noise features).

Churn is a proportional-hazards model with a Weibull baseline of shape 0.7, so the hazard decays
with tenure: ``h(t) = h0(t) * exp(lp)``, ``H0(t) = (t / 600 days) ** 0.7`` and

    lp = {0, -1.1, -2.0}[contract] + 0.5 * (not autopay) + {0, 0, 0.1, 0.3}[payment_method]
         + 4.0 * e + frailty,        frailty ~ N(0, 0.5) (unobserved)

The churn time is ``signup + H0^-1(E / exp(lp))`` with ``E ~ Exp(1)`` (the inverse cumulative
hazard of an exponential draw) and at least one hour. ``cancelled_at`` is that time if it falls
before the end of the window, otherwise null (right-censored). Among customers active in the
window about 2.5% churn per month; a month_to_month customer's hazard is e^2 ~ 7x that of an
otherwise identical two_year one.

Behaviour leads churn. ``ramp(t)`` rises linearly from 0 at 90 days before the (latent, possibly
censored) churn time to 1 at it; using the latent time keeps behaviour near the window's end
continuous instead of leaking which customers cancel inside it. Not every churner warns, which
keeps the problem realistic: 60% of customers disengage and 50% complain before leaving.

* Usage: each customer has a base level (lognormal, median 250/450/800 minutes by plan,
  sigma 0.5). A usage record is written at the last second of every month that ends while the
  customer is active inside the window, ``value = base * (1 - 0.7 * ramp * disengages) *
  LogNormal(0, 0.3)``, pro-rated in the signup month: usage falls towards 30% before cancelling.
* Tickets: a baseline rate per customer (Gamma(2, 0.05) per month, severities 1/2/3 with
  55/33/12%) plus, for complainers inside the 90 days before the churn time, Poisson(1.5) extra
  tickets that are mostly severe (25/35/40%).
* Billing: one charge per month on the signup day-of-month (capped at 28; autopay customers are
  charged in a 01:00-06:00 batch, others during the day). A charge fails with probability 2%
  (autopay) or 7% (no autopay), times ``1 + 4 * ramp``; a failed charge is followed by a
  successful retry 1-6 days later with probability 85%. Successful payments are refunded
  (fully or partly, 1-14 days later) with probability ``1% + 4% * ramp``. Add-on purchases
  (4.99/9.99/14.99) arrive at 0.05 per active month. Amounts are always positive; the event
  type says which way money moved.

Plan history. Changes happen only while the customer is active inside the window; each changes
one thing, so ``from_*`` and ``to_*`` differ in exactly one of plan and contract:

* Baseline plan changes: Poisson, 0.02 per active month, uniform in time, each an upgrade or a
  downgrade of one level (basic < standard < premium) with equal probability. A change past
  basic or premium is not made (nothing is written), so customers on standard change plan at
  0.02 per month and the others at 0.01.
* Baseline contract changes (``contract_change``): Poisson, 0.01 per active month, to one of the
  two other contract types with equal probability; the plan stays.
* Disengagement: 30% of the customers who disengage (the usage decline above) downgrade once,
  at a uniform time in the 90 days before the latent churn time, if that time is inside the
  window and after signup and the customer is not on basic by then. About 9% of those who
  churn in the window then have a downgrade in their last 90 days, against 0.017 downgrades
  per 90 days among customers who stay: a real but modest signal. At the snapshots, the 2% of
  rows with a downgrade in the 90 days before have a 60-day churn rate of ~18% against ~4.5%,
  and that count alone reaches ROC-AUC ~0.53.

Changes apply in time order from the signup plan and contract, so every row's ``from_plan`` and
``from_contract`` are the previous row's ``to_*`` (the signup values for the first row). The
history does not feed back into anything else: hazard, usage and billing follow the signup
values (fees are grandfathered), so the other sources, and the skill quoted below, are the same
as without it; the history adds only the disengagement signal.

With point-in-time features (static attributes, tenure, 90-day ticket/failure counts, recent vs
earlier usage) XGBoost reaches ROC-AUC ~0.88 for churn within 30 days of a snapshot and ~0.81
within 90 days; static attributes alone give ~0.73.

Nothing is written outside the window, before ``signup_date`` or at/after ``cancelled_at``.
Ids: customers ``C`` + 9-digit index from 1; events ``T<index>-<seq>``, support records
``R<index>-<seq>`` and plan changes ``P<index>-<seq>``, where ``seq`` counts the customer's
events (records, changes) in time order.

Determinism: chunk ``i`` draws customers, transactions and support records from
``np.random.default_rng([seed, i])`` and the plan history from its own
``np.random.default_rng([seed, i, 1])``, so the same arguments give byte-identical files and the
other sources do not depend on the plan history. ``chunk_size`` is part of the arguments:
changing it changes the data, not just the file layout.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["GenerationSummary", "generate_sample_data"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

_DAY = 86_400
_HOUR = 3_600
_MONTH_DAYS = 30.44

# The contract (configs/contracts/<name>.yaml) that describes what this module writes.
SAMPLE_DATASET = "saas"

PLANS = ("basic", "standard", "premium")
_PLAN_P = (0.45, 0.35, 0.20)
_PLAN_LIST_PRICE = np.array([19.99, 39.99, 69.99])
_PLAN_USAGE_MEDIAN = np.array([250.0, 450.0, 800.0])

CONTRACT_TYPES = ("month_to_month", "one_year", "two_year")
_CONTRACT_P = (0.55, 0.28, 0.17)
_CONTRACT_DISCOUNT = np.array([0.0, 0.08, 0.15])
_CONTRACT_LOG_HAZARD = np.array([0.0, -1.1, -2.0])

REGIONS = ("north", "south", "east", "west", "central")

PAYMENT_METHODS = ("credit_card", "bank_transfer", "paypal", "invoice")
_PAYMENT_P = (0.42, 0.25, 0.20, 0.13)
_AUTOPAY_P = np.array([0.80, 0.75, 0.55, 0.10])
_PAYMENT_LOG_HAZARD = np.array([0.0, 0.0, 0.1, 0.3])
_NO_AUTOPAY_LOG_HAZARD = 0.5

_FEE_NOISE_SD = 0.08
_FEE_LOG_HAZARD = 4.0
_FRAILTY_SD = 0.5
_AGE_MISSING_P = 0.02

_WEIBULL_SHAPE = 0.7
_WEIBULL_SCALE_DAYS = 600.0
# Cap the latent churn time so far-future draws stay well inside int64 seconds.
_MAX_TENURE_DAYS = 365.0 * 200

_LEAD_DAYS = 90
_USAGE_DECLINE = 0.7
_USAGE_NOISE_SD = 0.3
_DECLINE_P = 0.6
_USAGE_SD = 0.5

_TICKET_RATE_SHAPE = 2.0
_TICKET_RATE_SCALE = 0.05
_TICKET_SEVERITY_P = (0.55, 0.33, 0.12)
_LEAD_TICKETS = 1.5
_COMPLAIN_P = 0.5
_LEAD_TICKET_SEVERITY_P = (0.25, 0.35, 0.40)

_FAIL_P_AUTOPAY = 0.02
_FAIL_P_MANUAL = 0.07
_FAIL_LEAD_FACTOR = 4.0
_RETRY_P = 0.85
_REFUND_P = 0.01
_REFUND_LEAD_P = 0.04
_ADDON_PER_MONTH = 0.05
_ADDON_PRICES_CENTS = np.array([499, 999, 1499])
_DUPLICATE_P = 0.005

_PLAN_CHANGE_PER_MONTH = 0.02
_CONTRACT_CHANGE_PER_MONTH = 0.01
_LEAD_DOWNGRADE_P = 0.3
# Third SeedSequence word of the plan history's generator. Not 0: numpy ignores trailing zeros,
# so [seed, i, 0] would replay the chunk's main stream [seed, i].
_PLAN_STREAM = 1

TRANSACTION_TYPES = ("payment", "payment_failed", "addon_purchase", "refund")
_PAYMENT, _FAILED, _ADDON, _REFUND = range(4)
SUPPORT_TYPES = ("ticket", "usage")
_TICKET, _USAGE = range(2)
CHANGE_TYPES = ("upgrade", "downgrade", "contract_change")
_UPGRADE, _DOWNGRADE, _CONTRACT_CHANGE = range(3)

_SUBDIRS = ("customers", "transactions", "support", "plan_changes")
_MAX_CUSTOMERS = 999_999_999  # customer ids have nine digits

CUSTOMER_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("signup_date", pa.date32(), nullable=False),
        pa.field("plan", pa.string(), nullable=False),
        pa.field("contract_type", pa.string(), nullable=False),
        pa.field("monthly_fee", pa.float64(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("age", pa.int64(), nullable=True),
        pa.field("payment_method", pa.string(), nullable=False),
        pa.field("autopay", pa.bool_(), nullable=False),
        pa.field("cancelled_at", pa.timestamp("us"), nullable=True),
        pa.field("updated_at", pa.timestamp("us"), nullable=False),
    ]
)

PLAN_CHANGE_SCHEMA = pa.schema(
    [
        pa.field("change_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("changed_at", pa.timestamp("us"), nullable=False),
        pa.field("change_type", pa.string(), nullable=False),
        pa.field("from_plan", pa.string(), nullable=False),
        pa.field("to_plan", pa.string(), nullable=False),
        pa.field("from_contract", pa.string(), nullable=False),
        pa.field("to_contract", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class GenerationSummary:
    """What ``generate_sample_data`` wrote."""

    customers: int
    transactions: int
    support_records: int
    pages: int
    plan_changes: int
    churned: int
    seconds: float


@dataclass(frozen=True)
class _Window:
    start_s: int  # first second inside the window
    end_s: int  # first second after it
    signup_lo: int  # days since epoch, inclusive
    signup_hi: int

    @classmethod
    def of(cls, start: date, end: date) -> _Window:
        start_day = _epoch_day(start)
        end_day = _epoch_day(end)
        try:
            lo = start.replace(year=start.year - 3)
        except ValueError:  # 29 February
            lo = start.replace(year=start.year - 3, day=28)
        return cls(start_day * _DAY, (end_day + 1) * _DAY, _epoch_day(lo), end_day - 30)


@dataclass(frozen=True)
class _Customers:
    signup_day: I64
    plan: I64
    contract: I64
    fee_cents: I64
    region: I64
    age: I64
    age_missing: Bool
    payment: I64
    autopay: Bool
    churn_s: I64  # latent churn time, also beyond the window
    updated_s: I64
    base_usage: F64
    ticket_rate: F64
    declines: Bool  # usage falls before churning (disengages)
    complains: Bool  # files extra tickets before churning


@dataclass(frozen=True)
class _Events:
    customer: I64  # index within the chunk
    time_s: I64
    kind: I64
    scaled: I64  # value as a fixed-point integer (cents, tenths ...)

    @staticmethod
    def concat(parts: Sequence[_Events]) -> _Events:
        return _Events(
            np.concatenate([p.customer for p in parts]),
            np.concatenate([p.time_s for p in parts]),
            np.concatenate([p.kind for p in parts]),
            np.concatenate([p.scaled for p in parts]),
        )

    def take(self, index: I64 | Bool) -> _Events:
        return _Events(
            self.customer[index], self.time_s[index], self.kind[index], self.scaled[index]
        )

    def sorted_with_seq(self) -> tuple[_Events, I64]:
        """Sort by (customer, time) and number each customer's events from 1."""
        order = np.lexsort((self.time_s, self.customer)).astype(np.int64)
        ordered = self.take(order)
        return ordered, _seq_in_group(ordered.customer)


@dataclass(frozen=True)
class _PlanChanges:
    customer: I64  # index within the chunk; rows ordered by (customer, time)
    time_s: I64
    change_type: I64
    from_plan: I64
    to_plan: I64
    from_contract: I64
    to_contract: I64
    seq: I64


def generate_sample_data(
    out_dir: Path,
    n_customers: int,
    seed: int = 7,
    *,
    start: date = date(2024, 1, 1),
    end: date = date(2025, 12, 31),
    chunk_size: int = 100_000,
    page_size: int = 1_000,
    progress: Callable[[int], None] | None = None,
) -> GenerationSummary:
    """Write customers, transactions, support pages and plan changes under ``out_dir``.

    The ``customers``, ``transactions``, ``support`` and ``plan_changes`` subfolders of
    ``out_dir`` are deleted first, so the same arguments always produce the same, byte-identical
    tree. Customers are processed in chunks of ``chunk_size`` and each chunk's files are written
    before the next is drawn, so memory is bounded by the chunk. ``progress`` is called with the number of customers
    finished after every chunk. See the module docstring for the generative model.

    Args:
        out_dir: Root folder; only its four data subfolders are replaced.
        n_customers: Number of customers, 1 to 999,999,999.
        seed: Non-negative seed; with the other arguments it fixes every byte written.
        start: First day of the observation window for transactions and support records.
        end: Last day of the window (inclusive); customers still active then are not cancelled.
        chunk_size: Customers drawn and written per chunk (one file of each parquet and jsonl
            source).
        page_size: Records per support page.
        progress: Optional callback receiving the number of customers finished so far.

    Returns:
        Counts of what was written and the elapsed wall-clock seconds.

    Raises:
        ValueError: if an argument is out of range.
    """
    began = time.perf_counter()
    _validate(n_customers, seed, start, end, chunk_size, page_size)
    window = _Window.of(start, end)
    dirs = [Path(out_dir) / name for name in _SUBDIRS]
    for directory in dirs:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    customers_dir, transactions_dir, support_dir, plan_changes_dir = dirs

    formatter = _Formatter()
    pages = _PageWriter(support_dir, page_size)
    transactions = plan_changes = churned = 0
    for chunk, first in enumerate(range(0, n_customers, chunk_size)):
        size = min(chunk_size, n_customers - first)
        rng = np.random.default_rng([seed, chunk])
        customers = _draw_customers(rng, size, window)
        digits = pc.utf8_lpad(
            pa.array(np.arange(first + 1, first + size + 1, dtype=np.int64)).cast(pa.string()),
            width=9,
            padding="0",
        )
        pq.write_table(
            _customers_table(customers, digits, window), customers_dir / f"part-{chunk:05d}.parquet"
        )
        churned += int(np.count_nonzero(customers.churn_s < window.end_s))

        # 64-bit string offsets: a chunk's event text can exceed 2 GiB.
        event_digits = digits.cast(pa.large_string())
        lines = _transaction_lines(
            rng, _draw_transactions(rng, customers, window), event_digits, formatter
        )
        (transactions_dir / f"part-{chunk:05d}.jsonl").write_bytes(_line_bytes(lines))
        transactions += len(lines)

        pages.add(_support_lines(_draw_support(rng, customers, window), event_digits, formatter))

        # Own generator: the other sources do not depend on the plan history's draws.
        changes = _draw_plan_changes(
            np.random.default_rng([seed, chunk, _PLAN_STREAM]), customers, window
        )
        pq.write_table(
            _plan_changes_table(changes, digits), plan_changes_dir / f"part-{chunk:05d}.parquet"
        )
        plan_changes += len(changes.customer)
        if progress is not None:
            progress(first + size)
    pages.close()
    return GenerationSummary(
        customers=n_customers,
        transactions=transactions,
        support_records=pages.records,
        pages=pages.pages,
        plan_changes=plan_changes,
        churned=churned,
        seconds=time.perf_counter() - began,
    )


def _validate(
    n_customers: int, seed: int, start: date, end: date, chunk_size: int, page_size: int
) -> None:
    if not 1 <= n_customers <= _MAX_CUSTOMERS:
        raise ValueError(f"n_customers must be in [1, {_MAX_CUSTOMERS}], got {n_customers}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not start < end:
        raise ValueError(f"start must be before end, got start={start} end={end}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")


# --- drawing ------------------------------------------------------------------------------------


def _draw_customers(rng: np.random.Generator, n: int, window: _Window) -> _Customers:
    signup_day = rng.integers(window.signup_lo, window.signup_hi, n, endpoint=True)
    plan = _categorical(rng, _PLAN_P, n)
    contract = _categorical(rng, _CONTRACT_P, n)
    overprice = np.clip(rng.normal(0.0, _FEE_NOISE_SD, n), -0.2, 0.3)
    fee = _PLAN_LIST_PRICE[plan] * (1.0 - _CONTRACT_DISCOUNT[contract]) * (1.0 + overprice)
    region = rng.integers(0, len(REGIONS), n)
    age = np.clip(np.rint(rng.normal(44.0, 15.0, n)), 18, 90).astype(np.int64)
    age_missing = rng.random(n) < _AGE_MISSING_P
    payment = _categorical(rng, _PAYMENT_P, n)
    autopay = rng.random(n) < _AUTOPAY_P[payment]

    log_hazard = (
        _CONTRACT_LOG_HAZARD[contract]
        + _NO_AUTOPAY_LOG_HAZARD * ~autopay
        + _PAYMENT_LOG_HAZARD[payment]
        + _FEE_LOG_HAZARD * overprice
        + rng.normal(0.0, _FRAILTY_SD, n)
    )
    # Inverse cumulative hazard: H0(T) * exp(lp) = E with H0(t) = (t / scale) ** shape.
    tenure_days = _WEIBULL_SCALE_DAYS * (rng.exponential(1.0, n) * np.exp(-log_hazard)) ** (
        1.0 / _WEIBULL_SHAPE
    )
    tenure_s = np.rint(np.minimum(tenure_days, _MAX_TENURE_DAYS) * _DAY).astype(np.int64)
    signup_s = signup_day * _DAY
    churn_s = signup_s + np.maximum(tenure_s, _HOUR)
    cancelled = churn_s < window.end_s
    active_until = np.where(cancelled, churn_s, window.end_s)
    updated_s = np.where(
        cancelled, churn_s, signup_s + _uniform_offsets(rng, active_until - signup_s)
    )
    base_usage = _PLAN_USAGE_MEDIAN[plan] * rng.lognormal(0.0, _USAGE_SD, n)
    ticket_rate = rng.gamma(_TICKET_RATE_SHAPE, _TICKET_RATE_SCALE, n)
    declines = rng.random(n) < _DECLINE_P
    complains = rng.random(n) < _COMPLAIN_P
    return _Customers(
        signup_day=signup_day,
        plan=plan,
        contract=contract,
        fee_cents=np.rint(fee * 100.0).astype(np.int64),
        region=region,
        age=age,
        age_missing=age_missing,
        payment=payment,
        autopay=autopay,
        churn_s=churn_s,
        updated_s=updated_s,
        base_usage=base_usage,
        ticket_rate=ticket_rate,
        declines=declines,
        complains=complains,
    )


def _draw_transactions(rng: np.random.Generator, c: _Customers, window: _Window) -> _Events:
    limit_s = np.minimum(c.churn_s, window.end_s)
    signup = c.signup_day
    signup_month = _month_of(signup)
    bill_day_of_month = np.minimum(signup - _first_day(signup_month), 27)

    first_day = np.maximum(signup, window.start_s // _DAY)
    k_first = _month_of(first_day) - signup_month
    k_first += _bill_day(signup, bill_day_of_month, signup_month + k_first) < first_day
    last_day = (limit_s - 1) // _DAY
    k_last = _month_of(last_day) - signup_month
    k_last -= _bill_day(signup, bill_day_of_month, signup_month + k_last) > last_day

    cust, k = _expand(k_first, np.maximum(k_last - k_first + 1, 0))
    autopay = c.autopay[cust]
    time_of_day = np.where(
        autopay,
        rng.integers(1 * _HOUR, 6 * _HOUR, len(cust)),
        rng.integers(8 * _HOUR, 22 * _HOUR, len(cust)),
    )
    charge_day = _bill_day(signup[cust], bill_day_of_month[cust], signup_month[cust] + k)
    charge_s = charge_day * _DAY + time_of_day
    inside = charge_s < limit_s[cust]
    cust, charge_s = cust[inside], charge_s[inside]
    fee = c.fee_cents[cust]

    ramp = _lead_ramp(c.churn_s[cust], charge_s)
    fail_p = np.where(c.autopay[cust], _FAIL_P_AUTOPAY, _FAIL_P_MANUAL)
    failed = rng.random(len(cust)) < fail_p * (1.0 + _FAIL_LEAD_FACTOR * ramp)
    retry_s = charge_s + rng.integers(1 * _DAY, 6 * _DAY, len(cust))
    retried = failed & (rng.random(len(cust)) < _RETRY_P) & (retry_s < limit_s[cust])

    paid_cust = np.concatenate([cust[~failed], cust[retried]])
    paid_s = np.concatenate([charge_s[~failed], retry_s[retried]])
    paid_ramp = _lead_ramp(c.churn_s[paid_cust], paid_s)
    refund_s = paid_s + rng.integers(1 * _DAY, 15 * _DAY, len(paid_cust))
    refunded = (rng.random(len(paid_cust)) < _REFUND_P + _REFUND_LEAD_P * paid_ramp) & (
        refund_s < limit_s[paid_cust]
    )
    partial_share = rng.uniform(0.2, 0.8, len(paid_cust))
    refund_share = np.where(rng.random(len(paid_cust)) < 0.5, 1.0, partial_share)
    refund_cents = np.maximum(np.rint(c.fee_cents[paid_cust] * refund_share), 1).astype(np.int64)

    active_from = np.maximum(signup * _DAY, window.start_s)
    active_s = np.maximum(limit_s - active_from, 0)
    addon_cust, addon_s = _uniform_events(
        rng, active_from, active_s, _ADDON_PER_MONTH * active_s / (_MONTH_DAYS * _DAY)
    )
    addon_cents = _ADDON_PRICES_CENTS[rng.integers(0, len(_ADDON_PRICES_CENTS), len(addon_cust))]

    return _Events.concat(
        [
            _events(paid_cust, paid_s, _PAYMENT, c.fee_cents[paid_cust]),
            _events(cust[failed], charge_s[failed], _FAILED, fee[failed]),
            _events(paid_cust[refunded], refund_s[refunded], _REFUND, refund_cents[refunded]),
            _events(addon_cust, addon_s, _ADDON, addon_cents),
        ]
    )


def _bill_day(signup_day: I64, day_of_month: I64, month: I64) -> I64:
    """Charge day in ``month``; the first charge is on signup day even if that is past the 28th."""
    day: I64 = np.maximum(signup_day, _first_day(month) + day_of_month)
    return day


def _draw_support(rng: np.random.Generator, c: _Customers, window: _Window) -> _Events:
    limit_s = np.minimum(c.churn_s, window.end_s)
    signup_s = c.signup_day * _DAY
    active_from = np.maximum(signup_s, window.start_s)
    active_s = np.maximum(limit_s - active_from, 0)

    # Usage summaries at the last second of each month that ends while the customer is active.
    first_month = _month_of(active_from // _DAY)
    last_month = _month_of((limit_s - 1) // _DAY)
    last_month -= _first_day(last_month + 1) * _DAY - 1 >= limit_s
    cust, month = _expand(first_month, np.maximum(last_month - first_month + 1, 0))
    month_end_s = _first_day(month + 1) * _DAY - 1
    month_s = (_first_day(month + 1) - _first_day(month)) * _DAY
    active_share = np.clip((month_end_s + 1 - signup_s[cust]) / month_s, 0.0, 1.0)
    decline = 1.0 - _USAGE_DECLINE * c.declines[cust] * _lead_ramp(c.churn_s[cust], month_end_s)
    noise = rng.lognormal(0.0, _USAGE_NOISE_SD, len(cust))
    minutes = c.base_usage[cust] * decline * noise * active_share
    usage = _events(cust, month_end_s, _USAGE, np.rint(minutes * 10.0).astype(np.int64))

    base_cust, base_s = _uniform_events(
        rng, active_from, active_s, c.ticket_rate * active_s / (_MONTH_DAYS * _DAY)
    )
    base_severity = _categorical(rng, _TICKET_SEVERITY_P, len(base_cust)) + 1

    lead_from = np.maximum(c.churn_s - _LEAD_DAYS * _DAY, active_from)
    lead_s = np.where(c.complains, np.maximum(limit_s - lead_from, 0), 0)
    lead_cust, lead_time = _uniform_events(
        rng, lead_from, lead_s, _LEAD_TICKETS * lead_s / (_LEAD_DAYS * _DAY)
    )
    lead_severity = _categorical(rng, _LEAD_TICKET_SEVERITY_P, len(lead_cust)) + 1

    return _Events.concat(
        [
            usage,
            _events(base_cust, base_s, _TICKET, base_severity * 10),
            _events(lead_cust, lead_time, _TICKET, lead_severity * 10),
        ]
    )


def _draw_plan_changes(rng: np.random.Generator, c: _Customers, window: _Window) -> _PlanChanges:
    n = len(c.signup_day)
    limit_s = np.minimum(c.churn_s, window.end_s)
    active_from = np.maximum(c.signup_day * _DAY, window.start_s)
    active_s = np.maximum(limit_s - active_from, 0)
    active_months = active_s / (_MONTH_DAYS * _DAY)

    # Proposed changes as events: kind 0 moves the plan by ``scaled`` levels (+1 or -1), kind 1
    # moves the contract by ``scaled`` (1 or 2) places round the contract types.
    plan_cust, plan_s = _uniform_events(
        rng, active_from, active_s, _PLAN_CHANGE_PER_MONTH * active_months
    )
    plan_step = np.where(rng.random(len(plan_cust)) < 0.5, 1, -1).astype(np.int64)
    contract_cust, contract_s = _uniform_events(
        rng, active_from, active_s, _CONTRACT_CHANGE_PER_MONTH * active_months
    )
    contract_shift = rng.integers(1, len(CONTRACT_TYPES), len(contract_cust))
    lead_s = c.churn_s - _LEAD_DAYS * _DAY + rng.integers(0, _LEAD_DAYS * _DAY, n)
    lead = (
        c.declines
        & (rng.random(n) < _LEAD_DOWNGRADE_P)
        & (lead_s >= active_from)
        & (lead_s < limit_s)
    )
    lead_cust = np.flatnonzero(lead).astype(np.int64)

    proposed = _Events.concat(
        [
            _Events(plan_cust, plan_s, np.zeros_like(plan_cust), plan_step),
            _Events(contract_cust, contract_s, np.ones_like(contract_cust), contract_shift),
            _Events(
                lead_cust, lead_s[lead_cust], np.zeros_like(lead_cust), np.full_like(lead_cust, -1)
            ),
        ]
    )
    ordered, seq = proposed.sorted_with_seq()

    # Apply the changes in time order: the k-th change of every customer at once.
    plan, contract = c.plan.copy(), c.contract.copy()
    m = len(ordered.customer)
    from_plan, to_plan = np.empty(m, np.int64), np.empty(m, np.int64)
    from_contract, to_contract = np.empty(m, np.int64), np.empty(m, np.int64)
    for k in range(1, int(seq.max(initial=0)) + 1):
        at = np.flatnonzero(seq == k)
        cust = ordered.customer[at]
        moves_plan = ordered.kind[at] == 0
        step = ordered.scaled[at]
        new_plan = np.where(moves_plan, plan[cust] + step, plan[cust])
        new_plan = np.where((new_plan < 0) | (new_plan >= len(PLANS)), plan[cust], new_plan)
        new_contract = np.where(
            moves_plan, contract[cust], (contract[cust] + step) % len(CONTRACT_TYPES)
        )
        from_plan[at], to_plan[at] = plan[cust], new_plan
        from_contract[at], to_contract[at] = contract[cust], new_contract
        plan[cust], contract[cust] = new_plan, new_contract

    change_type = np.where(
        ordered.kind == 1, _CONTRACT_CHANGE, np.where(ordered.scaled > 0, _UPGRADE, _DOWNGRADE)
    )
    made = (from_plan != to_plan) | (from_contract != to_contract)  # not past basic/premium
    customer = ordered.customer[made]
    return _PlanChanges(
        customer=customer,
        time_s=ordered.time_s[made],
        change_type=change_type[made],
        from_plan=from_plan[made],
        to_plan=to_plan[made],
        from_contract=from_contract[made],
        to_contract=to_contract[made],
        seq=_seq_in_group(customer),
    )


def _seq_in_group(customer: I64) -> I64:
    """Number each run of equal values in a sorted array from 1."""
    counts = np.bincount(customer, minlength=int(customer.max(initial=-1)) + 1)
    group_start = np.cumsum(counts) - counts
    seq: I64 = np.arange(len(customer), dtype=np.int64) - group_start[customer] + 1
    return seq


def _categorical(rng: np.random.Generator, p: Sequence[float], n: int) -> I64:
    edges = np.cumsum(p)
    edges[-1] = 1.0  # guard against rounding leaving a gap above the last edge
    return np.searchsorted(edges, rng.random(n), side="right").astype(np.int64)


def _uniform_offsets(rng: np.random.Generator, span_s: I64) -> I64:
    """One uniform draw in ``[0, span_s)`` per element (0 where the span is empty)."""
    return np.floor(rng.random(len(span_s)) * span_s).astype(np.int64)


def _uniform_events(
    rng: np.random.Generator, from_s: I64, span_s: I64, expected: F64
) -> tuple[I64, I64]:
    """Poisson(expected) events per customer, uniform over ``[from_s, from_s + span_s)``."""
    counts = rng.poisson(expected).astype(np.int64)
    cust, _ = _expand(np.zeros_like(counts), counts)
    return cust, from_s[cust] + _uniform_offsets(rng, span_s[cust])


def _expand(first: I64, counts: I64) -> tuple[I64, I64]:
    """Repeat each customer ``counts`` times with a running value ``first, first + 1, ...``."""
    cust = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    group_start = np.cumsum(counts) - counts
    step = np.arange(len(cust), dtype=np.int64) - group_start[cust]
    return cust, first[cust] + step


def _lead_ramp(churn_s: I64, t: I64) -> F64:
    return np.clip(1.0 - (churn_s - t) / (_LEAD_DAYS * _DAY), 0.0, 1.0)


def _events(cust: I64, time_s: I64, kind: int, scaled: I64) -> _Events:
    return _Events(cust, time_s, np.full(len(cust), kind, dtype=np.int64), scaled)


def _epoch_day(d: date) -> int:
    return int(np.datetime64(d, "D").astype(np.int64))


def _month_of(day: I64) -> I64:
    """Months since 1970-01 of days since 1970-01-01."""
    return day.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def _first_day(month: I64) -> I64:
    return month.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)


# --- writing ------------------------------------------------------------------------------------


def _customers_table(c: _Customers, digits: Any, window: _Window) -> Any:
    cancelled = c.churn_s < window.end_s
    columns = [
        pc.binary_join_element_wise("C", digits, ""),
        pa.array(c.signup_day.astype("datetime64[D]"), type=pa.date32()),
        pa.array(PLANS).take(c.plan),
        pa.array(CONTRACT_TYPES).take(c.contract),
        pa.array(c.fee_cents / 100.0, type=pa.float64()),
        pa.array(REGIONS).take(c.region),
        pa.array(c.age, type=pa.int64(), mask=c.age_missing),
        pa.array(PAYMENT_METHODS).take(c.payment),
        pa.array(c.autopay, type=pa.bool_()),
        pa.array(c.churn_s * 1_000_000, type=pa.timestamp("us"), mask=~cancelled),
        pa.array(c.updated_s * 1_000_000, type=pa.timestamp("us")),
    ]
    return pa.Table.from_arrays(columns, schema=CUSTOMER_SCHEMA)


def _plan_changes_table(ch: _PlanChanges, digits: Any) -> Any:
    customer_digits = digits.take(ch.customer)
    seq = pc.utf8_lpad(pa.array(ch.seq).cast(pa.string()), width=4, padding="0")
    columns = [
        pc.binary_join_element_wise("P", customer_digits, "-", seq, ""),
        pc.binary_join_element_wise("C", customer_digits, ""),
        pa.array(ch.time_s * 1_000_000, type=pa.timestamp("us")),
        pa.array(CHANGE_TYPES).take(ch.change_type),
        pa.array(PLANS).take(ch.from_plan),
        pa.array(PLANS).take(ch.to_plan),
        pa.array(CONTRACT_TYPES).take(ch.from_contract),
        pa.array(CONTRACT_TYPES).take(ch.to_contract),
    ]
    return pa.Table.from_arrays(columns, schema=PLAN_CHANGE_SCHEMA)


class _Formatter:
    """Vectorised text for JSON lines; Arrow's own strftime is ~10x slower than table lookups."""

    def __init__(self) -> None:
        seconds = np.arange(_DAY, dtype=np.int64).astype("datetime64[s]")
        self._time_of_day = pc.utf8_slice_codeunits(
            pa.array(np.datetime_as_string(seconds).tolist(), type=pa.large_string()), start=11
        )

    def iso(self, time_s: I64) -> Any:
        day = time_s // _DAY
        lo = int(day.min()) if len(day) else 0
        hi = int(day.max()) if len(day) else 0
        days = pa.array(
            np.datetime_as_string(np.arange(lo, hi + 1).astype("datetime64[D]")).tolist(),
            type=pa.large_string(),
        )
        return pc.binary_join_element_wise(
            days.take(day - lo),
            self._time_of_day.take(time_s - day * _DAY),
            pa.scalar("T", pa.large_string()),
        )

    @staticmethod
    def fixed_point(scaled: I64, decimals: int) -> Any:
        """``scaled / 10**decimals`` (non-negative) with exactly ``decimals`` decimals."""
        unit = 10**decimals
        whole = pa.array(scaled // unit).cast(pa.large_string())
        fraction = pc.utf8_lpad(
            pa.array(scaled % unit).cast(pa.large_string()), width=decimals, padding="0"
        )
        return pc.binary_join_element_wise(whole, fraction, pa.scalar(".", pa.large_string()))

    @staticmethod
    def json_lines(pieces: Sequence[str | Any]) -> Any:
        """Concatenate literal strings and ``large_string`` arrays element-wise, one line each."""
        large = pa.large_string()
        parts = [pa.scalar(p, large) if isinstance(p, str) else p for p in pieces]
        return pc.binary_join_element_wise(*parts, pa.scalar("", large))


def _transaction_lines(
    rng: np.random.Generator, events: _Events, digits: Any, fmt: _Formatter
) -> Any:
    ordered, seq = events.sorted_with_seq()
    lines = fmt.json_lines(
        [
            '{"event_id":"T',
            digits.take(ordered.customer),
            "-",
            pc.utf8_lpad(pa.array(seq).cast(pa.large_string()), width=4, padding="0"),
            '","customer_id":"C',
            digits.take(ordered.customer),
            '","event_time":"',
            fmt.iso(ordered.time_s),
            '","event_type":"',
            pa.array(TRANSACTION_TYPES, pa.large_string()).take(ordered.kind),
            '","amount":',
            fmt.fixed_point(ordered.scaled, 2),
            "}\n",
        ]
    )
    # At-least-once delivery: some messages arrive twice, and nothing arrives in order.
    duplicated = np.flatnonzero(rng.random(len(ordered.customer)) < _DUPLICATE_P)
    delivered = np.concatenate([np.arange(len(ordered.customer), dtype=np.int64), duplicated])
    return lines.take(delivered[rng.permutation(len(delivered))])


def _support_lines(events: _Events, digits: Any, fmt: _Formatter) -> Any:
    ordered, seq = events.sorted_with_seq()
    # Each record ends with ",\n" so a page is one contiguous slice minus the last separator.
    return fmt.json_lines(
        [
            '{"record_id":"R',
            digits.take(ordered.customer),
            "-",
            pc.utf8_lpad(pa.array(seq).cast(pa.large_string()), width=4, padding="0"),
            '","customer_id":"C',
            digits.take(ordered.customer),
            '","record_time":"',
            fmt.iso(ordered.time_s),
            '","record_type":"',
            pa.array(SUPPORT_TYPES, pa.large_string()).take(ordered.kind),
            '","value":',
            fmt.fixed_point(ordered.scaled, 1),
            "},\n",
        ]
    )


def _line_offsets(lines: Any) -> I64:
    """Byte offsets of each line (plus the end) in the array's data buffer."""
    raw = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    return raw[lines.offset : lines.offset + len(lines) + 1]


def _line_bytes(lines: Any) -> memoryview:
    if len(lines) == 0:
        return memoryview(b"")
    offsets = _line_offsets(lines)
    return memoryview(lines.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


class _PageWriter:
    """Cuts a stream of record lines into full pages across chunks.

    ``next_page`` and ``total_pages`` depend on the final record count, so pages are written
    without them and closed with a small append once every chunk is done.
    """

    def __init__(self, directory: Path, page_size: int) -> None:
        self._directory = directory
        self._page_size = page_size
        self._carry: list[bytes] = []
        self._carry_records = 0
        self.pages = 0
        self.records = 0

    def add(self, lines: Any) -> None:
        """Append record lines (each ending in ``,\\n``); write every page that fills up."""
        n = len(lines)
        self.records += n
        if n == 0:
            return
        offsets = _line_offsets(lines)
        data = memoryview(lines.buffers()[2])
        pos = 0
        if self._carry_records:
            pos = min(self._page_size - self._carry_records, n)
            self._carry.append(bytes(data[int(offsets[0]) : int(offsets[pos])]))
            self._carry_records += pos
            if self._carry_records < self._page_size:
                return
            self._write(b"".join(self._carry))
            self._carry, self._carry_records = [], 0
        while n - pos >= self._page_size:
            self._write(data[int(offsets[pos]) : int(offsets[pos + self._page_size])])
            pos += self._page_size
        if pos < n:
            self._carry = [bytes(data[int(offsets[pos]) : int(offsets[n])])]
            self._carry_records = n - pos

    def close(self) -> None:
        """Write the last partial page, then give every page its ``next_page``/``total_pages``."""
        if self._carry_records or self.pages == 0:
            self._write(b"".join(self._carry))
            self._carry, self._carry_records = [], 0
        for page in range(1, self.pages + 1):
            next_page = str(page + 1) if page < self.pages else "null"
            with self._path(page).open("ab") as f:
                f.write(f',"next_page":{next_page},"total_pages":{self.pages}}}\n'.encode())

    def _write(self, body: bytes | memoryview) -> None:
        self.pages += 1
        with self._path(self.pages).open("wb") as f:
            f.write(f'{{"page":{self.pages},"page_size":{self._page_size},"records":['.encode())
            if len(body):
                f.write(b"\n")
                f.write(body[:-2])  # drop the separator after the last record
                f.write(b"\n")
            f.write(b"]")

    def _path(self, page: int) -> Path:
        return self._directory / f"page-{page:05d}.json"
