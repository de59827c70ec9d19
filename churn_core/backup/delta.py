"""Delta tables in a backup: each one copied as a self-contained table at one pinned version.

For version ``v`` the backup holds the ``_delta_log`` commits up to and including ``v``, the
last checkpoint at or before ``v`` (all its parts), and exactly the data files ``v`` references
(``DeltaTable.file_uris()`` of the table loaded at ``v``). Nothing else: files of older versions
that ``v`` no longer reads are left out, so a table vacuumed after the backup loses nothing the
backup needs, and a restored table reads exactly as ``v`` did. Its log files are copied byte for
byte, so the restored table keeps the version numbering (its current version is ``v``, its
history lists every commit up to ``v``); time travel to a version older than ``v`` needs that
version's data files, which the backup does not hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from churn_core.backup.manifest import BackupError, DeltaEntry, FileEntry
from churn_core.backup.progress import Reporter
from churn_core.backup.storage import BackupStore, LocalSource

LOG_DIR = "_delta_log"
LAST_CHECKPOINT = "_last_checkpoint"
SIDECARS = "_sidecars"
_COMMIT = re.compile(r"^(\d{20})\.json$")
# Classic (NNN.checkpoint.parquet), multi-part (NNN.checkpoint.K.N.parquet), v2 (NNN.checkpoint.<uuid>.json|parquet).
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(\.[^/]+)?\.(parquet|json)$")
_CRC = re.compile(r"^(\d{20})\.crc$")
_COMPACTED = re.compile(r"^(\d{20})\.(\d{20})\.compacted\.json$")
_DELETION_VECTOR = re.compile(r"^deletion_vector_[0-9a-f-]+\.bin$")


@dataclass(frozen=True)
class TableSnapshot:
    """What to copy for one table at its pinned version."""

    name: str
    root: Path
    version: int
    # Relative to the table's folder (``_delta_log/00000000000000000003.json``).
    log_files: list[str]
    data_files: list[str]
    rows: int | None

    def sources(self, prefix: str) -> list[LocalSource]:
        """The files as copy jobs into ``<prefix>/<name>/`` of the backup."""
        local = pafs.LocalFileSystem()
        return [
            LocalSource(local, str(self.root / relative), f"{prefix}/{self.name}/{relative}")
            for relative in [*self.log_files, *self.data_files]
        ]


def is_table(folder: Path) -> bool:
    """Whether ``folder`` holds a Delta table (a log with a commit or a checkpoint)."""
    log = folder / LOG_DIR
    if not log.is_dir():
        return False
    return any(_COMMIT.match(p.name) or _CHECKPOINT.match(p.name) for p in log.iterdir())


def discover_tables(lake: Path) -> list[str]:
    """Every Delta table under ``lake``, as paths relative to it (``silver/customers``).

    Walks down until a folder holds a ``_delta_log``; tables do not nest. Hidden folders
    (``.name.restoring-...``: a restore in progress) are skipped.
    """
    found: list[str] = []
    if not lake.is_dir():
        return found
    for folder, subfolders, _ in os.walk(lake):
        here = Path(folder)
        if is_table(here):
            found.append(here.relative_to(lake).as_posix())
            subfolders[:] = []
            continue
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
    return sorted(found)


def _version_of(pattern: re.Pattern[str], name: str) -> int | None:
    match = pattern.match(name)
    return int(match.group(1)) if match else None


def select_log_files(names: Iterable[str], version: int, last_checkpoint: int | None) -> list[str]:
    """The log files (relative to ``_delta_log``) a reader needs for ``version``, and its history.

    Commits ``<= version``, the newest checkpoint ``<= version`` with all its parts (and the v2
    sidecars), checksum and compacted files that end ``<= version``; ``_last_checkpoint`` only if
    it names that checkpoint (a hint pointing past ``version`` would send readers to a
    checkpoint the backup does not hold; without the hint they list the folder).
    """
    names = sorted(names)
    commits = {v for n in names if (v := _version_of(_COMMIT, n)) is not None}
    checkpoints = {v for n in names if (v := _version_of(_CHECKPOINT, n)) is not None}
    base = max((c for c in checkpoints if c <= version), default=None)
    first = 0 if base is None else base + 1
    missing = [v for v in range(first, version + 1) if v not in commits]
    if missing:
        raise BackupError(
            f"the Delta log has no commit {missing[0]} (needed to read version {version}; "
            f"checkpoint: {base})"
        )
    chosen: list[str] = []
    for name in names:
        if name.startswith(f"{SIDECARS}/"):
            if base is not None:
                chosen.append(name)
            continue
        commit = _version_of(_COMMIT, name)
        checkpoint = _version_of(_CHECKPOINT, name)
        crc = _version_of(_CRC, name)
        compacted = _COMPACTED.match(name)
        if (
            (commit is not None and commit <= version)
            or (checkpoint is not None and checkpoint == base)
            or (crc is not None and crc <= version)
            or (compacted is not None and int(compacted.group(2)) <= version)
            or (name == LAST_CHECKPOINT and base is not None and last_checkpoint == base)
        ):
            chosen.append(name)
    return chosen


def _log_names(root: Path) -> list[str]:
    log = root / LOG_DIR
    names = [p.name for p in log.iterdir() if p.is_file()]
    sidecars = log / SIDECARS
    if sidecars.is_dir():
        names += [f"{SIDECARS}/{p.name}" for p in sidecars.iterdir() if p.is_file()]
    return names


def _last_checkpoint_version(root: Path) -> int | None:
    path = root / LOG_DIR / LAST_CHECKPOINT
    try:
        return int(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _relative(uri: str, root: Path) -> str:
    """A data file's path relative to the table folder (delta-rs gives absolute ones)."""
    path = Path(uri.removeprefix("file://"))
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise BackupError(
            f"{root}: data file {uri} lies outside the table folder (a shallow clone?)"
        ) from None


