"""Encryption at rest (churn_core/encryption.py): the file format's promises, one by one.

Property-style: each promise is checked over every size around the chunk boundaries, every
byte position, every truncation length, with small chunks so a short file has many of them.
Plus the key settings, the keygen command, and a scoring worker that loads an encrypted model
by location (what Spark and Ray workers do) without ever receiving the key-encryption keys.
"""

from __future__ import annotations

import base64
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from churn_core.contract import FeatureContract
from churn_core.encryption import (
    MAGIC,
    EncryptionError,
    Encryptor,
    FileKey,
    KeyRing,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    load_keyring,
    parse_keys,
    read_file_key,
)
from churn_core.model import ChurnModel
from churn_core.registry import RegistryError, open_registry
from churn_core.settings import EncryptionSettings, RegistrySettings, load_settings
from churn_core.tables import Tables
from tests.unit.conftest import register_tiny, tiny_frame

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
OTHER = bytes(range(200, 232))
CHUNK = 16


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def ring(active: str = "k1", **keys: bytes) -> KeyRing:
    return KeyRing(keys or {"k1": K1}, active)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


# --- the format -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, CHUNK, 1024 * 1024])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 32, 33, 100, 1000])
def test_round_trip_at_every_size_around_the_chunk_boundaries(size: int, chunk_size: int) -> None:
    data = payload(size, seed=size)
    blob = encrypt_bytes(data, ring(), "a", chunk_size)
    assert blob.startswith(MAGIC)
    chunks = max(1, -(-size // chunk_size))  # the last chunk may be empty, never missing
    header = len(blob) - size - 16 * chunks
    assert 80 <= header <= 150  # overhead: one header and a tag per chunk, nothing else
    assert decrypt_bytes(blob, ring(), "a") == data
    if size >= 8:
        assert data not in blob


def test_streamed_writes_of_any_shape_decrypt_the_same() -> None:
    data = payload(777)
    rng = random.Random(3)
    for _ in range(20):
        out = Sink()
        encryptor = Encryptor(out, ring(), "a", CHUNK)
        at = 0
        while at < len(data):
            step = rng.randint(0, 50)
            encryptor.write(data[at : at + step])
            at += step
        encryptor.close()
        assert decrypt_bytes(bytes(out.data), ring(), "a") == data


def test_every_file_gets_its_own_data_key_and_nonces() -> None:
    data = payload(64)
    first, second = (encrypt_bytes(data, ring(), "a", CHUNK) for _ in range(2))
    assert first != second
    # Same key id, same layout, different random parts: nonce prefix, wrap nonce, wrapped key.
    assert first[:13] == second[:13] and first[13:20] != second[13:20]


def test_a_changed_byte_anywhere_is_refused() -> None:
    blob = encrypt_bytes(payload(100), ring(), "a", CHUNK)
    for position in range(len(blob)):
        for flip in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[position] ^= flip
            with pytest.raises(EncryptionError):
                decrypt_bytes(bytes(tampered), ring(), "a")


def test_a_truncated_or_extended_file_is_refused() -> None:
    data = payload(100)
    blob = encrypt_bytes(data, ring(), "a", CHUNK)
    for length in range(len(blob)):
        with pytest.raises(EncryptionError):
            decrypt_bytes(blob[:length], ring(), "a")
    # Cut exactly after a chunk: every earlier chunk is intact, the missing last flag says so.
    header = len(blob) - len(data) - 16 * 7
    with pytest.raises(EncryptionError, match="chunk 2 does not authenticate"):
        decrypt_bytes(blob[: header + 3 * (CHUNK + 16)], ring(), "a")
    for extra in (b"\x00", blob[-32:], b"x" * 16):
        with pytest.raises(EncryptionError):
            decrypt_bytes(blob + extra, ring(), "a")


def test_chunks_cannot_be_reordered_or_moved_between_files() -> None:
    a = encrypt_bytes(payload(64, 1), ring(), "a", CHUNK)
    b = encrypt_bytes(payload(64, 2), ring(), "b", CHUNK)
    header = len(a) - 64 - 16 * 4
    size = CHUNK + 16
    body = [a[header + i * size : header + (i + 1) * size] for i in range(4)]
    swapped = a[:header] + body[1] + body[0] + body[2] + body[3]
    with pytest.raises(EncryptionError, match="chunk 0 does not authenticate"):
        decrypt_bytes(swapped, ring(), "a")
    spliced = a[:header] + b[header : header + size] + a[header + size :]
    with pytest.raises(EncryptionError, match="chunk 0 does not authenticate"):
        decrypt_bytes(spliced, ring(), "a")


def test_a_file_under_another_name_is_refused() -> None:
    # Two files swapped on disk: each fails under the name of the place it was moved to.
    a = encrypt_bytes(b"model of version 1", ring(), "m/versions/000001/model.ubj")
    b = encrypt_bytes(b"model of version 2", ring(), "m/versions/000002/model.ubj")
    with pytest.raises(EncryptionError, match=r"is not 'm/versions/000002/model\.ubj'"):
        decrypt_bytes(a, ring(), "m/versions/000002/model.ubj")
    with pytest.raises(EncryptionError, match="chunk 0 does not authenticate"):
        decrypt_bytes(b, ring(), "m/versions/000001/model.ubj")


def test_a_wrong_key_an_unknown_key_and_no_key_each_say_so() -> None:
    blob = encrypt_bytes(b"secret", ring(), "a")
    with pytest.raises(EncryptionError, match="does not open with key 'k1': a wrong key"):
        decrypt_bytes(blob, KeyRing({"k1": OTHER}), "a")
    with pytest.raises(
        EncryptionError, match=r"key id 'k1', which is not configured \(configured: k2\)"
    ):
        decrypt_bytes(blob, KeyRing({"k2": K2}), "a")
    with pytest.raises(EncryptionError, match="no encryption key is configured"):
        decrypt_bytes(blob, None, "a")
    with pytest.raises(EncryptionError, match="not encrypted"):
        decrypt_bytes(b"plain text file", ring(), "a")


def test_rotation_keeps_old_files_readable_and_new_files_use_the_new_key() -> None:
    old = encrypt_bytes(b"written under k1", ring(), "a")
    rotated = KeyRing({"k2": K2, "k1": K1}, active="k2")
    new = encrypt_bytes(b"written under k2", rotated, "b")
    assert b"\x02k1" in old[:30] and b"\x02k2" in new[:30]  # the header names the key
    assert decrypt_bytes(old, rotated, "a") == b"written under k1"
    assert decrypt_bytes(new, rotated, "b") == b"written under k2"
    # Once k1 is retired, what it wrapped is unreadable, and the error names it.
    with pytest.raises(EncryptionError, match="'k1', which is not configured"):
        decrypt_bytes(old, KeyRing({"k2": K2}), "a")


def test_a_file_key_opens_its_own_file_only_and_travels_without_the_key_ring() -> None:
    keyring = ring()
    a = encrypt_bytes(b"model a", keyring, "a")
    b = encrypt_bytes(b"model b", keyring, "b")
    file_key = pickle.loads(pickle.dumps(read_file_key(a[:512], keyring)))
    assert isinstance(file_key, FileKey) and K1 not in pickle.dumps(file_key)
    assert "data_key" not in repr(file_key)
    assert decrypt_bytes(a, file_key, "a") == b"model a"
    with pytest.raises(EncryptionError, match="header changed"):
        decrypt_bytes(b, file_key, "b")
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(keyring)
    assert "k1" in repr(keyring) and b64(K1) not in repr(keyring)


def test_files_are_streamed_and_a_failed_decryption_leaves_no_output(tmp_path: Path) -> None:
    source, encrypted, restored = tmp_path / "plain", tmp_path / "enc", tmp_path / "out"
    data = payload(5000)
    source.write_bytes(data)
    encrypt_file(source, encrypted, ring(), "f", chunk_size=512)
    decrypt_file(encrypted, restored, ring(), "f")
    assert restored.read_bytes() == data
    restored.unlink()
    blob = bytearray(encrypted.read_bytes())
    blob[-1] ^= 1  # the last chunk: every earlier one was already written out
    encrypted.write_bytes(bytes(blob))
    with pytest.raises(EncryptionError, match="does not authenticate"):
        decrypt_file(encrypted, restored, ring(), "f")
    assert not restored.exists()


# --- keys and settings ------------------------------------------------------------------------


def test_key_lists_parse_and_their_errors_never_show_key_material() -> None:
    assert parse_keys(f"k1:{b64(K1)}, k2:{b64(K2)}") == {"k1": K1, "k2": K2}
    assert parse_keys(f"# rotated 2026-01\nk2:{b64(K2)}\nk1:{b64(K1)}\n") == {"k2": K2, "k1": K1}
    short = b64(K1[:16])
    for text, message in [
        (f"k1:{short}", "'k1' is 16 bytes; AES-256 needs 32"),
        ("k1:not*base64", "'k1' is not valid base64"),
        (f"k1:{b64(K1)},k1:{b64(K2)}", "listed twice"),
        (f"../k:{b64(K1)}", "invalid key id"),
        (b64(K1), "'key-id:base64-key'"),
        (" , ", "empty"),
    ]:
        with pytest.raises(EncryptionError, match=re.escape(message)) as caught:
            parse_keys(text)
        assert short not in str(caught.value) and b64(K1) not in str(caught.value)


def test_encryption_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings("test").encryption == EncryptionSettings()  # off without a key
    assert load_settings("local").encryption.backups is False
    monkeypatch.setenv("CHURN_ENCRYPTION__KEYS", f"k2:{b64(K2)},k1:{b64(K1)}")
    monkeypatch.setenv("CHURN_ENCRYPTION__ACTIVE_KEY_ID", "k2")
    monkeypatch.setenv("CHURN_ENCRYPTION__BACKUPS", "true")
    monkeypatch.setenv("CHURN_ENCRYPTION__REGISTRY", "true")
    settings = load_settings("test")
    keyring = load_keyring(settings.encryption)
    assert keyring is not None and (keyring.active_id, keyring.ids) == ("k2", ["k1", "k2"])
    assert b64(K1) not in repr(settings) and b64(K1) not in str(settings.model_dump())
    monkeypatch.setenv("CHURN_ENCRYPTION__ACTIVE_KEY_ID", "k3")
    with pytest.raises(ValidationError, match="'k3' is not among the keys") as caught:
        load_settings("test")
    assert b64(K1) not in str(caught.value)
    monkeypatch.delenv("CHURN_ENCRYPTION__ACTIVE_KEY_ID")
    with pytest.raises(ValidationError, match="active_key_id must name the key new files use"):
        load_settings("test")


def test_k8s_encrypts_both_stores_and_fails_on_first_use_without_a_key(tmp_path: Path) -> None:
    encryption = load_settings("k8s").encryption
    assert (encryption.backups, encryption.registry, encryption.keys) == (True, True, None)
    with pytest.raises(RegistryError, match=r"encryption\.registry is on but no encryption key"):
        open_registry(RegistrySettings(root=tmp_path), encryption=encryption)


def test_settings_refuse_what_would_leak_or_be_ambiguous(tmp_path: Path) -> None:
    keys = SecretStr(f"k1:{b64(K1)}")
    with pytest.raises(ValidationError, match="backups would hold the model artifacts decrypted"):
        EncryptionSettings(keys=keys, registry=True)
    with pytest.raises(ValidationError, match="not both"):
        EncryptionSettings(keys=keys, keys_file=tmp_path / "keys")
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the Secret, mounted\nk1:{b64(K1)}\n")
    from_file = EncryptionSettings(keys_file=Path("keys"), backups=True)
    keyring = load_keyring(from_file, lambda p: tmp_path / p)
    assert keyring is not None and keyring.ids == ["k1"]
    with pytest.raises(EncryptionError, match=r"cannot read encryption.keys_file .*missing"):
        load_keyring(EncryptionSettings(keys_file=tmp_path / "missing"))


def test_keygen_prints_a_key_the_settings_accept() -> None:
    from churn.cli import app

    result = CliRunner().invoke(app, ["encryption", "keygen", "--kid", "prod-2026"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith("prod-2026:")
    keys = parse_keys(line)
    assert len(keys["prod-2026"]) == 32
    again = CliRunner().invoke(app, ["encryption", "keygen", "--kid", "prod-2026"])
    assert again.output.strip() != line  # random, not derived from the id


# --- a scoring worker loads an encrypted model by location --------------------------------------


def test_a_scoring_worker_decrypts_the_model_without_the_key_ring(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract, tiny_model: ChurnModel
) -> None:
    from pipelines.scoring import plan_scoring

    encryption = EncryptionSettings(keys=SecretStr(f"k1:{b64(K1)}"), backups=True, registry=True)
    tables = Tables(tmp_path / "lake" / "tiny")
    frame = tiny_frame(50, seed=4).drop(columns=["churned"])
    frame.insert(0, "id", [f"C{i:03d}" for i in range(50)])
    write_deltalake(str(tables.gold_features), pa.Table.from_pandas(frame, preserve_index=False))
    with open_registry(RegistrySettings(root=tmp_path / "reg"), encryption=encryption) as registry:
        meta = register_tiny(registry, tiny_model_bytes, tiny_contract, "churn-tiny")
        registry.set_alias("churn-tiny", "champion", meta.version)
        stored = (tmp_path / "reg" / meta.artifact_dir / "model.ubj").read_bytes()
        assert stored.startswith(MAGIC) and tiny_model_bytes[:64] not in stored
        settings = load_settings("test").model_copy(update={"dataset": "tiny"})
        plan = plan_scoring(settings, tables, registry)

    # What Spark and Ray ship to a worker: the pickled scorer (closure) and nothing else.
    shipped = pickle.dumps(plan.scorer())
    assert K1 not in shipped
    worker_scorer = pickle.loads(shipped)
    assert worker_scorer.model.artifacts.keyring is None
    scored = worker_scorer.score(pa.Table.from_pandas(frame, preserve_index=False))
    np.testing.assert_allclose(
        scored.column("probability").to_numpy(), tiny_model.predict_frame(frame), rtol=0, atol=0
    )
