"""``churn restore``: rebuild every store from a backup, into empty stores only.

Three phases, and nothing is written before the third:

1. **verify**: every file of the backup is read and compared with the manifest (size and
   sha256); one that differs stops the restore with a line naming it. An encrypted backup is
   also decrypted here, seal first (plaintext discarded), so a wrong key or a forged file
   stops the restore before anything is written; with ``encryption.backups`` on, a backup
   that is not encrypted is refused unless ``allow_unencrypted`` (one taken before then);
2. **plan**: where each part goes under the current settings (a store may have moved since the
   backup: a PostgreSQL dump goes to wherever its settings point now), and whether each target
   is empty; a non-empty target refuses the restore unless ``force``;
3. **write**: Delta tables, model artifacts, registry metadata (after the artifacts, so no
   version is visible before its files), the other MongoDB databases, PostgreSQL, and the
   configuration only when asked. Each file is checked against the manifest again as it is
   copied. Restored tables, registry versions and document counts are compared with the
   manifest at the end.

Guarantees: a restored Delta table is the backed-up version with its version number and
history; registry versions, aliases, alias history and metric history are the backed-up
documents; PostgreSQL is what ``pg_dump`` saw (restored in one transaction). A restore that
fails midway leaves what it already wrote: rerun it with ``force``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from churn_core.backup import configs, delta, mongo, postgres
from churn_core.backup import registry as registry_backup
from churn_core.backup.create import DELTA, open_store
from churn_core.backup.manifest import (
    BackupError,
    FileEntry,
    Manifest,
    MongoEntry,
    PostgresEntry,
)
from churn_core.backup.progress import LockedReporter, Reporter, SilentReporter
from churn_core.backup.storage import BackupStore
from churn_core.logging import get_logger
from churn_core.registry import Registry, open_registry
from churn_core.settings import Settings

log = get_logger(__name__)


class RestoreRefused(BackupError):
    """A target is not empty (or cannot be created) and ``force`` was not given."""


@dataclass(frozen=True)
class RestoreSummary:
    """What one restore wrote."""

    id: str
    files: int
    bytes: int
    delta_versions: dict[str, int]
    postgres_databases: int
    mongodb_documents: int
    model_versions: int
    configs: int
    seconds: float
    created_databases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PostgresPlan:
    """One dump and the database it goes into now."""

    entry: PostgresEntry
    url: str
    exists: bool


def files_under(manifest: Manifest, prefix: str) -> list[FileEntry]:
    """The backup's files whose path starts with ``prefix/``."""
    return [f for f in manifest.files if f.path.startswith(f"{prefix}/")]


def _postgres_plan(settings: Settings, manifest: Manifest) -> list[PostgresPlan]:
    """Where each dump goes: the database its settings name today."""
    by_setting = {
        path: target.url
        for target in postgres.postgres_targets(settings)
        for path in target.settings
    }
    plans = []
    for entry in manifest.postgres:
        url = next((by_setting[s] for s in entry.settings if s in by_setting), None)
        if url is None:
            raise BackupError(
                f"the backup holds PostgreSQL database {entry.url} for {', '.join(entry.settings)}, "
                "but none of these settings is set now"
            )
        plans.append(PostgresPlan(entry, url, postgres.relations(url) is not None))
    return plans


def _mongo_plan(
    settings: Settings, manifest: Manifest
) -> list[tuple[mongo.MongoTarget, MongoEntry]]:
    targets = {t.role: t for t in mongo.mongo_targets(settings)}
    plans = []
    for entry in manifest.mongodb:
        target = targets.get(entry.role)
        if target is None:
            raise BackupError(
                f"the backup holds the {entry.role} MongoDB database ({entry.setting}), but "
                f"{entry.setting} is not set now"
                + (" or registry.metadata is not 'mongodb'" if entry.role == "registry" else "")
            )
        plans.append((target, entry))
    return plans


def _check_encryption(settings: Settings, manifest: Manifest, allow_unencrypted: bool) -> None:
    """Refuse an unencrypted backup where backups must be encrypted (unless allowed).

    Otherwise a manifest edited to say "not encrypted" (its checksum is not keyed) would make
    the restore write whatever files it lists without authenticating them.
    """
    if settings.encryption.backups and manifest.encryption is None and not allow_unencrypted:
        raise BackupError(
            f"backup {manifest.id} is not encrypted, and encryption.backups is on: refusing "
            "an unauthenticated backup (one taken before encryption was switched on restores "
            "with --allow-unencrypted)"
        )


