"""Undo a bad write to one Delta table with time travel (``churn restore-table``).

``DeltaTable.restore(n)`` commits a new version whose content is version ``n``'s: nothing is
rewritten or deleted, the bad versions stay in the history (and readable by time travel until
vacuumed), and a restore is itself undone by restoring the version before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from churn_core.backup.delta import is_table, row_count
from churn_core.backup.manifest import BackupError
from churn_core.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class TableRestore:
    """What one time-travel restore did."""

    table: Path
    # The version that was current before, the version whose content was brought back, and
    # the version the restore committed.
    previous_version: int
    target_version: int
    new_version: int
    rows_before: int | None
    rows_after: int | None
    files_removed: int
    files_restored: int
    seconds: float


def resolve_table(lake: Path, name_or_path: str) -> Path:
    """A table named relative to the data set's lake (``silver/customers``) or by path."""
    given = Path(name_or_path)
    candidates = [given] if given.is_absolute() else [lake / given, given.resolve()]
    for candidate in candidates:
        if is_table(candidate):
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise BackupError(f"no Delta table {name_or_path!r} (looked at {tried})")


def _commit_time(entry: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(entry["timestamp"]) / 1000, UTC)


def version_before(table: Path, moment: datetime) -> int:
    """The version that was current just before ``moment`` (the newest committed earlier)."""
    from deltalake import DeltaTable

    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    earlier = [
        int(entry["version"])
        for entry in DeltaTable(str(table)).history()
        if _commit_time(entry) < moment
    ]
    if not earlier:
        raise BackupError(f"{table}: no version was committed before {moment.isoformat()}")
    return max(earlier)


def _rows(table: Any) -> int | None:
    return row_count(pa.table(table.get_add_actions(flatten=True)))


def restore_version(table: Path, version: int) -> TableRestore:
    """Commit version ``version``'s content as the table's new current version."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    started = time.perf_counter()
    current = DeltaTable(str(table))
    previous = current.version()
    if not 0 <= version < previous:
        raise BackupError(
            f"{table}: cannot restore version {version}: the current version is {previous} "
            f"(pick one of 0..{previous - 1})"
        )
    rows_before = _rows(current)
    try:
        metrics = current.restore(version)
    except DeltaError as error:
        # Most often: the version's data files were vacuumed since.
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BackupError(f"{table}: restoring version {version} failed: {first}") from error
    after = DeltaTable(str(table))
    result = TableRestore(
        table=table,
        previous_version=previous,
        target_version=version,
        new_version=after.version(),
        rows_before=rows_before,
        rows_after=_rows(after),
        files_removed=int(metrics.get("num_removed_file", metrics.get("numRemovedFile", 0))),
        files_restored=int(metrics.get("num_restored_file", metrics.get("numRestoredFile", 0))),
        seconds=time.perf_counter() - started,
    )
    log.info(
        "delta table restored",
        table=str(table),
        previous_version=previous,
        restored_version=version,
        new_version=result.new_version,
        rows_before=rows_before,
        rows_after=result.rows_after,
    )
    return result
