"""Where backups live: a folder per backup on any pyarrow file system, written then renamed.

A backup is written into ``.incomplete-<id>/`` and renamed to ``<id>/`` once its manifest is
in: an interrupted backup never carries a complete backup's name. File systems that cannot
rename a folder (object stores) get the files copied to ``<id>/`` with the manifest last, and
only a folder holding ``manifest.json`` counts as a backup, so the rule still holds.

Every byte written or read passes through sha256: writing records the checksum in the manifest,
reading compares it, so a file that changed is found by name.

With encryption (``encryption.backups``) each file is streamed through an
:class:`~churn_core.encryption.Encryptor` on its way in, bound to its backup id and path, and
the checksum is the ciphertext's; reading with the key ring authenticates and decrypts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from churn_core.backup.manifest import (
    MANIFEST_NAME,
    MANIFEST_SEAL_NAME,
    MANIFEST_SHA_NAME,
    BackupCorrupt,
    BackupEncryption,
    BackupError,
    FileEntry,
    Manifest,
    compare_file,
    parse_manifest,
    sealed_name,
    sha256_hex,
)
from churn_core.backup.progress import Reporter, SilentReporter, run_parallel
from churn_core.encryption import (
    Decryptor,
    EncryptionError,
    Encryptor,
    KeyRing,
    decrypt_bytes,
    encrypt_bytes,
)
from churn_core.registry import display_uri

CHUNK = 8 * 1024 * 1024
INCOMPLETE_PREFIX = ".incomplete-"
# 20261127T093015Z-3fa9: sortable by time, unique across two backups in one second.
_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4}$")


class _Readable(Protocol):
    def read(self, nbytes: int = ..., /) -> bytes: ...


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def new_backup_id(now: datetime | None = None) -> str:
    """A new backup id: UTC time to the second and four random hex digits."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:4]}"


def is_backup_id(name: str) -> bool:
    """Whether ``name`` looks like a backup id."""
    return bool(_ID.match(name))


