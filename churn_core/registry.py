"""Model registry: immutable versions, aliases with an audited history, metric history, promotion.

A version is the model artifact, its feature contract, any report files (``report.json``, PNG
plots ...), and metadata: params, metrics, per-segment metrics, lineage, feature importance.
Serving and scoring resolve an alias (``champion``), never a path. Storage is split in two:

* **artifacts** on any pyarrow file system (:class:`ArtifactStore`): a local folder by default,
  ``s3://bucket/prefix`` and friends by settings. Each file is written under a temporary name
  and then moved into place; its sha256 is recorded and checked on every read. With
  ``encryption.registry`` on, files are stored encrypted (AES-256-GCM, ``churn_core.encryption``)
  and the sha256 is the plaintext's, checked after decryption.
* **metadata** in a :class:`MetadataStore`: JSON files (:class:`FileMetadataStore`, the
  embedded default, no server needed) or MongoDB through plain pymongo
  (:class:`MongoMetadataStore`: collections ``model_versions``, ``aliases``, ``alias_events``,
  ``metric_history``, ``version_counters``).

Registration order makes a version visible only once whole: its number is allocated
atomically, its artifacts are written, and only then is its metadata document inserted (the
commit point). A registration that fails midway leaves no visible version (at most a skipped
number). Versions are never overwritten: a number is handed out once and an artifact file that
already exists is refused.

Alias moves are compare-and-set on a per-alias sequence number, so two concurrent promotions
cannot both claim to replace the same champion, and every move is recorded as an
:class:`AliasEvent` (who, when, from, to, why, gate results) used for audit and ``rollback``.

Default layout under the registry root (the files store and local artifacts share it, which is
also the layout earlier versions of this module wrote)::

    <name>/versions/000001/model.ubj, contract.yaml, report.json ...   artifacts
    <name>/versions/000001/metadata.json          version metadata  (files store)
    <name>/aliases.json                           aliases + history (files store)
    <name>/metric_history.jsonl                   metric history    (files store)
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import functools
import getpass
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field

from churn_core.contract import FeatureContract, parse_contract
from churn_core.encryption import (
    EncryptionError,
    FileKey,
    KeyRing,
    decrypt_bytes,
    encrypt_bytes,
    is_encrypted,
    load_keyring,
    read_file_key,
)
from churn_core.model import ChurnModel
from churn_core.promotion import (
    GateResult,
    PromotionPolicy,
    evaluate_gates,
    load_policy,
)

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.collection import Collection
    from pymongo.database import Database

    from churn_core.settings import EncryptionSettings, RegistrySettings, TlsSettings

ARTIFACT_NAME = "model.ubj"
CONTRACT_NAME = "contract.yaml"
METADATA_NAME = "metadata.json"
ALIASES_NAME = "aliases.json"
METRIC_HISTORY_NAME = "metric_history.jsonl"
RESERVED_NAMES = frozenset({ARTIFACT_NAME, CONTRACT_NAME, METADATA_NAME})

# Model names become folder names and alias names must never look like version numbers.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# Report file names: relative POSIX paths; no part may start with "." (temporary names do).
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
# How often an alias move is retried when another writer moved the alias in between, with a
# random pause growing from 10 ms so colliding writers spread out.
_ALIAS_RETRIES = 8
_ALIAS_BACKOFF_S = 0.01

P = ParamSpec("P")
T = TypeVar("T")


class RegistryError(RuntimeError):
    """A registry lookup or write that cannot be satisfied."""


class RegistryUnavailable(RegistryError):
    """The metadata store cannot be reached."""


class AliasConflict(RegistryError):
    """Another writer moved the alias between our read and our write."""


class PromotionRefused(RegistryError):
    """A promotion that failed one or more gates (the message names each, with its numbers)."""

    def __init__(
        self, name: str, version: int, alias: str, results: builtins.list[GateResult]
    ) -> None:
        self.name = name
        self.version = version
        self.alias = alias
        self.results = results  # every gate's result, passed ones too
        self.failed = failed = [r for r in results if not r.passed]
        reasons = "; ".join(f"{gate.name}: {gate.message}" for gate in failed)
        super().__init__(
            f"refused to make {name} v{version} {alias!r}: {len(failed)} gate(s) failed: {reasons}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its fields (it may cross a Ray task boundary).
        return (type(self), (self.name, self.version, self.alias, self.results))


def _now() -> datetime:
    # MongoDB keeps milliseconds: truncate everywhere so a registered version reads back equal.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _default_actor() -> str:
    """Who is acting: ``CHURN_ACTOR`` (set by CI and jobs), else the OS user."""
    actor = os.environ.get("CHURN_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RegistryError(
            f"invalid model name {name!r}: letters, digits, '.', '_' and '-' only, "
            "starting with a letter or digit"
        )
    return name


def _check_alias(alias: str) -> str:
    if not _ALIAS.match(alias):
        raise RegistryError(
            f"invalid alias {alias!r}: a letter, then letters, digits, '_' or '-' "
            "(an alias must not look like a version number)"
        )
    return alias


def _check_file_name(filename: str) -> str:
    parts = filename.split("/")
    if filename in RESERVED_NAMES or not all(_FILE_PART.match(part) for part in parts):
        raise RegistryError(
            f"invalid report file name {filename!r}: a relative path of letters, digits, "
            f"'.', '_' and '-' not starting with '.', and not one of {sorted(RESERVED_NAMES)}"
        )
    return filename


def version_dir(name: str, version: int) -> str:
    """Where a version's artifacts live, relative to the artifact root."""
    return f"{name}/versions/{version:06d}"


# --- metadata models ------------------------------------------------------------------------


class ArtifactFile(BaseModel):
    """One stored file of a version, with the checksum it is verified against on read."""

    model_config = ConfigDict(frozen=True)

    name: str
    sha256: str
    size: int


class ModelVersion(BaseModel):
    """Metadata of one registered version (never changes once written)."""

    # NaN/inf survive the JSON store instead of turning into null (and failing to read back).
    model_config = ConfigDict(ser_json_inf_nan="constants")

    name: str
    version: int
    created_at: datetime
    artifact_sha256: str
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    feature_importance: dict[str, float] = Field(default_factory=dict)
    # {"<segment name>=<value>": {"n": rows, "positives": ..., "roc_auc": ... | None, ...}}
    segments: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    # Every stored file (model, contract, report files); empty for versions written before
    # report files existed, whose model is checked against artifact_sha256 alone.
    files: builtins.list[ArtifactFile] = Field(default_factory=list)
    # Folder of the files relative to the artifact root (None: the default layout).
    artifact_path: str | None = None
    registered_by: str | None = None

    def file(self, filename: str) -> ArtifactFile | None:
        """The stored file called ``filename``, if any."""
        return next((f for f in self.files if f.name == filename), None)

    @property
    def artifact_dir(self) -> str:
        """The folder of this version's files, relative to the artifact root."""
        return self.artifact_path or version_dir(self.name, self.version)