def _check_compatible(settings: Settings, manifest: Manifest) -> None:
    """The backup belongs to the configured data set and registry kind."""
    if manifest.dataset != settings.dataset:
        raise BackupError(
            f"backup {manifest.id} holds data set {manifest.dataset!r}, the settings name "
            f"{settings.dataset!r} (churn --dataset {manifest.dataset} restore ...)"
        )
    if manifest.registry is not None and manifest.registry.metadata != settings.registry.metadata:
        raise BackupError(
            f"the backup's registry metadata is in {manifest.registry.metadata}, the settings "
            f"say {settings.registry.metadata}: set registry.metadata to match"
        )


def _occupied(
    settings: Settings,
    manifest: Manifest,
    registry: Registry,
    postgres_plans: list[PostgresPlan],
    mongo_plans: list[tuple[mongo.MongoTarget, MongoEntry]],
) -> list[str]:
    """Every target that is not empty (a restore over it would overwrite something)."""
    lake = settings.dataset_lake
    found = [
        f"Delta table {lake / e.name}"
        for e in manifest.delta
        if not delta.is_empty_target(lake / e.name)
    ]
    artifacts = registry_backup.existing_artifacts(
        registry, files_under(manifest, registry_backup.ARTIFACTS)
    )
    if artifacts:
        found.append(f"artifact store {registry.artifacts.description} ({artifacts[0]} ...)")
    root = settings.resolve(settings.registry.root)
    if settings.registry.metadata == "files" and registry_backup.existing_files_metadata(root):
        found.append(f"registry metadata folder {root}")
    for target, _ in mongo_plans:
        documents = sum(mongo.document_counts(target).values())
        if documents:
            found.append(f"MongoDB {target.display} ({documents} documents)")
    for plan in postgres_plans:
        tables = postgres.relations(plan.url) if plan.exists else None
        if tables:
            shown = postgres.display_postgres_url(plan.url)
            found.append(f"PostgreSQL {shown} ({len(tables)} relations)")
    return found


def _refuse(
    backup_id: str, occupied: list[str], plans: list[PostgresPlan], force: bool, create: bool
) -> None:
    """Raise :class:`RestoreRefused` unless every target may be written."""
    missing = [postgres.display_postgres_url(p.url) for p in plans if not p.exists]
    if missing and not create:
        raise RestoreRefused(
            f"refusing to restore backup {backup_id}: PostgreSQL database {missing[0]} does "
            "not exist and creating databases was not allowed"
        )
    if occupied and not force:
        more = f" (and {len(occupied) - 1} more)" if len(occupied) > 1 else ""
        raise RestoreRefused(
            f"refusing to restore backup {backup_id}: {occupied[0]} is not empty{more}; "
            "restore into empty stores, or pass --force to overwrite"
        )


def _restore_delta(
    settings: Settings, manifest: Manifest, store: BackupStore, force: bool, reporter: Reporter
) -> dict[str, int]:
    versions = {}
    for entry in manifest.delta:
        files = files_under(manifest, f"{DELTA}/{entry.name}")
        delta.restore_table(
            store,
            manifest.id,
            entry,
            files,
            DELTA,
            settings.dataset_lake / entry.name,
            force=force,
            reporter=reporter,
        )
        versions[entry.name] = entry.version
        log.info("delta table restored", table=entry.name, version=entry.version)
    return versions


def _restore_postgres(
    settings: Settings,
    manifest: Manifest,
    store: BackupStore,
    plans: list[PostgresPlan],
    force: bool,
    reporter: Reporter,
) -> list[str]:
    created = []
    dumps = {f.path: f for f in manifest.files}
    with tempfile.TemporaryDirectory(prefix="churn-restore-") as scratch:
        for plan in plans:
            if not plan.exists:
                postgres.create_database(plan.url)
                created.append(postgres.display_postgres_url(plan.url))
            local = Path(scratch) / Path(plan.entry.dump).name
            reporter.stage(f"pg_restore {plan.entry.database}")
            store.copy_out(
                manifest.id, dumps[plan.entry.dump], pafs.LocalFileSystem(), str(local), reporter
            )
            postgres.restore_database(
                plan.url,
                local,
                settings.backup.pg_restore,
                settings.backup.pg_timeout_s,
                clean=force,
            )
            log.info("postgres restored", database=postgres.display_postgres_url(plan.url))
    return created


