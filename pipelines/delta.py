"""Small helpers around Delta tables shared by the Spark jobs."""

from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable


def table_version(path: Path) -> int:
    """Current version of the Delta table at ``path`` (-1 when there is none)."""
    try:
        return int(DeltaTable(str(path)).version())
    except Exception:  # deltalake raises TableNotFoundError for a missing table
        return -1


def table_rows(path: Path) -> int:
    """Row count of the current version, from the Delta log's file statistics."""
    table = DeltaTable(str(path))
    return int(table.to_pyarrow_dataset().count_rows())
