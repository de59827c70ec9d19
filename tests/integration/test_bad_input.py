"""Dirty sources: every record ends in silver or in quarantine with its reason code; counts
reconcile exactly; late and duplicate events are caught; re-runs leave every table unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from churn_core.contract import load_contract
from churn_core.tables import Tables
from pipelines.features import build_gold
from pipelines.ingest import ingest_sources
from pipelines.sample_data import generate_sample_data
from pipelines.silver import REASON_CODES, SilverSummary, build_silver
from tests.conftest import REPO_ROOT, make_settings

pytestmark = pytest.mark.integration
CONTRACT = load_contract(REPO_ROOT / "configs" / "contracts" / "saas.yaml")
GOOD_EVENT = {
    "event_id": "X-1",
    "customer_id": "C000000001",
    "event_time": "2025-06-01T10:00:00",
    "event_type": "payment",
    "amount": 10.0,
}
BAD_LINES = {
    "not json at all": "malformed_record",
    json.dumps({**GOOD_EVENT, "event_id": "BAD-1", "amount": "lots"}): "type_mismatch",
    json.dumps({k: v for k, v in GOOD_EVENT.items() if k != "event_id"}): "missing_key",
    json.dumps({**GOOD_EVENT, "event_id": "BAD-3", "event_time": "yesterday"}): "type_mismatch",
    json.dumps({**GOOD_EVENT, "event_id": "BAD-4", "event_time": None}): "missing_required",
}
# An exact re-delivery and a conflicting copy of one good event: one is kept, two quarantined.
DUPLICATES = [
    json.dumps(GOOD_EVENT),
    json.dumps(GOOD_EVENT),
    json.dumps({**GOOD_EVENT, "amount": 11.0}),
]
# Out of order but within the lateness bound: accepted.
OUT_OF_ORDER = json.dumps({**GOOD_EVENT, "event_id": "X-2", "event_time": "2025-01-05T00:00:00"})


def frame(path: Path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pandas()


def bad_customers(raw: Path) -> dict[str, str]:
    """Rows appended to the customers table, each with the reason code it must get."""
    table = pq.read_table(next((raw / "customers").glob("*.parquet")))
    first = table.slice(0, 1).to_pylist()[0]
    later = first["updated_at"] + timedelta(days=1)
    rows = {
        "C900000001": ({**first, "customer_id": "C900000001", "age": 300}, "out_of_range"),
        "C900000002": ({**first, "customer_id": "C900000002", "plan": "gold"}, "unknown_category"),
        "C900000003": (
            {**first, "customer_id": "C900000003", "monthly_fee": None},
            "missing_required",
        ),
        "null-key": ({**first, "customer_id": None}, "missing_key"),
        # A newer version, delivered twice: one copy wins, the other is a duplicate, and the
        # original row of the first file is superseded.
        "newer": ({**first, "updated_at": later, "monthly_fee": 99.0}, "superseded_version"),
        "newer-again": ({**first, "updated_at": later, "monthly_fee": 99.0}, "duplicate_key"),
    }
    extra = pa.Table.from_pylist(
        [row for row, _ in rows.values()],
        schema=pa.schema([f.with_nullable(True) for f in table.schema]),
    )
    pq.write_table(extra, raw / "customers" / "part-99999.parquet")
    return {key: code for key, (_, code) in rows.items()}


@pytest.fixture(scope="module")
def dirty_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("dirty") / "raw"
    generate_sample_data(raw, 60, seed=3, chunk_size=60, page_size=100)
    lines = [*BAD_LINES, *DUPLICATES, OUT_OF_ORDER]
    (raw / "transactions" / "part-99999.jsonl").write_text("\n".join(lines) + "\n")
    bad_customers(raw)
    page_file = sorted((raw / "support").glob("*.json"))[0]
    page = json.loads(page_file.read_text())
    page["records"].append(
        {
            "record_id": "BAD-R",
            "customer_id": "C000000002",
            "record_time": "2025-01-01T00:00:00",
            "record_type": "usage",
            "value": "high",
        }
    )
    page["records"].append("just a string")
    page_file.write_text(json.dumps(page))
    return raw


def ingest(spark: object, raw: Path, lake: Path) -> dict[str, SilverSummary]:
    settings = make_settings(lake.parent, raw_dir=raw, lake_dir=lake)
    ingest_sources(spark, CONTRACT, settings, Tables(settings.dataset_lake))  # type: ignore[arg-type]
    summaries = build_silver(spark, CONTRACT, Tables(settings.dataset_lake))  # type: ignore[arg-type]
    return {s.source: s for s in summaries}


def test_every_dirty_record_is_quarantined_with_its_reason_and_counts_reconcile(
    spark: object, dirty_raw: Path, tmp_path: Path
) -> None:
    summaries = ingest(spark, dirty_raw, tmp_path / "lake")
    tables = Tables(tmp_path / "lake" / "saas")
    assert all(s.reconciled for s in summaries.values())

    tx = summaries["transactions"]
    generated_duplicates = tx.reasons.get("duplicate_key", 0) - 2
    assert generated_duplicates >= 0  # the generator re-delivers ~0.5% of events
    expected = Counter(BAD_LINES.values()) + Counter({"duplicate_key": 2 + generated_duplicates})
    assert tx.reasons == dict(expected)
    quarantined = frame(tables.quarantine("transactions"))
    assert "not json at all" in set(quarantined["_raw"])  # the original text is kept for replay
    assert set(quarantined["reason_code"]) <= set(REASON_CODES)
    silver_tx = frame(tables.silver("transactions")).set_index("event_id")
    assert silver_tx.loc["X-1", "amount"] in (10.0, 11.0)  # exactly one copy survives
    assert "X-2" in silver_tx.index and tx.out_of_order == 0  # first batch: no reference yet

    customers = summaries["customers"]
    assert customers.reasons == {
        "out_of_range": 1,
        "unknown_category": 1,
        "missing_required": 1,
        "missing_key": 1,
        "duplicate_key": 1,
        "superseded_version": 1,
    }
    silver_customers = frame(tables.silver("customers")).set_index("customer_id")
    assert not silver_customers.index.str.startswith("C9").any()
    first = pq.read_table(next((dirty_raw / "customers").glob("part-00000.parquet"))).slice(0, 1)
    assert silver_customers.loc[first["customer_id"][0].as_py(), "monthly_fee"] == 99.0

    support = frame(tables.quarantine("support"))
    assert sorted(support["reason_code"]) == ["malformed_record", "type_mismatch"]
    assert summaries["support"].quarantined == 2
    assert "BAD-R" not in set(frame(tables.silver("support"))["record_id"])

    ledger = frame(tables.reconciliation).set_index("source")
    for name, summary in summaries.items():
        row = ledger.loc[name]
        assert (row["read"], row["accepted"], row["quarantined"]) == (
            summary.read,
            summary.accepted,
            summary.quarantined,
        )
        assert row["read"] == frame(tables.bronze(name)).shape[0]


def test_late_and_out_of_order_events_in_a_later_batch(
    spark: object, dirty_raw: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(dirty_raw, raw)
    ingest(spark, raw, tmp_path / "lake")
    tables = Tables(tmp_path / "lake" / "saas")
    silver = frame(tables.silver("transactions"))
    newest = silver["event_time"].max()
    latest = silver.loc[silver["event_time"].idxmax()]
    late = {
        **GOOD_EVENT,
        "event_id": "LATE-1",
        "event_time": f"{newest - timedelta(days=90):%Y-%m-%dT%H:%M:%S}",
    }
    straggler = {
        **GOOD_EVENT,
        "event_id": "OOO-1",
        "event_time": f"{newest - timedelta(days=3):%Y-%m-%dT%H:%M:%S}",
    }
    redelivered = {  # the newest accepted event again, with another amount
        **GOOD_EVENT,
        "event_id": latest["event_id"],
        "customer_id": latest["customer_id"],
        "event_time": f"{newest:%Y-%m-%dT%H:%M:%S}",
        "amount": 12.0,
    }
    lines = [json.dumps(late), json.dumps(straggler), json.dumps(redelivered)]
    (raw / "transactions" / "part-late.jsonl").write_text("\n".join(lines) + "\n")

    tx = ingest(spark, raw, tmp_path / "lake")["transactions"]
    assert (tx.read, tx.accepted, tx.quarantined) == (3, 1, 2)
    assert tx.reasons == {"late_event": 1, "duplicate_key": 1}
    assert tx.out_of_order == 1
    assert "OOO-1" in set(frame(tables.silver("transactions"))["event_id"])


def delta_state(lake: Path) -> dict[str, tuple[int, pd.DataFrame]]:
    """Version and sorted contents of every Delta table under ``lake``."""
    state = {}
    for log in sorted(lake.rglob("_delta_log")):
        table = DeltaTable(str(log.parent))
        contents = table.to_pandas()
        contents = contents.drop(columns=[c for c in contents.columns if c.endswith("_at")])
        state[str(log.parent.relative_to(lake))] = (
            table.version(),
            contents.sort_values(list(contents.columns)).reset_index(drop=True),
        )
    return state


def test_rerunning_every_job_on_the_same_input_leaves_every_table_unchanged(
    spark: object, dirty_raw: Path, tmp_path: Path
) -> None:
    tables = Tables(tmp_path / "lake" / "saas")
    ingest(spark, dirty_raw, tmp_path / "lake")
    assert build_gold(spark, CONTRACT, tables).written  # type: ignore[arg-type]
    before = delta_state(tmp_path / "lake" / "saas")
    again = ingest(spark, dirty_raw, tmp_path / "lake")
    assert all(s.read == 0 for s in again.values())
    assert not build_gold(spark, CONTRACT, tables).written  # type: ignore[arg-type]
    after = delta_state(tmp_path / "lake" / "saas")
    persistent = {k for k in before if not k.startswith("_staging")}
    assert {"gold/features", "audit/reconciliation", "silver/customers"} <= persistent
    assert persistent <= set(after)
    for name in persistent:
        assert after[name][0] == before[name][0], f"{name} got a new Delta version"
        pd.testing.assert_frame_equal(after[name][1], before[name][1])


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    churn = Path(sys.executable).with_name("churn")
    return subprocess.run(
        [str(churn), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
    )


def test_missing_source_fails_the_job_with_one_clear_line(tmp_path: Path) -> None:
    result = run_cli(
        "--env",
        "test",
        "ingest",
        env={"CHURN_RAW_DIR": str(tmp_path / "nowhere"), "CHURN_LAKE_DIR": str(tmp_path / "lake")},
    )
    assert result.returncode == 1
    assert "churn ingest failed: SourceNotFoundError: raw source not found:" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_setting_fails_with_the_field_named(tmp_path: Path) -> None:
    result = run_cli("--env", "test", "ingest", env={"CHURN_SAMPLE__CUSTOMERS": "-5"})
    assert result.returncode == 2
    assert "sample.customers" in result.stderr
    result = run_cli("--env", "nope", "ingest", env={})
    assert result.returncode == 2 and "unknown environment 'nope'" in result.stderr
