"""MongoDB in a backup: each collection exported through plain pymongo, re-inserted on restore.

Documents are written as canonical extended JSON (``bson.json_util``), one per line, so every
BSON type (dates to the millisecond, 64-bit integers, ObjectIds) reads back as it was; each
collection's indexes go next to it, so unique indexes are back before the first write.

The registry's collections are exported in an order that keeps references whole without a
transaction: aliases, their events and metric history first, versions last. A version
registered meanwhile may then be in the backup without an alias; an alias can never point at a
version the backup lacks (aliases only ever point at versions that already exist).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow.fs as pafs

from churn_core.backup.manifest import BackupError, FileEntry, MongoEntry
from churn_core.backup.progress import Reporter
from churn_core.backup.storage import BackupStore, BackupWriter
from churn_core.logging import get_logger
from churn_core.registry import display_uri
from churn_core.settings import Settings, TlsSettings
from churn_core.tls import mongo_options

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.database import Database

log = get_logger(__name__)

Role = Literal["registry", "monitoring"]
# Exported after every other collection (see the module docstring).
EXPORT_LAST = ("model_versions",)
INSERT_BATCH = 1_000
DocumentHook = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class MongoTarget:
    """One MongoDB database the settings use, and for what."""

    role: Role
    setting: str
    # May carry a password: only given to pymongo, never printed.
    url: str
    database: str
    timeout_s: float
    # TLS of the same connection: the setting next to ``setting`` (registry.mongodb_tls).
    tls: TlsSettings = field(default_factory=TlsSettings)

    @property
    def tls_setting(self) -> str:
        """Where ``tls`` sits in the settings, for error messages."""
        return self.setting.removesuffix("_url") + "_tls"

    @property
    def display(self) -> str:
        """Server and database, without credentials."""
        return f"{display_uri(self.url)} database {self.database!r}"


def mongo_targets(settings: Settings) -> list[MongoTarget]:
    """The registry's database (when its metadata is in MongoDB) and the monitoring database."""
    targets: list[MongoTarget] = []
    registry, monitoring = settings.registry, settings.monitoring
    if registry.metadata == "mongodb" and registry.mongodb_url is not None:
        targets.append(
            MongoTarget(
                "registry",
                "registry.mongodb_url",
                registry.mongodb_url.get_secret_value(),
                registry.mongodb_database,
                registry.mongodb_timeout_s,
                registry.mongodb_tls,
            )
        )
    if monitoring.mongodb_url is not None:
        candidate = MongoTarget(
            "monitoring",
            "monitoring.mongodb_url",
            monitoring.mongodb_url.get_secret_value(),
            monitoring.mongodb_database,
            monitoring.mongodb_timeout_s,
            monitoring.mongodb_tls,
        )
        # One database used for both is backed up (and restored) once.
        if not any(_same_database(t, candidate) for t in targets):
            targets.append(candidate)
    return targets


def _same_database(a: MongoTarget, b: MongoTarget) -> bool:
    return display_uri(a.url) == display_uri(b.url) and a.database == b.database


@contextmanager
def _database(target: MongoTarget) -> Iterator[Database[dict[str, Any]]]:
    from pymongo import MongoClient, WriteConcern

    timeout_ms = int(target.timeout_s * 1000)
    client: MongoClient[dict[str, Any]] = MongoClient(
        target.url,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="churn-backup",
        **mongo_options(target.tls, target.tls_setting),
    )
    try:
        yield client.get_database(target.database, write_concern=WriteConcern(w="majority", j=True))
    finally:
        client.close()


@contextmanager
def _mongo_errors(target: MongoTarget, action: str) -> Iterator[None]:
    """pymongo errors as one line naming the database (never the password)."""
    from pymongo.errors import PyMongoError

    try:
        yield
    except PyMongoError as error:
        text = str(error).split(", Timeout:")[0].split(" (configured timeouts")[0]
        if target.url in text:
            text = text.replace(target.url, display_uri(target.url))
        raise BackupError(f"{action} {target.display}: {' '.join(text.split())[:300]}") from None


def _export_order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (n in EXPORT_LAST, n))


