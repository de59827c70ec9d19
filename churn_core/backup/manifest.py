"""The manifest of a backup: every file with its size and sha256, and what each store held.

``manifest.json`` is written last, inside the backup's temporary folder, and the folder is then
renamed to its id: a folder named like a backup id that holds a manifest is a complete backup.
``manifest.json.sha256`` guards the manifest itself, so a changed manifest is caught like a
changed data file.

An encrypted backup (``encryption.backups``) lists the size and sha256 of each file's
*ciphertext*, so ``churn backup --verify`` checks it without the key; the manifest itself stays
readable (it names tables, versions and databases, never their contents) and is sealed by
``manifest.json.seal``: its sha256 encrypted under the backup's key, which only a key holder
can write, so a manifest edited to drop a file or to claim the backup is unencrypted is caught
by a restore that has the key.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
MANIFEST_SHA_NAME = "manifest.json.sha256"
MANIFEST_SEAL_NAME = "manifest.json.seal"
# Bumped when the layout changes in a way an older restore could not read: an encrypted backup
# is format 2, so a restore that predates encryption refuses it instead of writing ciphertext.
FORMAT = 1
ENCRYPTED_FORMAT = 2
FORMATS = (FORMAT, ENCRYPTED_FORMAT)
# churn_core.encryption's file format 1: AES-256-GCM chunks, data key wrapped per file.
ENCRYPTION_SCHEME = "aes-256-gcm-envelope-v1"
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
    # Of the bytes stored (the ciphertext, when encrypted).
    size: int
    sha256: str
    encrypted: bool = False


class BackupEncryption(BaseModel):
    """How an encrypted backup was encrypted (key ids only; never key material)."""

    model_config = ConfigDict(frozen=True)

    scheme: str = ENCRYPTION_SCHEME
    # The key that wrapped every file's data key when the backup was written.
    key_id: str


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
    encryption: BackupEncryption | None = None

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
    if not isinstance(loaded, dict) or loaded.get("format") not in FORMATS:
        found = loaded.get("format") if isinstance(loaded, dict) else None
        raise BackupError(
            f"{where}: manifest format {found!r}, this tool reads formats "
            f"{', '.join(map(str, FORMATS))}"
        )
    manifest = Manifest.model_validate(loaded)
    encrypted = manifest.encryption is not None
    if (manifest.format == ENCRYPTED_FORMAT) != encrypted or any(
        f.encrypted != encrypted for f in manifest.files
    ):
        raise BackupCorrupt(f"{where}: {MANIFEST_NAME} is inconsistent about encryption")
    if manifest.encryption is not None and manifest.encryption.scheme != ENCRYPTION_SCHEME:
        raise BackupError(
            f"{where}: encryption scheme {manifest.encryption.scheme!r}, this tool reads "
            f"{ENCRYPTION_SCHEME!r}"
        )
    return manifest


def sealed_name(backup_id: str, path: str) -> str:
    """The logical name a backup's file is encrypted under: its backup and path.

    Bound into each file's authentication, so a file moved to another path, or taken from
    another backup, fails to decrypt.
    """
    return f"churn-backup:{backup_id}/{path}"


def compare_file(entry: FileEntry, size: int, sha256: str) -> str | None:
    """Why a read file does not match its manifest entry (None: it matches)."""
    if size != entry.size:
        return f"{entry.path}: size {size}, manifest says {entry.size}"
    if sha256 != entry.sha256:
        return f"{entry.path}: checksum mismatch (sha256 {sha256[:12]}..., manifest says {entry.sha256[:12]}...)"
    return None
