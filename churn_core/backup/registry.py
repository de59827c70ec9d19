"""The model registry in a backup: its metadata (JSON files or MongoDB) and every artifact.

Backup reads the metadata first and then the artifacts of exactly the versions it read, so a
version registered meanwhile is either whole in the backup or absent. Each artifact is read
through the registry's artifact store, which checks it against the checksum recorded at
registration: a damaged artifact fails the backup instead of being preserved silently.

Restore writes in registration order: artifacts first, metadata last, so no version becomes
visible before its files are back. Artifacts are backed up as read through the registry
(decrypted, checksum-verified) and stored under the backup's own encryption; a restore writes
them back through the artifact store, which encrypts them again when ``encryption.registry``
is on.

Layout in the backup::

    artifacts/<name>/versions/000001/model.ubj, contract.yaml, report.json ...
    registry/<name>/aliases.json, metric_history.jsonl,
             <name>/versions/000001/metadata.json          (JSON-files metadata)
    mongodb/registry/<collection>.jsonl, .indexes.json     (MongoDB metadata)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from churn_core.backup.manifest import (
    BackupError,
    FileEntry,
    ModelEntry,
    MongoEntry,
    RegistryEntry,
)
from churn_core.backup.mongo import MongoTarget, export_database
from churn_core.backup.progress import Reporter, run_parallel
from churn_core.backup.storage import BackupStore, BackupWriter
from churn_core.logging import get_logger
from churn_core.registry import (
    ALIASES_NAME,
    ARTIFACT_NAME,
    CONTRACT_NAME,
    METADATA_NAME,
    METRIC_HISTORY_NAME,
    ModelVersion,
    MongoMetadataStore,
    Registry,
)
from churn_core.settings import Settings

log = get_logger(__name__)

ARTIFACTS = "artifacts"
FILES_METADATA = "registry"
MONGO_FOLDER = "mongodb/registry"
Versions = set[tuple[str, int]]
Aliases = dict[str, dict[str, int]]


def _aliases_document(data: bytes) -> dict[str, int]:
    """Alias -> version from an ``aliases.json`` (format 2, or the earlier flat map)."""
    loaded = json.loads(data)
    flat = loaded["aliases"] if loaded.get("format") == 2 else loaded
    return {str(k): int(v) for k, v in flat.items()}


def _metadata_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(alias and metric files, version metadata files) of a JSON-files registry."""
    if not root.is_dir():
        return [], []
    first: list[Path] = []
    versions: list[Path] = []
    for model in sorted(p for p in root.iterdir() if p.is_dir()):
        first += [model / n for n in (ALIASES_NAME, METRIC_HISTORY_NAME) if (model / n).is_file()]
        versions += sorted(model.glob(f"versions/*/{METADATA_NAME}"))
    return first, versions


def _export_files_metadata(root: Path, writer: BackupWriter) -> tuple[Versions, Aliases]:
    """Copy the JSON metadata files: aliases and metrics first, version files last."""
    first, versions = _metadata_files(root)
    aliases: Aliases = {}
    found: Versions = set()
    for path in [*first, *versions]:
        data = path.read_bytes()
        relative = path.relative_to(root).as_posix()
        writer.put_bytes(f"{FILES_METADATA}/{relative}", data)
        name = relative.split("/", 1)[0]
        if path.name == ALIASES_NAME:
            aliases[name] = _aliases_document(data)
        elif path.name == METADATA_NAME:
            meta = json.loads(data)
            found.add((str(meta["name"]), int(meta["version"])))
    return found, aliases


def _export_mongo_metadata(
    target: MongoTarget, writer: BackupWriter
) -> tuple[Versions, Aliases, MongoEntry]:
    """Export the registry's collections, noting versions and aliases on the way."""
    found: Versions = set()
    aliases: Aliases = {}

    def note(collection: str, document: dict[str, Any]) -> None:
        if collection == MongoMetadataStore.VERSIONS:
            found.add((str(document["name"]), int(document["version"])))
        elif collection == MongoMetadataStore.ALIASES:
            aliases.setdefault(str(document["name"]), {})[str(document["alias"])] = int(
                document["version"]
            )

    entry = export_database(target, writer, MONGO_FOLDER, on_document=note)
    return found, aliases, entry


def _artifact_names(meta: ModelVersion) -> list[str]:
    # Versions registered before every file had a checksum list no files: model + contract.
    return [f.name for f in meta.files] or [ARTIFACT_NAME, CONTRACT_NAME]


def _copy_artifact(
    registry: Registry, meta: ModelVersion, filename: str, writer: BackupWriter, reporter: Reporter
) -> FileEntry:
    """One artifact, read (and checksum-checked) through the registry, into the backup."""
    entry = meta.file(filename)
    legacy = meta.artifact_sha256 if filename == ARTIFACT_NAME else None
    data = registry.artifacts.read(meta.artifact_dir, filename, entry or legacy)
    reporter.advance(len(data))
    return writer.put_bytes(f"{ARTIFACTS}/{meta.artifact_dir}/{filename}", data)