def _index_specs(information: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Index definitions to re-create (the ``_id`` index exists anyway)."""
    specs = []
    for name, info in sorted(information.items()):
        if name == "_id_":
            continue
        options = {k: v for k, v in info.items() if k not in ("v", "ns", "key")}
        specs.append({"name": name, "key": [list(part) for part in info["key"]], **options})
    return specs


def export_database(
    target: MongoTarget,
    writer: BackupWriter,
    folder: str,
    on_document: DocumentHook | None = None,
) -> MongoEntry:
    """Every collection of the target database into ``<folder>/<collection>.jsonl``."""
    from bson import json_util

    counts: dict[str, int] = {}
    with _mongo_errors(target, "cannot export"), _database(target) as db:
        for name in _export_order(db.list_collection_names()):
            collection = db.get_collection(name)
            count = 0
            with writer.open(f"{folder}/{name}.jsonl") as out:
                for document in collection.find({}, sort=[("_id", 1)]):
                    line = json_util.dumps(document, json_options=json_util.CANONICAL_JSON_OPTIONS)
                    out.write(line.encode() + b"\n")
                    count += 1
                    if on_document is not None:
                        on_document(name, document)
            specs = _index_specs(collection.index_information())
            writer.put_bytes(
                f"{folder}/{name}.indexes.json",
                json_util.dumps(specs, json_options=json_util.CANONICAL_JSON_OPTIONS).encode(),
            )
            counts[name] = count
    log.info("mongodb exported", database=target.display, collections=counts)
    return MongoEntry(
        role=target.role,
        setting=target.setting,
        url=display_uri(target.url),
        database=target.database,
        folder=folder,
        collections=counts,
    )


def document_counts(target: MongoTarget) -> dict[str, int]:
    """Documents per collection in the target database (empty: nothing to overwrite)."""
    with _mongo_errors(target, "cannot read"), _database(target) as db:
        return {
            name: db.get_collection(name).count_documents({}) for name in db.list_collection_names()
        }


def _download(
    store: BackupStore, backup_id: str, entry: FileEntry, folder: Path, reporter: Reporter | None
) -> Path:
    local = folder / Path(entry.path).name
    store.copy_out(backup_id, entry, pafs.LocalFileSystem(), str(local), reporter)
    return local


def _insert_lines(collection: Any, path: Path) -> int:
    from bson import json_util

    batch: list[dict[str, Any]] = []
    inserted = 0
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            batch.append(json_util.loads(line, json_options=json_util.CANONICAL_JSON_OPTIONS))
            if len(batch) == INSERT_BATCH:
                collection.insert_many(batch, ordered=True)
                inserted += len(batch)
                batch = []
    if batch:
        collection.insert_many(batch, ordered=True)
        inserted += len(batch)
    return inserted


def _create_indexes(collection: Any, path: Path) -> None:
    from bson import json_util

    for spec in json_util.loads(path.read_bytes()):
        keys = [(field, direction) for field, direction in spec.pop("key")]
        collection.create_index(keys, **spec)


def import_database(
    target: MongoTarget,
    entry: MongoEntry,
    store: BackupStore,
    backup_id: str,
    files: dict[str, FileEntry],
    *,
    force: bool,
    reporter: Reporter | None = None,
) -> dict[str, int]:
    """Insert every backed-up collection into the target database; returns documents per collection.

    Indexes are created before the documents go in. ``force`` drops each collection the backup
    holds first (other collections are left alone); without it the collections must be empty.
    """
    restored: dict[str, int] = {}
    with (
        tempfile.TemporaryDirectory(prefix="churn-restore-") as scratch,
        _mongo_errors(target, "cannot restore into"),
        _database(target) as db,
    ):
        for name, expected in entry.collections.items():
            data = _download(
                store, backup_id, files[f"{entry.folder}/{name}.jsonl"], Path(scratch), reporter
            )
            indexes = _download(
                store,
                backup_id,
                files[f"{entry.folder}/{name}.indexes.json"],
                Path(scratch),
                reporter,
            )
            if force:
                db.drop_collection(name)
            collection = db.get_collection(name)
            _create_indexes(collection, indexes)
            restored[name] = _insert_lines(collection, data)
            if restored[name] != expected:
                raise BackupError(
                    f"{target.display}: restored {restored[name]} documents into {name}, the "
                    f"backup holds {expected}"
                )
    log.info("mongodb restored", database=target.display, collections=restored)
    return restored


def parse_json_lines(data: bytes) -> list[dict[str, Any]]:
    """Documents of an exported collection (tests and the manifest's registry summary)."""
    from bson import json_util

    return [json_util.loads(line) for line in data.splitlines() if line.strip()]