def _deletion_vectors(root: Path) -> list[str]:
    """Every deletion-vector file of the table (a superset of what the version reads)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [s for s in subfolders if s != LOG_DIR]
        found += [
            (Path(folder) / f).relative_to(root).as_posix()
            for f in files
            if _DELETION_VECTOR.match(f)
        ]
    return sorted(found)


def row_count(actions: pa.Table) -> int | None:
    """Rows of a version from its add actions' statistics (None when a file has none)."""
    if "num_records" not in actions.column_names:
        return None if actions.num_rows else 0
    column = actions.column("num_records")
    if column.null_count:
        return None
    return int(pc.sum(column).as_py() or 0)


def snapshot_table(lake: Path, name: str) -> TableSnapshot:
    """Pin a table's current version and list the files that version needs."""
    from deltalake import DeltaTable

    root = lake / name
    table = DeltaTable(str(root))
    version = table.version()
    data = sorted(_relative(uri, root) for uri in table.file_uris())
    protocol = table.protocol()
    if "deletionVectors" in (protocol.reader_features or []):
        # Deletion vectors are named by the log's add actions; copying every one keeps the
        # version readable without parsing them (a few stale ones cost little).
        data += _deletion_vectors(root)
    log = [
        f"{LOG_DIR}/{n}"
        for n in select_log_files(_log_names(root), version, _last_checkpoint_version(root))
    ]
    rows = row_count(pa.table(table.get_add_actions(flatten=True)))
    return TableSnapshot(
        name=name, root=root, version=version, log_files=log, data_files=data, rows=rows
    )


def entry_of(snapshot: TableSnapshot, written: list[FileEntry]) -> DeltaEntry:
    """The manifest entry of a copied table."""
    return DeltaEntry(
        name=snapshot.name,
        version=snapshot.version,
        rows=snapshot.rows,
        data_files=len(snapshot.data_files),
        log_files=len(snapshot.log_files),
        bytes=sum(e.size for e in written),
    )


def is_empty_target(folder: Path) -> bool:
    """Whether restoring into ``folder`` overwrites nothing (absent, or an empty folder)."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def restore_table(
    store: BackupStore,
    backup_id: str,
    entry: DeltaEntry,
    files: list[FileEntry],
    prefix: str,
    target: Path,
    *,
    force: bool,
    reporter: Reporter | None = None,
) -> None:
    """Copy a backed-up table into ``target`` (a hidden folder first, renamed when whole).

    ``force`` replaces a table already at ``target``; without it a non-empty ``target`` is
    refused. The restored table's version is checked against the manifest's.
    """
    from deltalake import DeltaTable

    if not is_empty_target(target) and not force:
        raise BackupError(f"{target} is not empty: refusing to restore over it without --force")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.restoring-{uuid.uuid4().hex[:8]}"
    local = pafs.LocalFileSystem()
    strip = f"{prefix}/{entry.name}/"
    try:
        for file in files:
            destination = staging / file.path.removeprefix(strip)
            store.copy_out(backup_id, file, local, str(destination), reporter)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    restored = DeltaTable(str(target)).version()
    if restored != entry.version:
        raise BackupError(
            f"restored table {entry.name} reads as version {restored}, the backup holds "
            f"version {entry.version}"
        )
