"""Which complete backups to delete after a new one succeeded (``backup.keep_last``/``keep_days``).

A backup stays while any rule wants it: it is among the newest ``keep_last``, or younger than
``keep_days``. With neither rule set nothing is deleted, and the backup just made is never
deleted. A backup's age comes from its id (UTC time of its start), so a backup whose manifest
was damaged still ages out like the others instead of being kept forever.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from churn_core.backup.storage import BackupStore
from churn_core.logging import get_logger
from churn_core.settings import BackupSettings

log = get_logger(__name__)


def created_at(backup_id: str) -> datetime:
    """When a backup started, from its id (``20261127T093015Z-3fa9``)."""
    return datetime.strptime(backup_id.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def expired(
    ids: list[str],
    keep_last: int | None,
    keep_days: float | None,
    now: datetime,
    protect: str | None = None,
) -> list[str]:
    """The ids no rule keeps, oldest first."""
    if keep_last is None and keep_days is None:
        return []
    newest_first = sorted(ids, key=created_at, reverse=True)
    kept: set[str] = set()
    if keep_last is not None:
        kept.update(newest_first[:keep_last])
    if keep_days is not None:
        horizon = now - timedelta(days=keep_days)
        kept.update(i for i in ids if created_at(i) > horizon)
    if protect is not None:
        kept.add(protect)
    return sorted((i for i in ids if i not in kept), key=created_at)


def apply_retention(
    store: BackupStore, settings: BackupSettings, now: datetime, protect: str
) -> list[str]:
    """Delete the complete backups no rule keeps; returns their ids."""
    doomed = expired(store.ids(), settings.keep_last, settings.keep_days, now, protect)
    for backup_id in doomed:
        store.delete(backup_id)
        log.info("backup deleted by retention", backup=backup_id, location=store.description)
    return doomed
