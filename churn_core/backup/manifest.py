"""The manifest of a backup: every file with its size and sha256, and what each store held.

``manifest.json`` is written last, inside the backup's temporary folder, and the folder is then
renamed to its id: a folder named like a backup id that holds a manifest is a complete backup.
``manifest.json.sha256`` guards the manifest itself, so a changed manifest is caught like a
changed data file.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
MANIFEST_SHA_NAME = "manifest.json.sha256"
# Bumped when the layout changes in a way an older restore could not read.
FORMAT = 1
TOOL = "churn-backup"
TOOL_VERSION = "1.0"


class BackupError(RuntimeError):
    """A backup that cannot be written, found or read."""


class BackupCorrupt(BackupError):
    """A backup whose files do not match its manifest (the message names the first file)."""


class FileEntry(BaseModel):
    """One file of the backup, relative to its folder."""

    model_config = ConfigDict(frozen=True)

    path: str
    size: int
    sha256: str


class DeltaEntry(BaseModel):
    """One Delta table, copied as a self-contained table at ``version``."""

    model_config = ConfigDict(frozen=True)

    # The table's folder relative to the data set's lake (``silver/customers``).
    name: str
    version: int
    # Row count of ``version`` from the log's file statistics (None: a file has no stats).
    rows: int | None
    data_files: int
    log_files: int
    bytes: int


class PostgresEntry(BaseModel):
    """One PostgreSQL database dumped with ``pg_dump --format=custom``."""

    model_config = ConfigDict(frozen=True)

    # Every setting that points at this database (``serve.online_store.postgres_url`` ...);
    # restore writes to where these settings point then.
    settings: list[str]
    # Where it was dumped from, without credentials.
    url: str
    database: str
    dump: str
    tables: list[str]


class MongoEntry(BaseModel):
    """One MongoDB database exported as canonical extended JSON, a document per line."""

    model_config = ConfigDict(frozen=True)

    role: Literal["registry", "monitoring"]
    # The setting holding the URL (``registry.mongodb_url``).
    setting: str
    url: str
    database: str
    folder: str
    # Collection -> documents exported.
    collections: dict[str, int]


class ModelEntry(BaseModel):
    """A registered model's versions and aliases as backed up."""

    model_config = ConfigDict(frozen=True)

    versions: list[int]
    aliases: dict[str, int]
    artifact_files: int


class RegistryEntry(BaseModel):
    """The model registry: where its metadata was kept, and what it held."""

    model_config = ConfigDict(frozen=True)

    metadata: Literal["files", "mongodb"]
    artifacts: str
    models: dict[str, ModelEntry]


class Manifest(BaseModel):
    """Everything a restore needs to know, and the checksum of every file it will read."""

    format: int = FORMAT
    tool: str = TOOL
    tool_version: str = TOOL_VERSION
    id: str
    created_at: datetime
    seconds: float
    code_version: str
    env: str
    dataset: str
    delta: list[DeltaEntry] = Field(default_factory=list)
    postgres: list[PostgresEntry] = Field(default_factory=list)
    mongodb: list[MongoEntry] = Field(default_factory=list)
    registry: RegistryEntry | None = None
    # Config files copied (secrets redacted), relative to the config folder.
    configs: list[str] = Field(default_factory=list)
    redacted_values: int = 0
    files: list[FileEntry] = Field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Sum of every file's size."""
        return sum(entry.size for entry in self.files)

    def to_bytes(self) -> bytes:
        """The manifest as written: indented JSON, keys in model order."""
        return (self.model_dump_json(indent=2) + "\n").encode()


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def parse_manifest(data: bytes, recorded_sha256: str | None, where: str) -> Manifest:
    """A manifest read back, refused if it does not match its recorded checksum."""
    if recorded_sha256 is not None and sha256_hex(data) != recorded_sha256:
        raise BackupCorrupt(f"{where}: {MANIFEST_NAME}: checksum mismatch (the manifest changed)")
    try:
        loaded = json.loads(data)
    except ValueError as error:
        raise BackupCorrupt(f"{where}: {MANIFEST_NAME} is not JSON: {error}") from None
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        found = loaded.get("format") if isinstance(loaded, dict) else None
        raise BackupError(f"{where}: manifest format {found!r}, this tool reads format {FORMAT}")
    return Manifest.model_validate(loaded)


def compare_file(entry: FileEntry, size: int, sha256: str) -> str | None:
    """Why a read file does not match its manifest entry (None: it matches)."""
    if size != entry.size:
        return f"{entry.path}: size {size}, manifest says {entry.size}"
    if sha256 != entry.sha256:
        return f"{entry.path}: checksum mismatch (sha256 {sha256[:12]}..., manifest says {entry.sha256[:12]}...)"
    return None