def _restore_registry(
    settings: Settings,
    manifest: Manifest,
    store: BackupStore,
    registry: Registry,
    mongo_plans: list[tuple[mongo.MongoTarget, MongoEntry]],
    force: bool,
    reporter: Reporter,
) -> int:
    """Artifacts first, then the metadata that makes versions visible; returns documents inserted."""
    files = {f.path: f for f in manifest.files}
    reporter.stage("artifacts")
    registry_backup.restore_artifacts(
        registry,
        store,
        manifest.id,
        files_under(manifest, registry_backup.ARTIFACTS),
        reporter,
        settings.backup.workers,
    )
    reporter.stage("registry metadata")
    documents = 0
    if settings.registry.metadata == "files":
        registry_backup.restore_files_metadata(
            settings.resolve(settings.registry.root),
            store,
            manifest.id,
            files_under(manifest, registry_backup.FILES_METADATA),
            reporter,
        )
    for target, entry in mongo_plans:
        reporter.stage(f"mongodb {entry.database}")
        restored = mongo.import_database(
            target, entry, store, manifest.id, files, force=force, reporter=reporter
        )
        documents += sum(restored.values())
    return documents


def restore_backup(
    settings: Settings,
    ref: str = "latest",
    *,
    force: bool = False,
    create_databases: bool = True,
    configs_to: Path | None = None,
    reporter: Reporter | None = None,
    allow_unencrypted: bool = False,
) -> RestoreSummary:
    """Verify, plan and write a restore of backup ``ref`` (an id or ``latest``).

    ``allow_unencrypted``: restore a backup without encryption although ``encryption.backups``
    is on (one taken before it was switched on); its artifacts are encrypted as they go back
    when ``encryption.registry`` is on.
    """
    started = time.perf_counter()
    report = LockedReporter(reporter or SilentReporter())
    store = open_store(settings)
    backup_id = store.resolve(ref)
    _check_encryption(settings, store.manifest(backup_id), allow_unencrypted)
    manifest = store.verify(backup_id, settings.backup.workers, report, require_key=True)
    _check_compatible(settings, manifest)
    postgres_plans = _postgres_plan(settings, manifest)
    mongo_plans = _mongo_plan(settings, manifest)
    with open_registry(
        settings.registry, settings.resolve, encryption=settings.encryption
    ) as registry:
        occupied = _occupied(settings, manifest, registry, postgres_plans, mongo_plans)
        _refuse(backup_id, occupied, postgres_plans, force, create_databases)
        report.stage("delta tables", sum(f.size for f in files_under(manifest, DELTA)))
        versions = _restore_delta(settings, manifest, store, force, report)
        documents = _restore_registry(
            settings, manifest, store, registry, mongo_plans, force, report
        )
    created = _restore_postgres(settings, manifest, store, postgres_plans, force, report)
    restored_configs = 0
    if configs_to is not None:
        report.stage("configs")
        restored_configs = configs.restore_configs(
            store,
            backup_id,
            files_under(manifest, configs.CONFIGS),
            configs_to,
            force=force,
            reporter=report,
        )
    if manifest.registry is not None:
        with open_registry(
            settings.registry, settings.resolve, encryption=settings.encryption
        ) as reopened:
            registry_backup.check_registry(reopened, manifest.registry)
    summary = RestoreSummary(
        id=backup_id,
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        delta_versions=versions,
        postgres_databases=len(postgres_plans),
        mongodb_documents=documents,
        model_versions=sum(
            len(m.versions)
            for m in (manifest.registry.models.values() if manifest.registry else [])
        ),
        configs=restored_configs,
        seconds=time.perf_counter() - started,
        created_databases=created,
    )
    log.info(
        "restore complete",
        backup=backup_id,
        delta_tables=len(versions),
        postgres_databases=summary.postgres_databases,
        mongodb_documents=documents,
        seconds=round(summary.seconds, 2),
    )
    return summary
