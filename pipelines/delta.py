"""Small helpers around Delta tables shared by the Spark jobs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable


def table_exists(path: Path) -> bool:
    """True when ``path`` holds a Delta table (a ``_delta_log`` with at least one commit)."""
    log = path / "_delta_log"
    return log.is_dir() and any(log.glob("*.json"))


def table_rows(path: Path) -> int:
    """Row count of the current version, from the Delta log's file statistics."""
    # The Delta log's add actions carry each file's row count: no data file is opened (and no
    # Arrow dataset over delta-rs's Python file system, which can abort the interpreter at exit).
    actions = pa.table(DeltaTable(str(path)).get_add_actions(flatten=True))
    return int(pc.sum(actions.column("num_records")).as_py() or 0)
