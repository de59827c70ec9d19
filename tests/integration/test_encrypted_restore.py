"""Encrypted backup and restore through the real ``churn`` command, keys from the environment.

Small on purpose: one Delta table and a registry whose artifacts are encrypted (a tiny model
trained here), no servers. Settings reach each ``churn`` process the way a pod's do, as
``CHURN_*`` variables (``CHURN_ENCRYPTION__KEYS`` from the Secret). The restore is refused with
one line and exit code 1 for a wrong key and for a forged backup, before anything exists at the
targets; with the right key the same system comes back, its artifacts encrypted again.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import xgboost as xgb
from deltalake import DeltaTable, write_deltalake
from pydantic import SecretStr

from churn_core.backup.manifest import MANIFEST_NAME, MANIFEST_SHA_NAME, sha256_hex
from churn_core.backup.storage import BackupStore
from churn_core.contract import FeatureContract
from churn_core.encryption import MAGIC
from churn_core.model import FeatureEncoder
from churn_core.registry import open_registry
from churn_core.settings import EncryptionSettings, RegistrySettings
from tests.conftest import REPO_ROOT
from tests.unit.conftest import TINY_CONTRACT, tiny_frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEY = base64.b64encode(bytes(range(7, 39))).decode()
WRONG = base64.b64encode(bytes(range(90, 122))).decode()
MODEL = "churn-saas"


def churn(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``churn --env test <args>`` as its own process, settings from ``env`` only."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CHURN_")}
    return subprocess.run(
        [str(Path(sys.executable).with_name("churn")), "--env", "test", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**inherited, "COLUMNS": "200", **env},
        cwd=REPO_ROOT,
    )


def locations(base: Path, backups: Path, key: str | None) -> dict[str, str]:
    env = {
        "CHURN_LAKE_DIR": str(base / "lake"),
        "CHURN_REGISTRY__ROOT": str(base / "registry"),
        "CHURN_BACKUP__ROOT": str(backups),
    }
    if key is not None:
        env |= {
            "CHURN_ENCRYPTION__KEYS": key,
            "CHURN_ENCRYPTION__BACKUPS": "true",
            "CHURN_ENCRYPTION__REGISTRY": "true",
        }
    return env


def encryption(key: str) -> EncryptionSettings:
    return EncryptionSettings(keys=SecretStr(key), backups=True, registry=True)


def forge(backups: Path, backup_id: str, path: str) -> None:
    """Flip one byte of ``path`` and fix the manifest's checksums (no key needed for that)."""
    store = BackupStore.from_uri(str(backups))
    target = backups / backup_id / path
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    manifest = store.manifest(backup_id)
    files = [
        f.model_copy(update={"sha256": sha256_hex(bytes(data))}) if f.path == path else f
        for f in manifest.files
    ]
    text = manifest.model_copy(update={"files": files}).to_bytes()
    (backups / backup_id / MANIFEST_NAME).write_bytes(text)
    (backups / backup_id / MANIFEST_SHA_NAME).write_text(f"{sha256_hex(text)}  {MANIFEST_NAME}\n")


def test_encrypted_backup_and_restore_through_the_cli(tmp_path: Path) -> None:
    # The live system: a Delta table and an encrypted registry with a champion.
    live, backups = tmp_path / "live", tmp_path / "backups"
    table = live / "lake" / "saas" / "silver" / "customers"
    write_deltalake(str(table), pa.table({"id": ["a", "b", "c"], "fee": [1.0, 2.5, 4.0]}))
    write_deltalake(str(table), pa.table({"id": ["d"], "fee": [9.0]}), mode="append")
    contract = FeatureContract.model_validate(TINY_CONTRACT)
    frame = tiny_frame(500)
    encoder = FeatureEncoder(contract)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        encoder.dmatrix(encoder.encode_frame(frame), frame["churned"].to_numpy()),
        10,
    )
    model_bytes = bytes(booster.save_raw("ubj"))
    with open_registry(
        RegistrySettings(root=live / "registry"), encryption=encryption(f"k1:{KEY}")
    ) as registry:
        meta = registry.register(
            MODEL,
            model_bytes,
            contract,
            params={},
            metrics={"roc_auc": 0.7},
            lineage={},
            feature_importance={},
        )
        registry.set_alias(MODEL, "champion", meta.version)
        expected = registry.load_model(MODEL, "champion").predict_frame(frame)

    made = churn("backup", env=locations(live, backups, f"k1:{KEY}"))
    assert made.returncode == 0, made.stderr
    (backup_id,) = BackupStore.from_uri(str(backups)).ids()
    artifact = f"artifacts/{MODEL}/versions/000001/model.ubj"
    stored = (backups / backup_id / artifact).read_bytes()
    assert stored.startswith(MAGIC) and model_bytes[:64] not in stored

    # Without the key, verification still checks every file's (ciphertext) checksum.
    checked = churn("backup", "--verify", backup_id, env=locations(live, backups, None))
    assert checked.returncode == 0, checked.stderr
    assert "ok (ciphertext checksums only: no encryption key configured)" in checked.stdout

    fresh = tmp_path / "fresh"
    wrong = churn("restore", backup_id, env=locations(fresh, backups, f"k1:{WRONG}"))
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"churn restore failed: BackupCorrupt: backup {backup_id}: manifest.json.seal: the data "
        "key does not open with key 'k1': a wrong key under that id, or a changed header"
    )
    assert not fresh.exists()

    forged_root = tmp_path / "forged"
    shutil.copytree(backups, forged_root)
    forge(forged_root, backup_id, artifact)
    forged = churn("restore", backup_id, env=locations(fresh, forged_root, f"k1:{KEY}"))
    assert forged.returncode == 1
    error = forged.stderr.strip()
    assert "\n" not in error
    assert error == (
        f"churn restore failed: BackupCorrupt: backup {backup_id}: manifest.json is not the "
        "manifest its seal was made for (it was edited)"
    )
    assert not fresh.exists()

    restored = churn("restore", backup_id, env=locations(fresh, backups, f"k1:{KEY}"))
    assert restored.returncode == 0, restored.stderr
    assert f"id={backup_id}" in restored.stdout
    fresh_table = DeltaTable(str(fresh / "lake" / "saas" / "silver" / "customers"))
    assert fresh_table.version() == 1
    assert sorted(fresh_table.to_pyarrow_table().column("id").to_pylist()) == ["a", "b", "c", "d"]
    assert (fresh / "registry" / MODEL / "versions/000001/model.ubj").read_bytes().startswith(MAGIC)
    with open_registry(
        RegistrySettings(root=fresh / "registry"), encryption=encryption(f"k1:{KEY}")
    ) as registry:
        assert registry.aliases(MODEL) == {"champion": 1}
        assert (registry.load_model(MODEL, "champion").predict_frame(frame) == expected).all()
