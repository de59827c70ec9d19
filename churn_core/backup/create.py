"""``churn backup``: one timestamped, checksummed backup of every store the settings name.

Order: the registry (metadata, then the artifacts of the versions it lists), the other MongoDB
databases, every Delta table (each pinned at its current version), each PostgreSQL database,
the configuration; then the manifest, the rename that makes the backup complete, and the
retention rules. Any failure removes the temporary folder and leaves older backups alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from churn_core.backup import configs, delta, mongo, postgres
from churn_core.backup.manifest import (
    ENCRYPTED_FORMAT,
    FORMAT,
    BackupError,
    DeltaEntry,
    Manifest,
    MongoEntry,
    PostgresEntry,
    RegistryEntry,
)
from churn_core.backup.progress import LockedReporter, Reporter, SilentReporter, run_parallel
from churn_core.backup.registry import export_registry
from churn_core.backup.retention import apply_retention
from churn_core.backup.storage import BackupStore, BackupWriter, new_backup_id
from churn_core.encryption import EncryptionError, load_keyring
from churn_core.logging import get_logger
from churn_core.registry import code_version, open_registry
from churn_core.settings import Settings

log = get_logger(__name__)

DELTA = "delta"
POSTGRES = "postgres"


@dataclass(frozen=True)
class BackupSummary:
    """What one backup wrote (and what retention deleted afterwards)."""

    id: str
    location: str
    files: int
    bytes: int
    delta_tables: int
    postgres_databases: int
    mongodb_databases: int
    model_versions: int
    configs: int
    seconds: float
    deleted: list[str] = field(default_factory=list)


def open_store(settings: Settings) -> BackupStore:
    """The backup root of the settings (a relative local path is taken from the project root).

    The store holds the configured encryption keys, if any: they decrypt encrypted backups
    whatever ``encryption.backups`` says now, and encrypt new ones when it is on.
    """
    root = settings.backup.root
    if "://" not in root:
        root = str(settings.resolve(Path(root)))
    try:
        keyring = load_keyring(settings.encryption, settings.resolve)
    except EncryptionError as error:
        raise BackupError(str(error)) from None
    return BackupStore.from_uri(root, keyring)


def _backup_delta(
    lake: Path, writer: BackupWriter, reporter: Reporter, workers: int
) -> list[DeltaEntry]:
    """Pin every table's version, then copy what each version needs."""
    snapshots = [delta.snapshot_table(lake, name) for name in delta.discover_tables(lake)]
    total = sum(
        (s.root / f).stat().st_size for s in snapshots for f in [*s.log_files, *s.data_files]
    )
    reporter.stage("delta tables", total)
    entries = []
    for snapshot in snapshots:
        jobs = [partial(writer.put_file, source, reporter) for source in snapshot.sources(DELTA)]
        written = run_parallel(jobs, workers)
        entries.append(delta.entry_of(snapshot, written))
        log.info(
            "delta table backed up",
            table=snapshot.name,
            version=snapshot.version,
            data_files=len(snapshot.data_files),
            log_files=len(snapshot.log_files),
        )
    return entries


def _backup_postgres(
    settings: Settings, writer: BackupWriter, reporter: Reporter
) -> list[PostgresEntry]:
    """``pg_dump`` each database the settings name."""
    entries = []
    for target in postgres.postgres_targets(settings):
        reporter.stage(f"pg_dump {target.database}")
        tables = postgres.relations(target.url)
        if tables is None:
            raise BackupError(
                f"database {target.display} ({', '.join(target.settings)}) does not exist"
            )
        dump = f"{POSTGRES}/{target.file_name}"
        with writer.open(dump) as out:
            postgres.dump_database(
                target, out, settings.backup.pg_dump, settings.backup.pg_timeout_s
            )
        entries.append(
            PostgresEntry(
                settings=list(target.settings),
                url=target.display,
                database=target.database,
                dump=dump,
                tables=tables,
            )
        )
        log.info("postgres dumped", database=target.display, tables=len(tables))
    return entries


def _backup_stores(
    settings: Settings, writer: BackupWriter, reporter: Reporter
) -> tuple[RegistryEntry, list[MongoEntry], list[DeltaEntry], list[PostgresEntry]]:
    workers = settings.backup.workers
    targets = mongo.mongo_targets(settings)
    registry_target = next((t for t in targets if t.role == "registry"), None)
    reporter.stage("registry")
    with open_registry(
        settings.registry, settings.resolve, encryption=settings.encryption
    ) as registry:
        registry_entry, registry_mongo = export_registry(
            settings, registry, writer, registry_target, reporter, workers
        )
    mongo_entries = [registry_mongo] if registry_mongo is not None else []
    for target in targets:
        if target.role != "registry":
            reporter.stage(f"mongodb {target.database}")
            mongo_entries.append(mongo.export_database(target, writer, f"mongodb/{target.role}"))
    delta_entries = _backup_delta(settings.dataset_lake, writer, reporter, workers)
    postgres_entries = _backup_postgres(settings, writer, reporter)
    return registry_entry, mongo_entries, delta_entries, postgres_entries


def create_backup(
    settings: Settings, *, reporter: Reporter | None = None, now: datetime | None = None
) -> BackupSummary:
    """Write a complete backup under ``backup.root``, then apply the retention rules."""
    started = time.perf_counter()
    began = (now or datetime.now(UTC)).astimezone(UTC)
    report = LockedReporter(reporter or SilentReporter())
    store = open_store(settings)
    backup_id = new_backup_id(began)
    writer = store.begin(backup_id, encrypt=settings.encryption.backups)
    log.info(
        "backup started",
        backup=backup_id,
        location=store.description,
        encrypted_with=writer.encryption.key_id if writer.encryption else None,
    )
    try:
        registry_entry, mongo_entries, delta_entries, postgres_entries = _backup_stores(
            settings, writer, report
        )
        report.stage("configs")
        secrets = configs.known_secrets(settings)
        copied, redactions = configs.export_configs(configs.config_dir(), writer, secrets)
        manifest = Manifest(
            format=FORMAT if writer.encryption is None else ENCRYPTED_FORMAT,
            id=backup_id,
            created_at=began,
            seconds=round(time.perf_counter() - started, 3),
            code_version=code_version(settings.resolve(Path("."))),
            env=settings.env,
            dataset=settings.dataset,
            delta=delta_entries,
            postgres=postgres_entries,
            mongodb=mongo_entries,
            registry=registry_entry,
            configs=copied,
            redacted_values=redactions,
            files=writer.entries,
            encryption=writer.encryption,
        )
        writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
    deleted = apply_retention(store, settings.backup, datetime.now(UTC), protect=backup_id)
    summary = BackupSummary(
        id=backup_id,
        location=f"{store.description}/{backup_id}",
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        delta_tables=len(delta_entries),
        postgres_databases=len(postgres_entries),
        mongodb_databases=len(mongo_entries),
        model_versions=sum(len(m.versions) for m in registry_entry.models.values()),
        configs=len(copied),
        seconds=time.perf_counter() - started,
        deleted=deleted,
    )
    log.info(
        "backup complete",
        backup=backup_id,
        files=summary.files,
        bytes=summary.bytes,
        delta_tables=summary.delta_tables,
        deleted=deleted,
        seconds=round(summary.seconds, 2),
    )
    return summary
