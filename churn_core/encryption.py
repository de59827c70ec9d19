"""Encryption at rest: AES-256-GCM under a random data key per file, wrapped by a named key.

Envelope encryption: every file gets its own random 256-bit data key (DEK), and the DEK is
stored in the file's header wrapped (AES-256-GCM) by a key-encryption key (KEK) from the
settings (``encryption.keys``), named by its key id. Rotating the KEK therefore never
re-encrypts data: new files name the active key id, old files keep naming the key that wrapped
their DEK, so the old KEK stays in the key list (read-only) for as long as such files exist.

Format 1 of an encrypted file::

    "CHURNENC" | format (1 byte) | chunk size (4 bytes, big-endian) | nonce prefix (7 bytes)
    | key id length (1 byte) | key id (ASCII) | wrap nonce (12 bytes) | wrapped DEK (48 bytes)
    | chunk 0 | chunk 1 | ... | last chunk

The plaintext is cut into chunks of ``chunk size`` bytes, each sealed with AES-256-GCM under
the DEK (the STREAM construction, as in Tink's streaming AEAD): the nonce is the nonce prefix,
the chunk's index (4 bytes) and a last-chunk flag (1 byte); the associated data is the fixed
header (magic to nonce prefix) and the file's *logical name* (its path in a backup, its
folder and file name in the artifact store). Hence:

* a changed byte anywhere fails: header fields fail the unwrap or change every chunk's nonce or
  associated data, payload bytes fail their chunk's tag;
* chunks cannot be reordered (index), dropped from the end or appended to (last flag);
* a file put in another file's place fails (the name is authenticated, not stored);
* any size streams with one chunk in memory (1 MiB by default; at most 2**32 chunks).

A chunk's plaintext is handed on only after its tag verified, but a stream is known to be
whole only at its end: callers that write plaintext somewhere either verify the whole file
first (restore) or remove what they wrote when :meth:`Decryptor.finish` fails.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from churn_core.settings import EncryptionSettings

MAGIC = b"CHURNENC"
FORMAT = 1
KEY_BYTES = 32
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
WRAP_NONCE_BYTES = 12
WRAPPED_KEY_BYTES = KEY_BYTES + TAG_BYTES
CHUNK_SIZE = 1024 * 1024
# A header naming a larger chunk is refused: it would make a reader buffer that much.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_CHUNKS = 2**32
# magic, format, chunk size, nonce prefix: authenticated with every chunk.
_FIXED = struct.Struct(f">8sBI{NONCE_PREFIX_BYTES}s")
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The longest header: the fixed part, the key id's length, a 64-byte id, nonce and wrapped key.
MAX_HEADER_BYTES = _FIXED.size + 1 + 64 + WRAP_NONCE_BYTES + WRAPPED_KEY_BYTES
_NO_KEY_HINT = "set CHURN_ENCRYPTION__KEYS or encryption.keys_file"


class EncryptionError(RuntimeError):
    """A file that cannot be encrypted or decrypted; the message is one line, never key material."""


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def check_key_id(kid: str) -> str:
    """``kid`` if it is a valid key id (it is written into every file's header)."""
    if not _KEY_ID.match(kid):
        raise EncryptionError(
            f"invalid key id {kid!r}: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return kid


def generate_key() -> str:
    """A new random 256-bit key-encryption key, base64 (``churn encryption keygen``)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_keys(text: str) -> dict[str, bytes]:
    """Key id -> 32-byte key from ``"kid1:base64,kid2:base64"`` (commas or newlines).

    Errors name the key id, never the key material. Lines starting with ``#`` are comments (a
    key file may explain itself).
    """
    keys: dict[str, bytes] = {}
    items = [
        item.strip()
        for line in text.splitlines()
        if not line.strip().startswith("#")
        for item in line.split(",")
    ]
    for item in filter(None, items):
        kid, sep, encoded = item.partition(":")
        kid = kid.strip()
        if not sep:
            raise EncryptionError("each encryption key is written 'key-id:base64-key'")
        check_key_id(kid)
        if kid in keys:
            raise EncryptionError(f"encryption key id {kid!r} is listed twice")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionError(f"encryption key {kid!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise EncryptionError(
                f"encryption key {kid!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES} "
                "(churn encryption keygen makes one)"
            )
        keys[kid] = key
    if not keys:
        raise EncryptionError("the encryption key list is empty")
    return keys


class KeyRing:
    """Key-encryption keys by id, and the one new files are encrypted with.

    Never pickled: a key ring inside a Spark or Ray closure would travel to (and be stored by)
    the cluster. Workers get a :class:`FileKey` for exactly the file they read instead.
    """

    def __init__(self, keys: Mapping[str, bytes], active: str | None = None) -> None:
        if not keys:
            raise EncryptionError("a key ring needs at least one key")
        for kid, key in keys.items():
            check_key_id(kid)
            if len(key) != KEY_BYTES:
                raise EncryptionError(f"encryption key {kid!r} is not {KEY_BYTES} bytes")
        if active is None:
            if len(keys) > 1:
                raise EncryptionError(
                    f"encryption.active_key_id must name the key new files use (one of "
                    f"{', '.join(sorted(keys))})"
                )
            active = next(iter(keys))
        if active not in keys:
            raise EncryptionError(
                f"encryption.active_key_id {active!r} is not among the keys "
                f"({', '.join(sorted(keys))})"
            )
        self._keys = dict(keys)
        self.active_id = active

    @property
    def ids(self) -> list[str]:
        """The configured key ids, sorted."""
        return sorted(self._keys)

    def key(self, kid: str) -> bytes:
        """The key called ``kid``; the error lists the configured ids."""
        try:
            return self._keys[kid]
        except KeyError:
            raise EncryptionError(
                f"encrypted with key id {kid!r}, which is not configured "
                f"(configured: {', '.join(self.ids)})"
            ) from None

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            "a KeyRing holds key-encryption keys and is never pickled; pass a FileKey "
            "(ArtifactStore.file_key) to processes that read one file"
        )

    def __repr__(self) -> str:
        return f"KeyRing(ids={self.ids}, active={self.active_id!r})"


@dataclass(frozen=True)
class FileKey:
    """The unwrapped data key of one encrypted file, with the header it belongs to.

    What a worker process needs to decrypt that one file (a model artifact): it opens nothing
    else, so shipping it costs at most that file's secrecy, never the key-encryption key's.
    """

    header: bytes
    data_key: bytes = field(repr=False)


@dataclass(frozen=True)
class _Header:
    raw: bytes
    fixed: bytes
    chunk_size: int
    nonce_prefix: bytes
    kid: str
    wrap_nonce: bytes
    wrapped: bytes


def is_encrypted(data: bytes) -> bool:
    """Whether ``data`` (a file's first bytes) starts like an encrypted file."""
    return data.startswith(MAGIC)


def _header_length(prefix: bytes) -> int | None:
    """Length of the header starting ``prefix``; None until enough bytes are there to tell."""
    if len(prefix) < _FIXED.size + 1:
        return None
    return _FIXED.size + 1 + prefix[_FIXED.size] + WRAP_NONCE_BYTES + WRAPPED_KEY_BYTES


def _parse_header(raw: bytes) -> _Header:
    magic, version, chunk_size, prefix = _FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise EncryptionError(f"not encrypted (no {MAGIC.decode()} header)")
    if version != FORMAT:
        raise EncryptionError(f"encryption format {version}; this version reads format {FORMAT}")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise EncryptionError(f"the header names a chunk size of {chunk_size} bytes (corrupt)")
    start = _FIXED.size + 1
    kid_bytes = raw[start : start + raw[_FIXED.size]]
    try:
        kid = check_key_id(kid_bytes.decode("ascii"))
    except (UnicodeDecodeError, EncryptionError):
        raise EncryptionError("the header's key id is not valid (corrupt)") from None
    at = start + len(kid_bytes)
    return _Header(
        raw=raw,
        fixed=raw[: _FIXED.size],
        chunk_size=chunk_size,
        nonce_prefix=prefix,
        kid=kid,
        wrap_nonce=raw[at : at + WRAP_NONCE_BYTES],
        wrapped=raw[at + WRAP_NONCE_BYTES : at + WRAP_NONCE_BYTES + WRAPPED_KEY_BYTES],
    )


def _wrap_aad(fixed: bytes, kid: str) -> bytes:
    # The wrapped key belongs to this header and this key id: moved elsewhere, it fails.
    return b"churn-dek|" + fixed + kid.encode("ascii")


def _unwrap(header: _Header, keys: KeyRing | FileKey | None) -> bytes:
    if isinstance(keys, FileKey):
        if not hmac.compare_digest(keys.header, header.raw):
            raise EncryptionError("the file's header changed since its data key was unwrapped")
        return keys.data_key
    if keys is None:
        raise EncryptionError(
            f"encrypted with key id {header.kid!r} but no encryption key is configured "
            f"({_NO_KEY_HINT})"
        )
    kek = keys.key(header.kid)
    try:
        return AESGCM(kek).decrypt(
            header.wrap_nonce, header.wrapped, _wrap_aad(header.fixed, header.kid)
        )
    except InvalidTag:
        raise EncryptionError(
            f"the data key does not open with key {header.kid!r}: a wrong key under that id, "
            "or a changed header"
        ) from None


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= MAX_CHUNKS:
        raise EncryptionError(f"more than {MAX_CHUNKS} chunks: use a larger chunk size")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


class Encryptor:
    """Encrypts a stream written into it chunk by chunk, writing the ciphertext to ``sink``.

    Call :meth:`close` once everything is written: it seals the last chunk (the sink itself is
    left open). ``name`` is the file's logical name, authenticated with every chunk.
    """

    def __init__(
        self, sink: _Writable, keyring: KeyRing, name: str, chunk_size: int = CHUNK_SIZE
    ) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise EncryptionError(f"chunk size {chunk_size} is outside 1..{MAX_CHUNK_SIZE}")
        self._sink = sink
        self._chunk_size = chunk_size
        self._name = name.encode()
        data_key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(data_key)
        self._prefix = os.urandom(NONCE_PREFIX_BYTES)
        fixed = _FIXED.pack(MAGIC, FORMAT, chunk_size, self._prefix)
        kid = keyring.active_id
        wrap_nonce = os.urandom(WRAP_NONCE_BYTES)
        wrapped = AESGCM(keyring.key(kid)).encrypt(wrap_nonce, data_key, _wrap_aad(fixed, kid))
        self.header = fixed + bytes([len(kid)]) + kid.encode("ascii") + wrap_nonce + wrapped
        self._aad = fixed + self._name
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        self.written = len(self.header)
        sink.write(self.header)

    def _seal(self, chunk: bytes, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index, last), chunk, self._aad)
        self._sink.write(sealed)
        self.written += len(sealed)
        self._index += 1

    def write(self, data: bytes) -> int:
        """Take ``data``; every full chunk that is surely not the last is sealed now."""
        if self._closed:
            raise EncryptionError("write after close")
        self._buffer += data
        # Strictly more than a chunk: the last chunk is sealed (flagged) by close() only.
        while len(self._buffer) > self._chunk_size:
            self._seal(bytes(self._buffer[: self._chunk_size]), last=False)
            del self._buffer[: self._chunk_size]
        return len(data)

    def close(self) -> None:
        """Seal the last chunk (possibly empty). Idempotent."""
        if not self._closed:
            self._closed = True
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()


class Decryptor:
    """Decrypts a stream written into it, writing verified plaintext to ``sink``.

    ``keys``: the key ring (the header names the key), or the :class:`FileKey` of exactly this
    file. :meth:`finish` must be called at the end: only then is the stream known to be whole.
    """

    def __init__(self, sink: _Writable, keys: KeyRing | FileKey | None, name: str) -> None:
        self._sink = sink
        self._keys = keys
        self._name = name
        self._buffer = bytearray()
        self._header: _Header | None = None
        self._aead: AESGCM | None = None
        self._aad = b""
        self._index = 0
        self.plaintext_bytes = 0

    def _start(self) -> bool:
        length = _header_length(bytes(self._buffer[: _FIXED.size + 1]))
        if length is None or len(self._buffer) < length:
            if len(self._buffer) >= len(MAGIC) and not is_encrypted(bytes(self._buffer)):
                raise EncryptionError(f"not encrypted (no {MAGIC.decode()} header)")
            return False
        header = _parse_header(bytes(self._buffer[:length]))
        del self._buffer[:length]
        self._aead = AESGCM(_unwrap(header, self._keys))
        self._aad = header.fixed + self._name.encode()
        self._header = header
        return True

    def _open(self, sealed: bytes, last: bool) -> None:
        assert self._header is not None and self._aead is not None
        nonce = _nonce(self._header.nonce_prefix, self._index, last)
        try:
            plain = self._aead.decrypt(nonce, sealed, self._aad)
        except InvalidTag:
            raise EncryptionError(
                f"chunk {self._index} does not authenticate: the file was changed or "
                f"truncated, or it is not {self._name!r}"
            ) from None
        self._sink.write(plain)
        self.plaintext_bytes += len(plain)
        self._index += 1

    def write(self, data: bytes) -> int:
        """Take ciphertext; every complete chunk that is surely not the last is opened now."""
        self._buffer += data
        if self._header is None and not self._start():
            return len(data)
        assert self._header is not None
        full = self._header.chunk_size + TAG_BYTES
        while len(self._buffer) > full:
            self._open(bytes(self._buffer[:full]), last=False)
            del self._buffer[:full]
        return len(data)

    def finish(self) -> None:
        """Open the last chunk: raises unless the stream was whole and untouched."""
        if self._header is None and not self._start():
            raise EncryptionError("truncated: the file ends inside its header")
        if len(self._buffer) < TAG_BYTES:
            raise EncryptionError(
                f"truncated: the file ends {len(self._buffer)} bytes into chunk {self._index}"
            )
        self._open(bytes(self._buffer), last=True)
        self._buffer.clear()


def read_file_key(prefix: bytes, keyring: KeyRing | None) -> FileKey:
    """The :class:`FileKey` of the encrypted file whose first bytes are ``prefix``."""
    length = _header_length(prefix)
    if not is_encrypted(prefix) or length is None or len(prefix) < length:
        raise EncryptionError(f"not encrypted, or truncated inside its {MAGIC.decode()} header")
    header = _parse_header(prefix[:length])
    return FileKey(header=header.raw, data_key=_unwrap(header, keyring))


class _Collect:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        return len(data)


def encrypt_bytes(data: bytes, keyring: KeyRing, name: str, chunk_size: int = CHUNK_SIZE) -> bytes:
    """``data`` encrypted under a new data key wrapped by the active key, bound to ``name``."""
    out = _Collect()
    encryptor = Encryptor(out, keyring, name, chunk_size)
    encryptor.write(data)
    encryptor.close()
    return b"".join(out.parts)


def decrypt_bytes(blob: bytes, keys: KeyRing | FileKey | None, name: str) -> bytes:
    """The plaintext of an encrypted ``blob`` stored as ``name``; raises if anything differs."""
    out = _Collect()
    decryptor = Decryptor(out, keys, name)
    decryptor.write(blob)
    decryptor.finish()
    return b"".join(out.parts)


def _transform(
    source: Path, target: Path, make: Callable[[_Writable], Encryptor | Decryptor]
) -> None:
    """Stream ``source`` through a cipher into ``target``; ``target`` is removed on failure."""
    try:
        with source.open("rb") as reader, target.open("wb") as writer:
            cipher = make(writer)
            while chunk := reader.read(CHUNK_SIZE):
                cipher.write(chunk)
            if isinstance(cipher, Encryptor):
                cipher.close()
            else:
                cipher.finish()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise


def encrypt_file(
    source: Path, target: Path, keyring: KeyRing, name: str, chunk_size: int = CHUNK_SIZE
) -> None:
    """Encrypt ``source`` into ``target`` (streamed: one chunk in memory), bound to ``name``."""
    _transform(source, target, lambda sink: Encryptor(sink, keyring, name, chunk_size))


def decrypt_file(source: Path, target: Path, keys: KeyRing | FileKey | None, name: str) -> None:
    """Decrypt ``source`` into ``target``; on any failure ``target`` is removed and this raises."""
    _transform(source, target, lambda sink: Decryptor(sink, keys, name))


def keys_text(settings: EncryptionSettings, resolve: Callable[[Path], Path]) -> str | None:
    """The configured key list (``keys``, or the contents of ``keys_file``); None: no keys."""
    if settings.keys is not None:
        return settings.keys.get_secret_value()
    if settings.keys_file is None:
        return None
    path = resolve(settings.keys_file)
    try:
        return path.read_text()
    except OSError as error:
        raise EncryptionError(
            f"cannot read encryption.keys_file {path}: {error.strerror or type(error).__name__}"
        ) from None


def load_keyring(
    settings: EncryptionSettings, resolve: Callable[[Path], Path] = Path.resolve
) -> KeyRing | None:
    """The key ring the settings configure (None when no keys are configured at all)."""
    text = keys_text(settings, resolve)
    if text is None:
        return None
    return KeyRing(parse_keys(text), settings.active_key_id)


def require_keyring(
    settings: EncryptionSettings, resolve: Callable[[Path], Path], purpose: str
) -> KeyRing:
    """The key ring, or a one-line error saying which switch needs it (``purpose``)."""
    keyring = load_keyring(settings, resolve)
    if keyring is None:
        raise EncryptionError(
            f"{purpose} is on but no encryption key is configured ({_NO_KEY_HINT})"
        )
    return keyring