def export_registry(
    settings: Settings,
    registry: Registry,
    writer: BackupWriter,
    mongo: MongoTarget | None,
    reporter: Reporter,
    workers: int,
) -> tuple[RegistryEntry, MongoEntry | None]:
    """Metadata, then the artifacts of every version the metadata holds.

    Returns the manifest's registry entry and, for MongoDB metadata, the exported database's
    entry (None for JSON files).
    """
    mongo_entry: MongoEntry | None = None
    if settings.registry.metadata == "mongodb":
        if mongo is None:
            raise BackupError("registry.metadata is 'mongodb' but registry.mongodb_url is unset")
        versions, aliases, mongo_entry = _export_mongo_metadata(mongo, writer)
    else:
        versions, aliases = _export_files_metadata(settings.resolve(settings.registry.root), writer)
    jobs: list[Callable[[], FileEntry]] = []
    counts: dict[str, int] = {}
    total = 0
    for name, version in sorted(versions):
        meta = registry.get(name, version)
        filenames = _artifact_names(meta)
        counts[name] = counts.get(name, 0) + len(filenames)
        total += sum(f.size for f in meta.files)
        jobs += [partial(_copy_artifact, registry, meta, f, writer, reporter) for f in filenames]
    reporter.stage("artifacts", total or None)
    run_parallel(jobs, workers)
    models = {
        name: ModelEntry(
            versions=sorted(v for n, v in versions if n == name),
            aliases=dict(sorted(aliases.get(name, {}).items())),
            artifact_files=counts.get(name, 0),
        )
        for name in sorted({n for n, _ in versions} | set(aliases))
    }
    entry = RegistryEntry(
        metadata=settings.registry.metadata,
        artifacts=registry.artifacts.description,
        models=models,
    )
    log.info("registry backed up", models={n: m.versions for n, m in models.items()})
    return entry, mongo_entry


def artifact_target(registry: Registry, entry: FileEntry) -> str:
    """Where a backed-up artifact goes in the configured artifact store."""
    relative = entry.path.removeprefix(f"{ARTIFACTS}/")
    base = registry.artifacts.base
    return f"{base}/{relative}" if base else relative


def existing_artifacts(registry: Registry, files: list[FileEntry]) -> list[str]:
    """Artifacts of the backup that the artifact store already holds (a restore would overwrite)."""
    filesystem = registry.artifacts.filesystem
    infos = filesystem.get_file_info([artifact_target(registry, f) for f in files])
    return [
        f.path for f, info in zip(files, infos, strict=True) if info.type != pafs.FileType.NotFound
    ]


def _restore_artifact(
    registry: Registry, store: BackupStore, backup_id: str, entry: FileEntry, reporter: Reporter
) -> None:
    """One artifact back through the artifact store: re-encrypted under the registry's key and
    the artifact's own name when ``encryption.registry`` is on (a backup's encryption is bound
    to the backup, not to the store)."""
    data = store.read_file(backup_id, entry)
    # Any split of the path works (report files may sit in sub-folders): the store joins the
    # two again, for the file's location and for the name it is encrypted under.
    directory, filename = entry.path.removeprefix(f"{ARTIFACTS}/").rsplit("/", 1)
    registry.artifacts.restore_file(directory, filename, data)
    reporter.advance(entry.size)


def restore_artifacts(
    registry: Registry,
    store: BackupStore,
    backup_id: str,
    files: list[FileEntry],
    reporter: Reporter,
    workers: int,
) -> int:
    """Copy every backed-up artifact into the configured artifact store; returns files written."""
    jobs = [partial(_restore_artifact, registry, store, backup_id, f, reporter) for f in files]
    run_parallel(jobs, workers)
    return len(jobs)


def existing_files_metadata(root: Path) -> list[str]:
    """Metadata files already in a JSON-files registry."""
    first, versions = _metadata_files(root)
    return [p.relative_to(root).as_posix() for p in [*first, *versions]]


def restore_files_metadata(
    root: Path, store: BackupStore, backup_id: str, files: list[FileEntry], reporter: Reporter
) -> int:
    """Copy the JSON metadata back: version files first, aliases and metrics last."""
    local = pafs.LocalFileSystem()
    ordered = sorted(files, key=lambda f: (not f.path.endswith(f"/{METADATA_NAME}"), f.path))
    for file in ordered:
        target = root / file.path.removeprefix(f"{FILES_METADATA}/")
        store.copy_out(backup_id, file, local, str(target), reporter)
    return len(ordered)


def check_registry(registry: Registry, expected: RegistryEntry) -> None:
    """The restored registry lists the versions and aliases the manifest recorded."""
    for name, model in expected.models.items():
        versions = registry.version_numbers(name)
        aliases = registry.aliases(name)
        if versions != model.versions or aliases != model.aliases:
            raise BackupError(
                f"restored registry model {name!r} has versions {versions} and aliases "
                f"{aliases}; the backup holds {model.versions} and {model.aliases}"
            )