class AliasEvent(BaseModel):
    """One move of an alias: the audit trail, and what ``rollback`` walks back through."""

    name: str
    alias: str
    # 1, 2, 3 ... per (name, alias): the compare-and-set token of alias moves.
    seq: int
    action: Literal["set", "promote", "rollback"]
    from_version: int | None
    to_version: int
    at: datetime
    actor: str
    reason: str = ""
    # A promotion that went through despite failed gates (force=True).
    forced: bool = False
    gates: builtins.list[GateResult] = Field(default_factory=list)


class AliasState(BaseModel):
    """Where an alias points now, and the sequence number of the move that put it there."""

    version: int
    seq: int


class MetricRecord(BaseModel):
    """Metrics of one version measured at one time (training, a later accuracy check ...)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    name: str
    version: int
    at: datetime
    source: str
    metrics: dict[str, float]
    details: dict[str, Any] = Field(default_factory=dict)


class MetricDiff(BaseModel):
    """One metric of two versions; ``delta`` is ``b - a`` (None when either is missing)."""

    metric: str
    a: float | None
    b: float | None
    delta: float | None


class SegmentDiff(MetricDiff):
    """One metric of one segment of two versions."""

    segment: str


class VersionComparison(BaseModel):
    """How version ``b`` differs from version ``a``."""

    name: str
    a: int
    b: int
    metrics: builtins.list[MetricDiff]
    segments: builtins.list[SegmentDiff]
    # Parameters whose values differ: name -> (value in a, value in b).
    params: dict[str, tuple[Any, Any]]


class PromotionResult(BaseModel):
    """What a promotion did."""

    name: str
    alias: str
    version: int
    previous: int | None
    # False when the alias already pointed at the version (nothing was recorded).
    changed: bool
    forced: bool
    gates: builtins.list[GateResult]
    event: AliasEvent | None


# --- artifacts ------------------------------------------------------------------------------


def code_version(root: Path) -> str:
    """The git commit of the code (``unknown`` outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def display_uri(uri: str) -> str:
    """``uri`` without user info and query (either may hold credentials)."""
    parts = urlsplit(uri)
    if not parts.scheme:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """A version's files on a pyarrow file system, written atomically and read verified.

    With ``encrypt`` every file is written encrypted (``churn_core.encryption``: a data key per
    file wrapped by the key ring's active key, bound to ``<folder>/<file>``). Reading decrypts
    any encrypted file whatever ``encrypt`` says, so versions written before encryption was
    switched on (or off) stay readable. The recorded sha256 and size are the *plaintext's*:
    they identify the registered content, which must not change when keys rotate or encryption
    is switched on, and they are checked after decryption, end to end; the ciphertext is
    authenticated by AES-GCM itself.

    Pickled (a scoring worker's closure), the store leaves its key ring behind: workers get
    the :class:`~churn_core.encryption.FileKey` of the one file they read (:meth:`file_key`).
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        base: str,
        description: str,
        *,
        keyring: KeyRing | None = None,
        encrypt: bool = False,
    ) -> None:
        if encrypt and keyring is None:
            raise RegistryError(
                "encryption.registry is on but no encryption key is configured "
                "(set CHURN_ENCRYPTION__KEYS or encryption.keys_file)"
            )
        self.filesystem = filesystem
        self.base = base.rstrip("/")
        self.description = description
        self.keyring = keyring
        self.encrypt = encrypt
        # pyarrow does not fsync; on a local disk we do, so a committed version survives a
        # power cut (object stores are durable once a write returns).
        self._local = isinstance(filesystem, pafs.LocalFileSystem)

    def __getstate__(self) -> dict[str, Any]:
        # Key-encryption keys never travel: a KeyRing refuses to be pickled anyway.
        return {**self.__dict__, "keyring": None}

    @staticmethod
    def encryption_name(directory: str, filename: str) -> str:
        """The logical name an artifact is encrypted under (moved elsewhere, it fails)."""
        return f"churn-artifact:{directory}/{filename}"

    @classmethod
    def from_uri(
        cls, uri: str, *, keyring: KeyRing | None = None, encrypt: bool = False
    ) -> ArtifactStore:
        """A store at a pyarrow URI (``s3://bucket/prefix``, ``file:///abs``) or a local path."""
        if not urlsplit(uri).scheme:
            uri = str(Path(uri).resolve())
        display = display_uri(uri)
        try:
            filesystem, base = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as error:  # ArrowInvalid is a ValueError
            # pyarrow quotes the URI, which may carry credentials: quote ours instead.
            reason = str(error).replace(uri, display)
            parts = urlsplit(uri)
            secrets = [parts.query, parts.netloc.rpartition("@")[0]]
            if any(secret and secret in reason for secret in secrets):
                reason = type(error).__name__
            raise RegistryError(f"cannot open artifact storage {display}: {reason}") from None
        return cls(filesystem, base, display, keyring=keyring, encrypt=encrypt)

    def _path(self, relative: str) -> str:
        return f"{self.base}/{relative}" if self.base else relative

    def write_files(
        self, directory: str, files: Mapping[str, bytes]
    ) -> builtins.list[ArtifactFile]:
        """Write every file under ``directory`` (temporary name, then move); return checksums.

        On failure, the files this call already moved into place are removed again (and only
        those: a file found already there belongs to someone else).
        """
        written: builtins.list[ArtifactFile] = []
        try:
            for filename, data in files.items():
                written.append(self._write_one(directory, filename, data))
        except BaseException:
            self.remove(directory, [f.name for f in written])
            raise
        return written

    def _write_one(self, directory: str, filename: str, data: bytes) -> ArtifactFile:
        final = self._path(f"{directory}/{filename}")
        if self.filesystem.get_file_info(final).type != pafs.FileType.NotFound:
            # A version is never overwritten; this happens only if two registries with
            # separate metadata share one artifact location.
            raise RegistryError(
                f"artifact {self.description}/{directory}/{filename} already exists: "
                "is another registry writing to the same artifact location?"
            )
        self._put(final, self._stored(directory, filename, data))
        return ArtifactFile(name=filename, sha256=_sha256(data), size=len(data))

    def _stored(self, directory: str, filename: str, data: bytes) -> bytes:
        """The bytes that go to disk: ``data``, encrypted when the store encrypts."""
        if not self.encrypt:
            return data
        if self.keyring is None:  # a pickled copy: it reads with a FileKey, never writes
            raise RegistryError(f"cannot encrypt {directory}/{filename}: no key ring here")
        return encrypt_bytes(data, self.keyring, self.encryption_name(directory, filename))

    def restore_file(self, directory: str, filename: str, data: bytes) -> None:
        """Write one file back from a backup (replacing it if present), encrypted as configured.

        Only ``churn restore`` calls this: registration never overwrites.
        """
        self._put(self._path(f"{directory}/{filename}"), self._stored(directory, filename, data))

    def _put(self, final: str, data: bytes) -> None:
        """Write ``data`` to ``final`` under a temporary name, then move it into place."""
        parent, leaf = final.rsplit("/", 1)
        self.filesystem.create_dir(parent, recursive=True)
        temporary = f"{parent}/.{leaf}.{uuid.uuid4().hex}.tmp"
        try:
            with self.filesystem.open_output_stream(temporary) as out:
                out.write(data)
            if self._local:
                _fsync_path(temporary)
            self.filesystem.move(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                self.filesystem.delete_file(temporary)
            raise
        if self._local:
            _fsync_path(parent, directory=True)

    def file_key(self, directory: str, filename: str) -> FileKey | None:
        """The unwrapped data key of one encrypted file (None: the file is not encrypted).

        What a worker process needs to read that file and nothing else (see the class doc).
        """
        path = self._path(f"{directory}/{filename}")
        where = f"artifact {self.description}/{directory}/{filename}"
        try:
            with self.filesystem.open_input_stream(path) as stream:
                prefix: bytes = stream.read(512)
        except FileNotFoundError:
            raise RegistryError(f"{where} is missing") from None
        except OSError as error:
            raise RegistryError(f"cannot read {where}: {error}") from error
        if not is_encrypted(prefix):
            return None
        try:
            return read_file_key(prefix, self.keyring)
        except EncryptionError as error:
            raise RegistryError(f"{where}: cannot decrypt: {error}") from None

    def read(
        self,
        directory: str,
        filename: str,
        expected: ArtifactFile | str | None,
        *,
        file_key: FileKey | None = None,
    ) -> bytes:
        """A file's bytes, refused unless they match the recorded checksum (if one is given).

        An encrypted file is decrypted first (with ``file_key`` if given, else the key ring);
        a wrong key or a changed byte is refused like a checksum mismatch.
        """
        path = self._path(f"{directory}/{filename}")
        try:
            with self.filesystem.open_input_stream(path) as stream:
                data: bytes = stream.read()
        except FileNotFoundError:
            raise RegistryError(
                f"artifact {self.description}/{directory}/{filename} is missing"
            ) from None
        except OSError as error:  # object store unreachable, permissions ...
            raise RegistryError(
                f"cannot read artifact {self.description}/{directory}/{filename}: {error}"
            ) from error
        if is_encrypted(data):
            keys = file_key if file_key is not None else self.keyring
            try:
                data = decrypt_bytes(data, keys, self.encryption_name(directory, filename))
            except EncryptionError as error:
                raise RegistryError(
                    f"artifact {self.description}/{directory}/{filename}: cannot decrypt: {error}"
                ) from None
        sha256 = expected.sha256 if isinstance(expected, ArtifactFile) else expected
        if sha256 is not None and _sha256(data) != sha256:
            raise RegistryError(
                f"artifact {self.description}/{directory}/{filename}: checksum mismatch "
                "(the file changed after registration)"
            )
        return data

    def remove(self, directory: str, filenames: builtins.list[str]) -> None:
        """Best-effort removal of files of a registration that did not commit."""
        for filename in filenames:
            with contextlib.suppress(OSError):
                self.filesystem.delete_file(self._path(f"{directory}/{filename}"))


# --- metadata stores ------------------------------------------------------------------------


class MetadataStore(Protocol):
    """Where versions, aliases, alias history and metric history are kept."""

    description: str

    def allocate_version(self, name: str) -> int:
        """A version number nobody else has been or will be given (atomic)."""
        ...

    def release_version(self, name: str, version: int) -> None:
        """Forget an allocated number whose registration failed before its commit."""
        ...

    def insert_version(self, meta: ModelVersion) -> None:
        """Commit a version (fails if the number already has metadata)."""
        ...

    def get_version(self, name: str, version: int) -> ModelVersion | None:
        """A committed version, or None."""
        ...

    def version_numbers(self, name: str) -> builtins.list[int]:
        """Committed version numbers, ascending."""
        ...

    def list_versions(self, name: str) -> builtins.list[ModelVersion]:
        """Committed versions, oldest first."""
        ...

    def model_names(self) -> builtins.list[str]:
        """Every model name with at least one committed version."""
        ...

    def alias_states(self, name: str) -> dict[str, AliasState]:
        """Alias -> where it points and its sequence number."""
        ...

    def move_alias(self, event: AliasEvent, expected_seq: int) -> None:
        """Point the alias at ``event.to_version`` and record ``event``, atomically, if the
        alias's sequence number is still ``expected_seq`` (else raise :class:`AliasConflict`)."""
        ...

    def alias_events(self, name: str, alias: str | None = None) -> builtins.list[AliasEvent]:
        """Recorded alias moves, oldest first."""
        ...

    def append_metrics(self, record: MetricRecord) -> None:
        """Add one metric measurement."""
        ...

    def metric_records(self, name: str, version: int | None = None) -> builtins.list[MetricRecord]:
        """Stored metric measurements, oldest first."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _write_atomically(path: Path, text: str, *, overwrite: bool = True) -> None:
    """Replace (or, with ``overwrite=False``, create) ``path`` whole, durably."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            # link() fails if the target exists: metadata is never overwritten.
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _fsync_path(str(path.parent), directory=True)


class FileMetadataStore:
    """Metadata as JSON files on a local (or mounted) file system: the embedded default.

    Version numbers are claimed by creating the version's folder (``mkdir`` is atomic); the
    version becomes visible when its ``metadata.json`` appears. Aliases and their whole
    history live in one ``aliases.json`` replaced atomically under a per-model lock, so state
    and history never disagree.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"files:{root}"

    def _model_dir(self, name: str) -> Path:
        return self.root / name

    def _version_dir(self, name: str, version: int) -> Path:
        return self.root / version_dir(name, version)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        directory = self._model_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _claimed_numbers(self, name: str) -> builtins.list[int]:
        versions = self._model_dir(name) / "versions"
        if not versions.exists():
            return []
        return [int(p.name) for p in versions.iterdir() if p.name.isdigit()]

    def allocate_version(self, name: str) -> int:
        """Claim the next number by creating its folder."""
        versions = self._model_dir(name) / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        while True:
            number = max(self._claimed_numbers(name), default=0) + 1
            try:
                self._version_dir(name, number).mkdir()
                return number
            except FileExistsError:
                continue  # another writer claimed it first

    def release_version(self, name: str, version: int) -> None:
        """Remove the claim (and any leftovers) of a registration that did not commit."""
        directory = self._version_dir(name, version)
        if not (directory / METADATA_NAME).exists():
            shutil.rmtree(directory, ignore_errors=True)

    def insert_version(self, meta: ModelVersion) -> None:
        """Write ``metadata.json`` (the commit point); never over an existing one."""
        directory = self._version_dir(meta.name, meta.version)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            _write_atomically(
                directory / METADATA_NAME, meta.model_dump_json(indent=2), overwrite=False
            )
        except FileExistsError:
            raise RegistryError(f"model {meta.name!r} version {meta.version} exists") from None

    def get_version(self, name: str, version: int) -> ModelVersion | None:
        """Read one version's metadata."""
        path = self._version_dir(name, version) / METADATA_NAME
        if not path.exists():
            return None
        return ModelVersion.model_validate_json(path.read_text())

    def version_numbers(self, name: str) -> builtins.list[int]:
        """Numbers whose metadata is written (claimed-but-uncommitted ones are invisible)."""
        return sorted(
            n
            for n in self._claimed_numbers(name)
            if (self._version_dir(name, n) / METADATA_NAME).exists()
        )

    def list_versions(self, name: str) -> builtins.list[ModelVersion]:
        """Every committed version."""
        found = (self.get_version(name, n) for n in self.version_numbers(name))
        return [meta for meta in found if meta is not None]

    def model_names(self) -> builtins.list[str]:
        """Folders under the root holding at least one committed version."""
        if not self.root.exists():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and self.version_numbers(p.name)
        )

    def _read_aliases(self, name: str) -> tuple[dict[str, int], builtins.list[AliasEvent]]:
        path = self._model_dir(name) / ALIASES_NAME
        if not path.exists():
            return {}, []
        loaded = json.loads(path.read_text())
        if loaded.get("format") != 2:
            # Written by the earlier registry: a flat {alias: version} map, no history.
            return {str(k): int(v) for k, v in loaded.items()}, []
        events = [AliasEvent.model_validate(e) for e in loaded.get("events", [])]
        return {str(k): int(v) for k, v in loaded["aliases"].items()}, events

    def alias_states(self, name: str) -> dict[str, AliasState]:
        """Current aliases; the sequence number is the alias's latest event (0: none)."""
        aliases, events = self._read_aliases(name)
        seqs: dict[str, int] = {}
        for event in events:
            seqs[event.alias] = max(seqs.get(event.alias, 0), event.seq)
        return {a: AliasState(version=v, seq=seqs.get(a, 0)) for a, v in aliases.items()}

    def move_alias(self, event: AliasEvent, expected_seq: int) -> None:
        """Compare-and-set under the model's lock; state and history in one atomic write."""
        with self._locked(event.name):
            aliases, events = self._read_aliases(event.name)
            current = max((e.seq for e in events if e.alias == event.alias), default=0)
            if current != expected_seq:
                raise AliasConflict(
                    f"alias {event.alias!r} of {event.name!r} moved meanwhile "
                    f"(sequence {current}, expected {expected_seq})"
                )
            aliases[event.alias] = event.to_version
            document = {
                "format": 2,
                "aliases": dict(sorted(aliases.items())),
                "events": [e.model_dump(mode="json") for e in [*events, event]],
            }
            _write_atomically(
                self._model_dir(event.name) / ALIASES_NAME, json.dumps(document, indent=2)
            )

    def alias_events(self, name: str, alias: str | None = None) -> builtins.list[AliasEvent]:
        """Recorded moves (of one alias, or all), in the order they happened."""
        _, events = self._read_aliases(name)
        return [e for e in events if alias is None or e.alias == alias]

    def append_metrics(self, record: MetricRecord) -> None:
        """Append one JSON line (under the lock, fsynced)."""
        with self._locked(record.name):
            path = self._model_dir(record.name) / METRIC_HISTORY_NAME
            with open(path, "a") as handle:
                handle.write(record.model_dump_json() + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def metric_records(self, name: str, version: int | None = None) -> builtins.list[MetricRecord]:
        """Stored measurements; a torn last line (a crash mid-append) is skipped."""
        path = self._model_dir(name) / METRIC_HISTORY_NAME
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                record = MetricRecord.model_validate_json(line)
            except ValueError:
                continue
            if version is None or record.version == version:
                records.append(record)
        return records

    def close(self) -> None:
        """Nothing to release."""


def _short_mongo_error(error: Exception) -> str:
    # pymongo's selection errors append the whole topology description: keep the cause.
    text = str(error).split(", Timeout:")[0].split(" (configured timeouts")[0]
    return " ".join(text.split())[:300]


def _mongo_errors(method: Callable[P, T]) -> Callable[P, T]:
    """Turn pymongo errors into one-line registry errors naming the store (never the password)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        from pymongo.errors import ConnectionFailure, PyMongoError

        try:
            return method(*args, **kwargs)
        except ConnectionFailure as error:
            where = getattr(args[0], "description", "MongoDB")
            raise RegistryUnavailable(
                f"registry metadata store {where} unreachable: {_short_mongo_error(error)}"
            ) from error
        except PyMongoError as error:
            where = getattr(args[0], "description", "MongoDB")
            raise RegistryError(
                f"registry metadata store {where}: {_short_mongo_error(error)}"
            ) from error

    return wrapper


def _document(model: BaseModel, *times: str) -> dict[str, Any]:
    """A JSON-safe document (what the files store can hold too) with native datetimes."""
    document = model.model_dump(mode="json")
    for field in times:
        document[field] = getattr(model, field)
    return document


def _version_to_document(meta: ModelVersion) -> dict[str, Any]:
    document = _document(meta, "created_at")
    # Segment names are data ("tenure_band=[0.5, 1)") and may hold dots: stored as a list,
    # which also makes them queryable (segments.segment).
    document["segments"] = [
        {"segment": segment, "metrics": metrics} for segment, metrics in meta.segments.items()
    ]
    return document


def _version_from_document(document: Mapping[str, Any]) -> ModelVersion:
    data = {k: v for k, v in document.items() if k != "_id"}
    data["segments"] = {s["segment"]: s["metrics"] for s in data.get("segments") or []}
    return ModelVersion.model_validate(data)


class MongoMetadataStore:
    """Metadata in MongoDB through plain pymongo (works on any MongoDB-wire server).

    No transactions (a standalone server has none): versions are single inserts guarded by a
    unique (name, version) index; numbers come from an atomic counter; an alias move is a
    conditional update on the alias's sequence number whose document also carries the event,
    which is then inserted into ``alias_events`` (unique (name, alias, seq)). If a crash falls
    between the two writes, the next move of that alias re-inserts the missing event, and
    readers merge it in meanwhile.
    """

    VERSIONS = "model_versions"
    ALIASES = "aliases"
    EVENTS = "alias_events"
    METRICS = "metric_history"
    COUNTERS = "version_counters"

    def __init__(
        self,
        database: Database[dict[str, Any]],
        client: MongoClient[dict[str, Any]] | None = None,
        description: str | None = None,
    ) -> None:
        self.database = database
        self._client = client
        self.description = description or f"mongodb:{database.name}"
        self._indexed = False
        self._counters: set[str] = set()

    @classmethod
    def connect(
        cls,
        url: str,
        database: str = "churn_registry",
        timeout_s: float = 5.0,
        tls: TlsSettings | None = None,
    ) -> MongoMetadataStore:
        """A store on ``database`` at ``url`` (connects lazily, on first use).

        ``tls`` (``registry.mongodb_tls``): its files are checked here, the handshake happens
        on first use.
        """
        from pymongo import MongoClient, WriteConcern

        from churn_core.tls import mongo_options

        timeout_ms = int(timeout_s * 1000)
        client: MongoClient[dict[str, Any]] = MongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname="churn-registry",
            **(mongo_options(tls, "registry.mongodb_tls") if tls is not None else {}),
        )
        # Registry writes are rare and must survive a crash: acknowledged by a majority and
        # journaled (a standalone server counts as its own majority).
        db = client.get_database(database, write_concern=WriteConcern(w="majority", j=True))
        return cls(db, client, f"{display_uri(url)} database {database!r}")

    def _collection(self, name: str) -> Collection[dict[str, Any]]:
        return self.database.get_collection(name)

    def _ensure_indexes(self) -> None:
        # On first write only: readers (a Serve replica) may hold a read-only user.
        if self._indexed:
            return
        self._collection(self.VERSIONS).create_index(
            [("name", 1), ("version", 1)], unique=True, name="name_version"
        )
        self._collection(self.ALIASES).create_index(
            [("name", 1), ("alias", 1)], unique=True, name="name_alias"
        )
        self._collection(self.EVENTS).create_index(
            [("name", 1), ("alias", 1), ("seq", 1)], unique=True, name="name_alias_seq"
        )
        self._collection(self.METRICS).create_index(
            [("name", 1), ("version", 1), ("at", 1)], name="name_version_at"
        )
        self._indexed = True

    def _top_version(self, name: str) -> int:
        top = self._collection(self.VERSIONS).find_one(
            {"name": name}, {"version": 1}, sort=[("version", -1)]
        )
        return int(top["version"]) if top else 0

    def _ensure_counter(self, name: str) -> None:
        from pymongo.errors import DuplicateKeyError

        if name in self._counters:
            return
        # Create the counter before incrementing it: SecantusDB returned None (the increment
        # applied, its value lost) to upserts racing to create the document.
        with contextlib.suppress(DuplicateKeyError):  # concurrent creation on MongoDB < 4.2
            self._collection(self.COUNTERS).update_one(
                {"_id": name}, {"$setOnInsert": {"seq": 0}}, upsert=True
            )
        self._counters.add(name)

    @_mongo_errors
    def allocate_version(self, name: str) -> int:
        """``$inc`` on the model's counter document, returning the incremented value."""
        from pymongo import ReturnDocument
        from pymongo.errors import DuplicateKeyError

        self._ensure_indexes()
        self._ensure_counter(name)
        counters = self._collection(self.COUNTERS)
        for _ in range(10):
            try:
                counter = counters.find_one_and_update(
                    {"_id": name},
                    {"$inc": {"seq": 1}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                continue  # two upserts raced to create the counter: the loser retries
            if counter is None:
                continue  # an increment whose value we did not learn: skip that number
            number = int(counter["seq"])
            top = self._top_version(name)
            if number > top:
                return number
            # The counter is behind the versions (restored from a backup, migrated): jump it
            # past them instead of handing out a used number.
            counters.update_one({"_id": name}, {"$max": {"seq": top}})
        raise RegistryError(f"could not allocate a version number for {name!r}")

    def release_version(self, name: str, version: int) -> None:
        """Numbers are not reused: a failed registration leaves a gap."""

    @_mongo_errors
    def insert_version(self, meta: ModelVersion) -> None:
        """Insert the version document (the commit point)."""
        from pymongo.errors import DuplicateKeyError

        self._ensure_indexes()
        try:
            self._collection(self.VERSIONS).insert_one(_version_to_document(meta))
        except DuplicateKeyError:
            raise RegistryError(f"model {meta.name!r} version {meta.version} exists") from None

    @_mongo_errors
    def get_version(self, name: str, version: int) -> ModelVersion | None:
        """One version document."""
        found = self._collection(self.VERSIONS).find_one({"name": name, "version": version})
        return _version_from_document(found) if found else None

    @_mongo_errors
    def version_numbers(self, name: str) -> builtins.list[int]:
        """Committed numbers, ascending."""
        cursor = self._collection(self.VERSIONS).find(
            {"name": name}, {"_id": 0, "version": 1}, sort=[("version", 1)]
        )
        return [int(d["version"]) for d in cursor]

    @_mongo_errors
    def list_versions(self, name: str) -> builtins.list[ModelVersion]:
        """Every version document, oldest first."""
        cursor = self._collection(self.VERSIONS).find({"name": name}, sort=[("version", 1)])
        return [_version_from_document(d) for d in cursor]

    @_mongo_errors
    def model_names(self) -> builtins.list[str]:
        """Distinct model names."""
        return sorted(str(n) for n in self._collection(self.VERSIONS).distinct("name"))

    @_mongo_errors
    def alias_states(self, name: str) -> dict[str, AliasState]:
        """Alias documents of the model."""
        cursor = self._collection(self.ALIASES).find({"name": name})
        return {
            str(d["alias"]): AliasState(version=int(d["version"]), seq=int(d["seq"]))
            for d in cursor
        }

    def _insert_event(self, event: Mapping[str, Any]) -> None:
        from pymongo.errors import DuplicateKeyError

        # insert_one adds _id to the dict it is given: pass a copy.
        with contextlib.suppress(DuplicateKeyError):  # already recorded: idempotent
            self._collection(self.EVENTS).insert_one(dict(event))

    @_mongo_errors
    def move_alias(self, event: AliasEvent, expected_seq: int) -> None:
        """Conditional update on (name, alias, seq), then the event insert."""
        from pymongo.errors import DuplicateKeyError

        self._ensure_indexes()
        aliases = self._collection(self.ALIASES)
        key = {"name": event.name, "alias": event.alias}
        current = aliases.find_one(key)
        if current and current.get("last_event"):
            self._insert_event(current["last_event"])  # heal a crash between the two writes
        recorded = _document(event, "at")
        state = {
            **key,
            "version": event.to_version,
            "seq": event.seq,
            "updated_at": event.at,
            "last_event": recorded,
        }
        conflict = AliasConflict(
            f"alias {event.alias!r} of {event.name!r} moved meanwhile (expected sequence "
            f"{expected_seq})"
        )
        if expected_seq == 0:
            try:
                aliases.insert_one(state)
            except DuplicateKeyError:
                raise conflict from None
        else:
            result = aliases.update_one({**key, "seq": expected_seq}, {"$set": state})
            if result.matched_count != 1:
                raise conflict
        self._insert_event(recorded)

    @_mongo_errors
    def alias_events(self, name: str, alias: str | None = None) -> builtins.list[AliasEvent]:
        """Recorded events plus any not yet copied out of the alias documents."""
        query: dict[str, Any] = {"name": name}
        if alias is not None:
            query["alias"] = alias
        found: dict[tuple[str, int], AliasEvent] = {}
        for document in self._collection(self.EVENTS).find(query, {"_id": 0}):
            event = AliasEvent.model_validate(document)
            found[event.alias, event.seq] = event
        for document in self._collection(self.ALIASES).find(query):
            if document.get("last_event"):
                event = AliasEvent.model_validate(document["last_event"])
                found.setdefault((event.alias, event.seq), event)
        return sorted(found.values(), key=lambda e: (e.at, e.alias, e.seq))

    @_mongo_errors
    def append_metrics(self, record: MetricRecord) -> None:
        """Insert one measurement."""
        self._ensure_indexes()
        self._collection(self.METRICS).insert_one(_document(record, "at"))

    @_mongo_errors
    def metric_records(self, name: str, version: int | None = None) -> builtins.list[MetricRecord]:
        """Measurements ordered by version, then time."""
        query: dict[str, Any] = {"name": name}
        if version is not None:
            query["version"] = version
        cursor = self._collection(self.METRICS).find(
            query, {"_id": 0}, sort=[("version", 1), ("at", 1)]
        )
        return [MetricRecord.model_validate(d) for d in cursor]

    def close(self) -> None:
        """Close the client (if this store opened it)."""
        if self._client is not None:
            self._client.close()


# --- the registry ---------------------------------------------------------------------------


def _rollback_target(events: builtins.list[AliasEvent], current: int) -> int | None:
    """The version the alias held before its latest move that was not itself undone.

    Replays the history as a stack: a move pushes, a rollback pops, so rolling back twice after
    promotions 1 -> 2 -> 3 goes 3 -> 2 -> 1 rather than bouncing between 3 and 2.
    """
    stack: builtins.list[int] = []
    for event in sorted(events, key=lambda e: e.seq):
        if not stack and event.from_version is not None:
            stack.append(event.from_version)  # set before history was recorded
        if event.action == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != event.to_version:
            stack.append(event.to_version)
    if not stack or stack[-1] != current:
        stack.append(current)  # set before history was recorded
    return stack[-2] if len(stack) >= 2 else None


def _delta(a: float | None, b: float | None) -> float | None:
    return b - a if a is not None and b is not None else None


class Registry:
    """Versions, aliases and promotion over an artifact store and a metadata store."""

    def __init__(
        self,
        metadata: MetadataStore,
        artifacts: ArtifactStore,
        *,
        policy: PromotionPolicy | None = None,
        policy_path: Path | None = None,
    ) -> None:
        self.metadata = metadata
        self.artifacts = artifacts
        self.policy = policy
        # Loaded on the first promotion only: serving never needs the gates file.
        self.policy_path = policy_path

    @property
    def description(self) -> str:
        """Where metadata and artifacts live (no credentials)."""
        return f"metadata {self.metadata.description}, artifacts {self.artifacts.description}"

    def close(self) -> None:
        """Release the metadata store's connections."""
        self.metadata.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- versions ---

    def register(
        self,
        name: str,
        artifact: bytes,
        contract: FeatureContract,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        lineage: dict[str, Any],
        feature_importance: dict[str, float],
        segments: Mapping[str, Mapping[str, float | None]] | None = None,
        files: Mapping[str, bytes | Path] | None = None,
        registered_by: str | None = None,
    ) -> ModelVersion:
        """Write a new immutable version (artifacts first, then metadata) and return it.

        ``segments``: per-segment metrics ``{"<segment>=<value>": {"n": rows, "roc_auc": ...}}``
        (what the segment gate compares). ``files``: report files stored with the version
        (``{"report.json": b"...", "plots/roc.png": Path(...)}``), checksummed like the model.
        """
        _check_name(name)
        payloads: dict[str, bytes] = {
            ARTIFACT_NAME: artifact,
            CONTRACT_NAME: contract.to_yaml().encode(),
        }
        for filename, content in (files or {}).items():
            _check_file_name(filename)
            # Read local files now: a missing one fails before any number is taken.
            payloads[filename] = content.read_bytes() if isinstance(content, Path) else content
        # Validate everything before taking a number (placeholders are replaced below).
        draft = ModelVersion(
            name=name,
            version=0,
            created_at=_now(),
            artifact_sha256=_sha256(artifact),
            params=params,
            metrics=metrics,
            lineage=lineage,
            feature_importance=feature_importance,
            segments={k: dict(v) for k, v in (segments or {}).items()},
            registered_by=registered_by or _default_actor(),
        )
        number = self.metadata.allocate_version(name)
        directory = version_dir(name, number)
        try:
            written = self.artifacts.write_files(directory, payloads)
        except BaseException:
            self.metadata.release_version(name, number)
            raise
        meta = draft.model_copy(
            update={
                "version": number,
                "created_at": _now(),
                "files": written,
                "artifact_path": directory,
            }
        )
        try:
            self.metadata.insert_version(meta)
        except Exception as error:
            # An insert can fail after the server applied it (a connection lost before the
            # reply): never delete the artifacts of a version that may be visible.
            try:
                committed = self.metadata.get_version(name, number) is not None
            except RegistryError:
                raise error from None  # cannot tell: keep the artifacts (an orphan is harmless)
            if committed:
                return meta
            self.artifacts.remove(directory, builtins.list(payloads))
            self.metadata.release_version(name, number)
            raise
        return meta

    def version_numbers(self, name: str) -> builtins.list[int]:
        """All registered version numbers of ``name``, ascending."""
        return self.metadata.version_numbers(name)

    def model_names(self) -> builtins.list[str]:
        """Every registered model name."""
        return self.metadata.model_names()

    def get(self, name: str, version: int) -> ModelVersion:
        """Metadata of one version."""
        meta = self.metadata.get_version(name, version)
        if meta is None:
            raise RegistryError(f"model {name!r} has no version {version}")
        return meta

    def resolve(self, name: str, ref: str | int) -> ModelVersion:
        """Metadata for an alias or a version number (``3``, ``"3"`` or ``"v3"``)."""
        if isinstance(ref, int):
            return self.get(name, ref)
        number = ref[1:] if ref[:1] in ("v", "V") else ref
        if number.isdigit():
            return self.get(name, int(number))
        aliases = self.aliases(name)
        if ref not in aliases:
            raise RegistryError(
                f"model {name!r} has no alias {ref!r} (aliases: {sorted(aliases)}); "
                "train and register a model first (`churn train`)"
            )
        return self.get(name, aliases[ref])

    def _read(self, meta: ModelVersion, filename: str) -> bytes:
        entry = meta.file(filename)
        if entry is not None:
            return self.artifacts.read(meta.artifact_dir, filename, entry)
        if not meta.files and filename in (ARTIFACT_NAME, CONTRACT_NAME):
            # Written before every file had a checksum: only the model's is known.
            expected = meta.artifact_sha256 if filename == ARTIFACT_NAME else None
            return self.artifacts.read(meta.artifact_dir, filename, expected)
        raise RegistryError(
            f"model {meta.name!r} version {meta.version} has no file {filename!r} "
            f"(files: {[f.name for f in meta.files]})"
        )

    def read_file(self, name: str, ref: str | int, filename: str) -> bytes:
        """A stored file of a version (model, contract or report file), checksum-verified."""
        return self._read(self.resolve(name, ref), filename)

    def load_contract(self, name: str, ref: str | int = "champion") -> FeatureContract:
        """The feature contract stored with a version."""
        return parse_contract(self.read_file(name, ref, CONTRACT_NAME).decode())

    def load_model(self, name: str, ref: str | int = "champion") -> ChurnModel:
        """Load the model an alias or version points to, checking every file's checksum."""
        meta = self.resolve(name, ref)
        artifact = self._read(meta, ARTIFACT_NAME)
        contract = parse_contract(self._read(meta, CONTRACT_NAME).decode())
        return ChurnModel.from_bytes(artifact, contract, version=meta.version)

    # --- aliases ---

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version number."""
        return {a: s.version for a, s in sorted(self.metadata.alias_states(name).items())}

    def alias_history(self, name: str, alias: str | None = None) -> builtins.list[AliasEvent]:
        """Every recorded move of ``alias`` (or of every alias), oldest first."""
        return self.metadata.alias_events(name, alias)

    def _move(
        self,
        name: str,
        alias: str,
        make_event: Callable[[AliasState | None], AliasEvent | None],
    ) -> AliasEvent | None:
        """Read the alias, build the event, compare-and-set; retry if it moved meanwhile."""
        for attempt in range(_ALIAS_RETRIES):
            if attempt:
                time.sleep(random.uniform(0, _ALIAS_BACKOFF_S * 2**attempt))
            current = self.metadata.alias_states(name).get(alias)
            event = make_event(current)
            if event is None:
                return None
            try:
                self.metadata.move_alias(event, current.seq if current else 0)
                return event
            except AliasConflict:
                continue
        raise RegistryError(
            f"alias {alias!r} of {name!r} kept moving under concurrent updates; try again"
        )

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        reason: str = "",
        actor: str | None = None,
    ) -> AliasEvent | None:
        """Point ``alias`` at an existing ``version`` without gates (recorded; None if no-op)."""
        _check_alias(alias)
        self.get(name, version)  # refuse aliases to versions that do not exist

        def make_event(current: AliasState | None) -> AliasEvent | None:
            if current is not None and current.version == version:
                return None
            return AliasEvent(
                name=name,
                alias=alias,
                seq=(current.seq if current else 0) + 1,
                action="set",
                from_version=current.version if current else None,
                to_version=version,
                at=_now(),
                actor=actor or _default_actor(),
                reason=reason,
            )

        return self._move(name, alias, make_event)

    # --- promotion ---

    def _policy(self, policy: PromotionPolicy | None) -> PromotionPolicy | None:
        if policy is not None:
            return policy
        if self.policy is None and self.policy_path is not None:
            self.policy = load_policy(self.policy_path)
        return self.policy

    def check_promotion(
        self,
        name: str,
        ref: str | int,
        alias: str = "champion",
        *,
        policy: PromotionPolicy | None = None,
    ) -> builtins.list[GateResult]:
        """The gate results a promotion of ``ref`` to ``alias`` would get now (changes nothing)."""
        gates = self._policy(policy)
        if gates is None:
            raise RegistryError("no promotion gates configured (registry.gates_path)")
        candidate = self.resolve(name, ref)
        current = self.metadata.alias_states(name).get(alias)
        champion = self.get(name, current.version) if current else None
        return evaluate_gates(candidate, champion, gates)

    def promote(
        self,
        name: str,
        ref: str | int,
        alias: str = "champion",
        *,
        reason: str = "",
        force: bool = False,
        actor: str | None = None,
        policy: PromotionPolicy | None = None,
    ) -> PromotionResult:
        """Move ``alias`` to a version that passes every gate against the alias's current version.

        Raises :class:`PromotionRefused` naming each failed gate and its numbers, unless
        ``force`` (which needs a ``reason``; the failed gates are recorded with the event). The
        previous version stays reachable through :meth:`alias_history` and :meth:`rollback`;
        other aliases (``challenger``) are left alone.
        """
        _check_alias(alias)
        if force and not reason.strip():
            raise RegistryError("a forced promotion needs a reason")
        gates = self._policy(policy)
        if gates is None and not force:
            raise RegistryError("no promotion gates configured (registry.gates_path)")
        candidate = self.resolve(name, ref)
        outcome: builtins.list[PromotionResult] = []

        def make_event(current: AliasState | None) -> AliasEvent | None:
            outcome.clear()
            previous = current.version if current else None
            if previous == candidate.version:
                outcome.append(
                    PromotionResult(
                        name=name,
                        alias=alias,
                        version=candidate.version,
                        previous=previous,
                        changed=False,
                        forced=False,
                        gates=[],
                        event=None,
                    )
                )
                return None
            # Gates are evaluated against the champion read in this attempt: if the alias
            # moves before our write, the write fails and the gates run again.
            champion = self.get(name, previous) if previous is not None else None
            results = evaluate_gates(candidate, champion, gates) if gates else []
            failed = [r for r in results if not r.passed]
            if failed and not force:
                raise PromotionRefused(name, candidate.version, alias, results)
            event = AliasEvent(
                name=name,
                alias=alias,
                seq=(current.seq if current else 0) + 1,
                action="promote",
                from_version=previous,
                to_version=candidate.version,
                at=_now(),
                actor=actor or _default_actor(),
                reason=reason,
                forced=bool(failed),
                gates=results,
            )
            outcome.append(
                PromotionResult(
                    name=name,
                    alias=alias,
                    version=candidate.version,
                    previous=previous,
                    changed=True,
                    forced=bool(failed),
                    gates=results,
                    event=event,
                )
            )
            return event

        self._move(name, alias, make_event)
        return outcome[-1]

    def promote_or_challenge(
        self,
        name: str,
        version: int,
        *,
        reason: str = "",
        actor: str | None = None,
        policy: PromotionPolicy | None = None,
    ) -> builtins.list[str]:
        """After training: ``champion`` if every gate passes, else ``challenger`` if the gates
        that judge the model alone (``min_metric``, ``max_metric``, ``calibration``) pass, else
        no alias. Returns the aliases now pointing at ``version``."""
        try:
            self.promote(name, version, "champion", reason=reason, actor=actor, policy=policy)
            return ["champion"]
        except PromotionRefused:
            gates = self._policy(policy)
            assert gates is not None  # promote() refused, so gates exist
            alone = evaluate_gates(self.get(name, version), None, gates.absolute_gates)
            if not all(r.passed for r in alone):
                return []
            self.set_alias(name, "challenger", version, reason=reason, actor=actor)
            return ["challenger"]

    def rollback(
        self,
        name: str,
        alias: str = "champion",
        *,
        reason: str = "",
        actor: str | None = None,
    ) -> AliasEvent:
        """Move ``alias`` back to the version it held before its latest (not undone) move.

        No gates: a rollback returns to a version that was already trusted with the alias.
        """
        _check_alias(alias)

        def make_event(current: AliasState | None) -> AliasEvent:
            if current is None:
                raise RegistryError(f"model {name!r} has no alias {alias!r} to roll back")
            events = self.metadata.alias_events(name, alias)
            target = _rollback_target(events, current.version)
            if target is None:
                raise RegistryError(
                    f"alias {alias!r} of {name!r} (v{current.version}) has no earlier version "
                    "in its history to roll back to"
                )
            self.get(name, target)
            return AliasEvent(
                name=name,
                alias=alias,
                seq=current.seq + 1,
                action="rollback",
                from_version=current.version,
                to_version=target,
                at=_now(),
                actor=actor or _default_actor(),
                reason=reason,
            )

        event = self._move(name, alias, make_event)
        assert event is not None  # make_event never returns None
        return event

    # --- metrics ---

    def compare(self, name: str, a: str | int, b: str | int) -> VersionComparison:
        """Metrics, segment metrics and changed params of ``b`` relative to ``a``."""
        first, second = self.resolve(name, a), self.resolve(name, b)
        metrics = []
        for key in sorted({*first.metrics, *second.metrics}):
            x, y = first.metrics.get(key), second.metrics.get(key)
            metrics.append(MetricDiff(metric=key, a=x, b=y, delta=_delta(x, y)))
        segments: builtins.list[SegmentDiff] = []
        for segment in sorted({*first.segments, *second.segments}):
            left = first.segments.get(segment, {})
            right = second.segments.get(segment, {})
            for key in sorted({*left, *right}):
                x, y = left.get(key), right.get(key)
                segments.append(
                    SegmentDiff(segment=segment, metric=key, a=x, b=y, delta=_delta(x, y))
                )
        params = {
            k: (first.params.get(k), second.params.get(k))
            for k in sorted({*first.params, *second.params})
            if first.params.get(k) != second.params.get(k)
        }
        return VersionComparison(
            name=name,
            a=first.version,
            b=second.version,
            metrics=metrics,
            segments=segments,
            params=params,
        )

    def record_metrics(
        self,
        name: str,
        version: int,
        metrics: Mapping[str, float],
        *,
        source: str,
        at: datetime | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> MetricRecord:
        """Append a later measurement of a version (e.g. accuracy on labels that arrived since)."""
        self.get(name, version)
        record = MetricRecord(
            name=name,
            version=version,
            at=at or _now(),
            source=source,
            metrics=dict(metrics),
            details=dict(details or {}),
        )
        self.metadata.append_metrics(record)
        return record

    def metric_history(self, name: str, version: int | None = None) -> builtins.list[MetricRecord]:
        """Each version's registration metrics followed by its later measurements, by time."""
        versions = [self.get(name, version)] if version is not None else self.list(name)
        records = [
            MetricRecord(
                name=name,
                version=meta.version,
                at=meta.created_at,
                source="registration",
                metrics=meta.metrics,
            )
            for meta in versions
        ]
        records.extend(self.metadata.metric_records(name, version))
        return sorted(records, key=lambda r: (r.version, r.at))

    # Last: inside the class body, "list" means this method from here on.
    def list(self, name: str) -> builtins.list[ModelVersion]:
        """Metadata of every version, oldest first."""
        return self.metadata.list_versions(name)


class LocalRegistry(Registry):
    """The embedded default: JSON metadata and artifacts in one local folder.

    Promotion gates default to the packaged ``configs/promotion.yaml`` (``open_registry`` takes
    them from ``registry.gates_path`` instead).
    """

    def __init__(
        self,
        root: Path,
        *,
        policy: PromotionPolicy | None = None,
        policy_path: Path | None = None,
    ) -> None:
        from churn_core.settings import PACKAGE_CONFIG_DIR

        super().__init__(
            FileMetadataStore(root),
            ArtifactStore.from_uri(str(root)),
            policy=policy,
            policy_path=policy_path or PACKAGE_CONFIG_DIR / "promotion.yaml",
        )
        self.root = root


def open_registry(
    settings: RegistrySettings,
    resolve_path: Callable[[Path], Path] = Path.resolve,
    *,
    policy: PromotionPolicy | None = None,
    encryption: EncryptionSettings | None = None,
) -> Registry:
    """The registry the settings describe (``resolve_path``: usually ``Settings.resolve``).

    Nothing connects here: a MongoDB store connects on first use, so building a registry in
    an entry point costs nothing and an unreachable server fails the first call with one line.
    ``encryption`` (``Settings.encryption``): the keys that decrypt artifacts, and whether new
    ones are encrypted; every entry point passes it (without it, encrypted artifacts are
    refused with a line saying no key is configured).
    """
    root = resolve_path(settings.root)
    uri = settings.artifact_uri
    if uri and not urlsplit(uri).scheme:
        uri = str(resolve_path(Path(uri)))
    keyring: KeyRing | None = None
    if encryption is not None:
        try:
            keyring = load_keyring(encryption, resolve_path)
        except EncryptionError as error:
            raise RegistryError(str(error)) from None
    artifacts = ArtifactStore.from_uri(
        uri or str(root),
        keyring=keyring,
        encrypt=encryption is not None and encryption.registry,
    )
    metadata: MetadataStore
    if settings.metadata == "mongodb":
        if settings.mongodb_url is None:
            raise RegistryError("registry.metadata is 'mongodb' but registry.mongodb_url is unset")
        metadata = MongoMetadataStore.connect(
            settings.mongodb_url.get_secret_value(),
            settings.mongodb_database,
            settings.mongodb_timeout_s,
            settings.mongodb_tls,
        )
    else:
        metadata = FileMetadataStore(root)
    return Registry(
        metadata, artifacts, policy=policy, policy_path=resolve_path(settings.gates_path)
    )
