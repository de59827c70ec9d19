"""A bad ingest rolled back with Delta time travel through the real ``churn restore-table``.

Good sample data goes through the real ingest (bronze) and validation (silver) jobs on Sail.
Then the customer source delivers a broken batch that passes validation (every customer's fee
set to 999 with a newer ``updated_at``), and the same jobs merge it into silver. The CLI, run
as a subprocess the way an operator would, brings bronze, silver and the reconciliation audit
back to their versions before the bad batch (one by ``--before TIME``, two by ``--version``);
the tables must then hold exactly the good rows, with the restore in their history, and a
re-run of the jobs (bad file removed) must leave them as they are.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from churn_core.contract import load_contract
from churn_core.prediction_log import query_delta
from churn_core.settings import Settings
from churn_core.tables import Tables
from pipelines.ingest import ingest_sources
from pipelines.sample_data import generate_sample_data
from pipelines.silver import build_silver
from tests.conftest import REPO_ROOT, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CONTRACT = load_contract(REPO_ROOT / "configs" / "contracts" / "saas.yaml")
BAD_FILE = "part-bad-batch.parquet"


def rows(path: Path) -> list[str]:
    """Every row of the table's current version, as sorted JSON (NaN equals NaN)."""
    found = query_delta({"t": path}, "SELECT * FROM t").to_pylist()
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in found)


def run_jobs(spark: Any, settings: Settings, tables: Tables) -> None:
    ingest_sources(spark, CONTRACT, settings, tables)
    build_silver(spark, CONTRACT, tables)


def write_bad_batch(raw: Path) -> int:
    """Every customer again, fee 999 (in range, so validation accepts it), one day newer.

    Written with the source files' own Arrow schema, as the upstream system would.
    """
    files = sorted((raw / "customers").glob("part-*.parquet"))
    customers = pa.concat_tables(pq.read_table(f) for f in files)
    fee = customers.schema.get_field_index("monthly_fee")
    updated = customers.schema.get_field_index("updated_at")
    customers = customers.set_column(
        fee,
        customers.schema.field(fee),
        pa.array([999.0] * customers.num_rows, customers.schema.field(fee).type),
    )
    later = pc.add(customers.column(updated), pa.scalar(timedelta(days=1), pa.duration("us")))
    customers = customers.set_column(updated, customers.schema.field(updated), later)
    pq.write_table(customers, raw / "customers" / BAD_FILE)
    return customers.num_rows


def restore_table(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``churn restore-table ...`` in a new process, configured like an operator's shell."""
    environment = {
        **os.environ,
        "CHURN_ENV": "test",
        "CHURN_LAKE_DIR": str(settings.lake_dir),
        "CHURN_LOG_JSON": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "churn.cli", "restore-table", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_a_bad_ingest_is_rolled_back_with_time_travel(spark: Any, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    generate_sample_data(raw, 300, seed=11, chunk_size=300, page_size=200)
    settings = make_settings(tmp_path, raw_dir=raw)
    tables = Tables(settings.dataset_lake)
    watched = {
        "bronze/customers": tables.bronze("customers"),
        "silver/customers": tables.silver("customers"),
        "audit/reconciliation": tables.reconciliation,
    }
    run_jobs(spark, settings, tables)
    good = {name: rows(path) for name, path in watched.items()}
    good_versions = {name: DeltaTable(str(path)).version() for name, path in watched.items()}
    # A cut between the good and the bad commits, on a whole second (the CLI's resolution).
    cut = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    time.sleep(max(0.0, (cut - datetime.now(UTC)).total_seconds()) + 0.2)

    bad_rows = write_bad_batch(raw)
    run_jobs(spark, settings, tables)
    silver = (
        query_delta({"s": watched["silver/customers"]}, "SELECT monthly_fee FROM s")
        .column("monthly_fee")
        .to_pylist()
    )
    customers = len(good["silver/customers"])
    assert bad_rows == 300 and len(silver) == customers
    assert all(math.isclose(f, 999.0) for f in silver)
    for name, path in watched.items():
        assert DeltaTable(str(path)).version() > good_versions[name], name

    by_time = restore_table(settings, "bronze/customers", "--before", f"{cut:%Y-%m-%dT%H:%M:%S}")
    by_version = [
        restore_table(settings, name, "--version", str(good_versions[name]))
        for name in ("silver/customers", "audit/reconciliation")
    ]
    for done in (by_time, *by_version):
        assert done.returncode == 0, done.stderr
        assert "done restore" in done.stdout and "rows=" in done.stdout
    assert f"content_of={good_versions['bronze/customers']}" in by_time.stdout
    assert f"rows={customers}->{customers}" in by_version[0].stdout  # same keys, bad values

    for name, path in watched.items():
        assert rows(path) == good[name], name
        latest = DeltaTable(str(path)).history(1)[0]
        assert latest["operation"] == "RESTORE"
        assert int(latest["operationParameters"]["version"]) == good_versions[name]

    # The bad source file removed, the jobs run again: nothing changes any more.
    (raw / "customers" / BAD_FILE).unlink()
    run_jobs(spark, settings, tables)
    for name, path in watched.items():
        if name != "audit/reconciliation":  # a run with no new batch adds no reconciliation row
            assert rows(path) == good[name], name
    assert rows(watched["audit/reconciliation"]) == good["audit/reconciliation"]


def test_restore_table_fails_with_one_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    missing = restore_table(settings, "silver/nothing", "--version", "0")
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0
    assert (
        "churn restore-table failed: BackupError: no Delta table 'silver/nothing'" in missing.stderr
    )
