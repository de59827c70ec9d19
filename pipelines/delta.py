"""Small helpers around Delta tables shared by the Spark jobs."""

from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable


def table_exists(path: Path) -> bool:
    """True when ``path`` holds a Delta table (a ``_delta_log`` with at least one commit)."""
    log = path / "_delta_log"
    return log.is_dir() and any(log.glob("*.json"))


def table_rows(path: Path) -> int:
    """Row count of the current version, from the Delta log's file statistics."""
    table = DeltaTable(str(path))
    return int(table.to_pyarrow_dataset().count_rows())
