"""Dirty sources: every record ends in silver or quarantine with a reason; re-runs agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from churn_core.contract import load_contract
from churn_core.tables import Tables
from pipelines.ingest import ingest_sources
from pipelines.sample_data import generate_sample_data
from pipelines.silver import build_silver
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration
CONTRACT = load_contract(REPO_ROOT / "configs" / "contracts" / "saas.yaml")
BAD_LINES = [
    "not json at all",
    json.dumps(
        {
            "event_id": "BAD-1",
            "customer_id": "C000000001",
            "event_time": "2025-01-01T00:00:00",
            "event_type": "payment",
            "amount": "lots",
        }
    ),
    json.dumps(
        {
            "customer_id": "C000000001",
            "event_time": "2025-01-01T00:00:00",
            "event_type": "payment",
            "amount": 1.0,
        }
    ),
    json.dumps(
        {
            "event_id": "BAD-3",
            "customer_id": "C000000001",
            "event_time": "yesterday",
            "event_type": "payment",
            "amount": 1.0,
        }
    ),
]


def frame(path: Path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pandas()


@pytest.fixture(scope="module")
def dirty_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("dirty") / "raw"
    generate_sample_data(raw, 60, seed=3, chunk_size=60, page_size=100)
    with (raw / "transactions" / "part-00000.jsonl").open("a") as handle:
        handle.write("\n".join(BAD_LINES) + "\n")
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


def test_bad_records_are_quarantined_with_reasons_and_counts_reconcile(
    spark: object, dirty_raw: Path, tmp_path: Path
) -> None:
    tables = Tables(tmp_path / "lake")
    ingest_sources(spark, CONTRACT, dirty_raw, tables)  # type: ignore[arg-type]
    summaries = {s.source: s for s in build_silver(spark, CONTRACT, tables)}  # type: ignore[arg-type]
    assert all(s.reconciled for s in summaries.values())
    tx = summaries["transactions"]
    assert tx.quarantined == len(BAD_LINES)
    reasons = sorted(frame(tables.quarantine("transactions"))["_reason"])
    assert reasons == sorted(
        [
            "missing key column event_id",  # not JSON: nothing parsed
            "column amount: not a valid double",
            "missing key column event_id",
            "column event_time: not a valid timestamp",
        ]
    )
    quarantined = frame(tables.quarantine("transactions"))
    assert "not json at all" in set(quarantined["_raw"])  # the original text is kept for replay
    support = frame(tables.quarantine("support"))
    assert sorted(support["_reason"]) == [
        "column value: not a valid double",
        "missing key column record_id",
    ]
    assert summaries["support"].quarantined == 2
    assert "BAD-R" not in set(frame(tables.silver("support"))["record_id"])


def test_rerunning_ingest_gives_the_same_tables(
    spark: object, dirty_raw: Path, tmp_path: Path
) -> None:
    tables = Tables(tmp_path / "lake")
    snapshots = []
    for _ in range(2):
        ingest_sources(spark, CONTRACT, dirty_raw, tables)  # type: ignore[arg-type]
        build_silver(spark, CONTRACT, tables)  # type: ignore[arg-type]
        snapshots.append(
            {
                s: frame(tables.silver(s))
                .sort_values(CONTRACT.sources[s].key)
                .reset_index(drop=True)
                for s in CONTRACT.sources
            }
        )
    for source in CONTRACT.sources:
        pd.testing.assert_frame_equal(snapshots[0][source], snapshots[1][source])


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