def copy_stream(source: _Readable, target: _Writable, advance: Callable[[int], None]) -> FileEntry:
    """Copy ``source`` to ``target`` in chunks; the entry's path is left empty for the caller."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
        advance(len(chunk))
    return FileEntry(path="", size=size, sha256=digest.hexdigest())


@dataclass(frozen=True)
class LocalSource:
    """A file to copy into a backup from a pyarrow file system."""

    filesystem: pafs.FileSystem
    path: str
    # Where it goes, relative to the backup folder.
    target: str


class BackupStore:
    """The backup root: list, read, verify and delete backups; start new ones.

    ``keyring``: the keys that decrypt encrypted backups and encrypt new ones (None: none
    configured; an encrypted backup can then be checked against its checksums only).
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        base: str,
        description: str,
        keyring: KeyRing | None = None,
    ) -> None:
        self.filesystem = filesystem
        self.base = base.rstrip("/")
        self.description = description
        self.keyring = keyring

    @classmethod
    def from_uri(cls, uri: str, keyring: KeyRing | None = None) -> BackupStore:
        """A store at a pyarrow URI (``s3://bucket/prefix``, ``file:///abs``) or a local path."""
        if not urlsplit(uri).scheme:
            uri = str(Path(uri).resolve())
        display = display_uri(uri)
        try:
            filesystem, base = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as error:
            # pyarrow quotes the URI, which may carry credentials: never repeat its message.
            raise BackupError(
                f"cannot open backup storage {display}: {type(error).__name__}"
            ) from None
        return cls(filesystem, base, display, keyring)

    def path(self, *parts: str) -> str:
        """An absolute path on the file system for ``parts`` under the root."""
        joined = "/".join(p.strip("/") for p in parts if p)
        return f"{self.base}/{joined}" if self.base else joined

    def _children(self) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.base, allow_not_found=True)
        return [
            i for i in self.filesystem.get_file_info(selector) if i.type == pafs.FileType.Directory
        ]

    def _exists(self, path: str) -> bool:
        return bool(self.filesystem.get_file_info(path).type != pafs.FileType.NotFound)

    def ids(self) -> list[str]:
        """Complete backups (a folder named like an id holding a manifest), oldest first."""
        found = [i.base_name for i in self._children() if is_backup_id(i.base_name)]
        return sorted(b for b in found if self._exists(self.path(b, MANIFEST_NAME)))

    def incomplete(self) -> list[str]:
        """Folders of backups that never finished (interrupted, or running right now)."""
        return sorted(
            i.base_name for i in self._children() if i.base_name.startswith(INCOMPLETE_PREFIX)
        )

    def resolve(self, ref: str) -> str:
        """The id ``ref`` names: an id, or ``latest``."""
        ids = self.ids()
        if ref == "latest":
            if not ids:
                raise BackupError(f"no complete backup in {self.description}")
            return ids[-1]
        if ref not in ids:
            hint = f"latest is {ids[-1]}" if ids else "it holds none"
            raise BackupError(f"no complete backup {ref!r} in {self.description} ({hint})")
        return ref

    def read_bytes(self, backup_id: str, relative: str) -> bytes:
        """A whole file of a backup (small files: the manifest)."""
        path = self.path(backup_id, relative)
        try:
            with self.filesystem.open_input_stream(path) as stream:
                data: bytes = stream.read()
        except FileNotFoundError:
            raise BackupCorrupt(f"backup {backup_id}: {relative} is missing") from None
        return data

    def manifest(self, backup_id: str) -> Manifest:
        """The manifest of a complete backup, checked against its own checksum."""
        data = self.read_bytes(backup_id, MANIFEST_NAME)
        words = self.read_bytes(backup_id, MANIFEST_SHA_NAME).decode(errors="replace").split()
        if not words:
            raise BackupCorrupt(f"backup {backup_id}: {MANIFEST_SHA_NAME} is empty")
        return parse_manifest(data, words[0], f"backup {backup_id}")

    def _keys_for(self, backup_id: str, entry: FileEntry) -> KeyRing | None:
        """The key ring to decrypt ``entry`` with (None: it is not encrypted)."""
        if not entry.encrypted:
            return None
        if self.keyring is None:
            raise BackupError(
                f"backup {backup_id} is encrypted and no encryption key is configured "
                "(set CHURN_ENCRYPTION__KEYS or encryption.keys_file)"
            )
        return self.keyring

    def check_seal(self, backup_id: str, manifest: Manifest) -> None:
        """The manifest is the one a key holder wrote (its sha256, sealed under the key).

        Raises :class:`BackupCorrupt` on a wrong key, an edited manifest or a missing seal.
        """
        if manifest.encryption is None:
            return
        name = MANIFEST_SEAL_NAME
        sealed = self.read_bytes(backup_id, name)
        try:
            recorded = decrypt_bytes(sealed, self.keyring, sealed_name(backup_id, name))
        except EncryptionError as error:
            raise BackupCorrupt(f"backup {backup_id}: {name}: {error}") from None
        if recorded.decode(errors="replace") != sha256_hex(
            self.read_bytes(backup_id, MANIFEST_NAME)
        ):
            raise BackupCorrupt(
                f"backup {backup_id}: {MANIFEST_NAME} is not the manifest its seal was made for "
                "(it was edited)"
            )

    def check_file(
        self,
        backup_id: str,
        entry: FileEntry,
        reporter: Reporter | None = None,
        *,
        decrypt: bool = False,
    ) -> str | None:
        """Why one file does not match the manifest (None: it matches).

        ``decrypt``: an encrypted file is also authenticated end to end with the key ring (the
        plaintext is discarded), so a wrong key or a forged file fails here, before a restore
        writes anything.
        """
        advance = (reporter or SilentReporter()).advance
        decryptor = (
            Decryptor(
                _Discard(), self._keys_for(backup_id, entry), sealed_name(backup_id, entry.path)
            )
            if decrypt and entry.encrypted
            else None
        )
        try:
            with self.filesystem.open_input_stream(self.path(backup_id, entry.path)) as stream:
                read = copy_stream(stream, decryptor or _Discard(), advance)
            problem = compare_file(entry, read.size, read.sha256)
            if problem is None and decryptor is not None:
                decryptor.finish()
        except FileNotFoundError:
            return f"{entry.path}: missing"
        except EncryptionError as error:
            return f"{entry.path}: cannot decrypt: {error}"
        return problem

    def verify(
        self,
        backup_id: str,
        workers: int = 4,
        reporter: Reporter | None = None,
        *,
        require_key: bool = False,
    ) -> Manifest:
        """Re-read every file and compare size and sha256 with the manifest.

        Raises :class:`BackupCorrupt` naming the first file that differs (and how many more).
        Files in the folder that the manifest does not list are reported the same way. An
        encrypted backup is also decrypted (plaintext discarded) when a key ring is configured:
        its seal first, then every file. ``require_key``: without a key ring an encrypted
        backup is refused instead of checked against its checksums only (restore needs that).
        """
        manifest = self.manifest(backup_id)
        decrypt = manifest.encryption is not None and self.keyring is not None
        if manifest.encryption is not None and not decrypt and require_key:
            raise BackupError(
                f"backup {backup_id} is encrypted (key id {manifest.encryption.key_id!r}) and no "
                "encryption key is configured (set CHURN_ENCRYPTION__KEYS or encryption.keys_file)"
            )
        if decrypt:
            # One wrong key shows here, once, instead of as every file failing.
            self.check_seal(backup_id, manifest)
        (reporter or SilentReporter()).stage("verify", manifest.total_bytes)
        checks = [
            partial(self.check_file, backup_id, e, reporter, decrypt=decrypt)
            for e in manifest.files
        ]
        problems = [p for p in run_parallel(checks, workers) if p is not None]
        listed = {e.path for e in manifest.files} | {MANIFEST_NAME, MANIFEST_SHA_NAME}
        if manifest.encryption is not None:
            listed.add(MANIFEST_SEAL_NAME)
        problems += [f"{p}: not in the manifest" for p in self.files(backup_id) if p not in listed]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BackupCorrupt(f"backup {backup_id}: {problems[0]}{more}")
        return manifest

    def files(self, backup_id: str) -> list[str]:
        """Every file of a backup folder, relative to it."""
        root = self.path(backup_id)
        selector = pafs.FileSelector(root, recursive=True)
        infos = self.filesystem.get_file_info(selector)
        return sorted(i.path[len(root) + 1 :] for i in infos if i.type == pafs.FileType.File)

    def copy_out(
        self,
        backup_id: str,
        entry: FileEntry,
        target_fs: pafs.FileSystem,
        target: str,
        reporter: Reporter | None = None,
    ) -> None:
        """Copy one backed-up file to ``target``, checking it again on the way (else removed).

        An encrypted file is decrypted on the way; ``target`` gets the plaintext.
        """
        advance = (reporter or SilentReporter()).advance
        keys = self._keys_for(backup_id, entry)
        parent = target.rsplit("/", 1)[0]
        target_fs.create_dir(parent, recursive=True)
        problem: str | None = None
        with (
            self.filesystem.open_input_stream(self.path(backup_id, entry.path)) as source,
            target_fs.open_output_stream(target) as out,
        ):
            decryptor = (
                Decryptor(out, keys, sealed_name(backup_id, entry.path))
                if entry.encrypted
                else None
            )
            try:
                read = copy_stream(source, decryptor or out, advance)
                problem = compare_file(entry, read.size, read.sha256)
                if problem is None and decryptor is not None:
                    decryptor.finish()
            except EncryptionError as error:
                problem = f"{entry.path}: cannot decrypt: {error}"
        if problem is not None:
            with contextlib.suppress(OSError):
                target_fs.delete_file(target)
            raise BackupCorrupt(f"backup {backup_id}: {problem} (changed since it was verified)")

    def read_file(self, backup_id: str, entry: FileEntry) -> bytes:
        """One backed-up file whole (small files: model artifacts), checked and decrypted."""
        data = self.read_bytes(backup_id, entry.path)
        problem = compare_file(entry, len(data), sha256_hex(data))
        if problem is None and entry.encrypted:
            keys = self._keys_for(backup_id, entry)
            try:
                return decrypt_bytes(data, keys, sealed_name(backup_id, entry.path))
            except EncryptionError as error:
                problem = f"{entry.path}: cannot decrypt: {error}"
        if problem is not None:
            raise BackupCorrupt(f"backup {backup_id}: {problem} (changed since it was verified)")
        return data

    def delete(self, backup_id: str) -> None:
        """Remove a backup folder (complete or not) whole."""
        self.filesystem.delete_dir(self.path(backup_id))

    def begin(self, backup_id: str, *, encrypt: bool = False) -> BackupWriter:
        """Start writing a new backup into its temporary folder (every file encrypted, if asked)."""
        return BackupWriter(self, backup_id, encrypt=encrypt)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder, under ``root``."""
    folders = [root]
    for here, subfolders, files in os.walk(root):
        for name in files:
            _fsync(Path(here) / name)
        folders += [Path(here) / sub for sub in subfolders]
    for folder in reversed(folders):
        _fsync(folder)


class _Discard:
    """A sink that only counts (verification reads without keeping)."""

    def write(self, data: bytes) -> int:
        return len(data)


class BackupWriter:
    """Writes the files of one backup, recording each one's size and checksum.

    ``encrypt``: every file goes through an :class:`Encryptor` (the store's active key), and
    the manifest records the ciphertext's size and checksum.
    """

    def __init__(self, store: BackupStore, backup_id: str, *, encrypt: bool = False) -> None:
        if encrypt and store.keyring is None:
            raise BackupError(
                "encryption.backups is on but no encryption key is configured "
                "(set CHURN_ENCRYPTION__KEYS or encryption.keys_file)"
            )
        self.store = store
        self.id = backup_id
        self.folder = f"{INCOMPLETE_PREFIX}{backup_id}"
        self._keyring = store.keyring if encrypt else None
        self._entries: dict[str, FileEntry] = {}
        self._lock = threading.Lock()
        store.filesystem.create_dir(store.path(self.folder), recursive=True)

    @property
    def encryption(self) -> BackupEncryption | None:
        """What the manifest records about this backup's encryption (None: not encrypted)."""
        if self._keyring is None:
            return None
        return BackupEncryption(key_id=self._keyring.active_id)

    @property
    def entries(self) -> list[FileEntry]:
        """Files written so far, by path."""
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.path)

    def _record(self, relative: str, entry: FileEntry) -> FileEntry:
        named = entry.model_copy(update={"path": relative})
        with self._lock:
            if relative in self._entries:
                raise BackupError(f"backup {self.id}: {relative} written twice")
            self._entries[relative] = named
        return named

    def _target(self, relative: str) -> str:
        target = self.store.path(self.folder, relative)
        self.store.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        return target

    def put_bytes(self, relative: str, data: bytes) -> FileEntry:
        """Write a small file whole."""
        if self._keyring is not None:
            data = encrypt_bytes(data, self._keyring, sealed_name(self.id, relative))
        with self.store.filesystem.open_output_stream(self._target(relative)) as out:
            out.write(data)
        entry = FileEntry(
            path="", size=len(data), sha256=sha256_hex(data), encrypted=self._keyring is not None
        )
        return self._record(relative, entry)

    def put_file(self, source: LocalSource, reporter: Reporter | None = None) -> FileEntry:
        """Stream a file from another file system into the backup."""
        advance = (reporter or SilentReporter()).advance
        with (
            source.filesystem.open_input_stream(source.path) as stream,
            self.open(source.target) as out,
        ):
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                advance(len(chunk))
        return self.entry(source.target)

    def entry(self, relative: str) -> FileEntry:
        """The recorded entry of a file written already."""
        with self._lock:
            return self._entries[relative]

    @contextlib.contextmanager
    def open(self, relative: str) -> Iterator[_Writable]:
        """A stream to write one file through (pg_dump output, a collection export).

        What is written is hashed as stored: after encryption, when the backup is encrypted.
        """
        digest = HashingWriter(self.store.filesystem.open_output_stream(self._target(relative)))
        encryptor = (
            Encryptor(digest, self._keyring, sealed_name(self.id, relative))
            if self._keyring is not None
            else None
        )
        try:
            yield encryptor or digest
            if encryptor is not None:
                encryptor.close()
        finally:
            digest.close()
        entry = FileEntry(
            path="",
            size=digest.size,
            sha256=digest.hexdigest(),
            encrypted=encryptor is not None,
        )
        self._record(relative, entry)

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest and give the folder its final name (the commit point)."""
        data = manifest.to_bytes()
        fs, store = self.store.filesystem, self.store
        final = store.path(self.id)
        if manifest.encryption is not None:
            assert self._keyring is not None  # the manifest's encryption comes from this writer
            seal = encrypt_bytes(
                sha256_hex(data).encode(),
                self._keyring,
                sealed_name(self.id, MANIFEST_SEAL_NAME),
            )
            with fs.open_output_stream(store.path(self.folder, MANIFEST_SEAL_NAME)) as out:
                out.write(seal)
        sha_line = f"{sha256_hex(data)}  {MANIFEST_NAME}\n".encode()
        with fs.open_output_stream(store.path(self.folder, MANIFEST_SHA_NAME)) as out:
            out.write(sha_line)
        with fs.open_output_stream(store.path(self.folder, MANIFEST_NAME)) as out:
            out.write(data)
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:
            # pyarrow does not fsync: a power cut after the rename must not leave a complete
            # backup with torn files (object stores are durable once a write returns).
            _fsync_tree(Path(store.path(self.folder)))
        try:
            fs.move(store.path(self.folder), final)
        except (NotImplementedError, OSError):
            self._copy_to_final(final)
        if local:
            _fsync(Path(final).parent)

    def _copy_to_final(self, final: str) -> None:
        """Where folders cannot be renamed: copy file by file, the manifest last."""
        fs, store = self.store.filesystem, self.store
        last = [MANIFEST_SHA_NAME, MANIFEST_NAME]
        if self._keyring is not None:
            last.insert(0, MANIFEST_SEAL_NAME)
        for entry in self.entries:
            target = f"{final}/{entry.path}"
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            fs.copy_file(store.path(self.folder, entry.path), target)
        for name in last:
            fs.copy_file(store.path(self.folder, name), f"{final}/{name}")
        fs.delete_dir(store.path(self.folder))

    def abort(self) -> None:
        """Remove everything this backup wrote (best effort: the folder name says incomplete)."""
        with contextlib.suppress(OSError):
            self.store.filesystem.delete_dir(self.store.path(self.folder))


class HashingWriter:
    """A write-only stream that hashes and counts what passes through it."""

    def __init__(self, inner: pa.NativeFile) -> None:
        self._inner = inner
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        """Hash, count and pass on ``data``."""
        self._digest.update(data)
        self.size += len(data)
        self._inner.write(data)
        return len(data)

    def close(self) -> None:
        """Close the underlying stream (on an object store: complete the upload)."""
        self._inner.close()

    def hexdigest(self) -> str:
        """The sha256 of everything written."""
        return self._digest.hexdigest()
