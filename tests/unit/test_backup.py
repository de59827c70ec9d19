"""Backups on tiny local stores: Delta version selection, manifest and checksums, retention,
secret redaction, restore into empty stores, and time travel of one table.

Everything here is real (delta-rs tables, the JSON-files registry, the local file system); the
PostgreSQL and MongoDB parts run in tests/integration/test_restore_drill.py.
"""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pydantic import BaseModel, SecretStr

from churn_core.backup import delta as delta_backup
from churn_core.backup.configs import REDACTED, redact_text
from churn_core.backup.create import create_backup, open_store
from churn_core.backup.manifest import (
    MANIFEST_NAME,
    MANIFEST_SHA_NAME,
    BackupCorrupt,
    BackupError,
    sha256_hex,
)
from churn_core.backup.postgres import dump_database, postgres_targets, split_password
from churn_core.backup.restore import RestoreRefused, restore_backup
from churn_core.backup.retention import created_at, expired
from churn_core.backup.storage import INCOMPLETE_PREFIX, BackupStore, new_backup_id
from churn_core.backup.time_travel import resolve_table, restore_version, version_before
from churn_core.contract import FeatureContract
from churn_core.encryption import MAGIC
from churn_core.prediction_log import query_delta
from churn_core.registry import open_registry
from churn_core.settings import PACKAGE_CONFIG_DIR, EncryptionSettings, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "topsecretpw"


# --- helpers --------------------------------------------------------------------------------


def commit(n: int) -> str:
    return f"{n:020d}.json"


def rows(path: Path | str) -> list[dict[str, Any]]:
    """Every row of a table's current version (sorted), read through DataFusion."""
    result = query_delta({"t": path}, "SELECT * FROM t")
    return sorted(result.to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def tiny_table(path: Path, *, checkpoint: bool = False) -> None:
    """Three appends, a checkpoint, then an overwrite: version 3 reads one file of four."""
    for i in range(3):
        batch = pa.table({"id": [f"c{i}", f"d{i}"], "day": ["2026-01-01", "2026-01-02"]})
        write_deltalake(str(path), batch, mode="append", partition_by=["day"])
    if checkpoint:
        DeltaTable(str(path)).create_checkpoint()
    write_deltalake(str(path), pa.table({"id": ["z"], "day": ["2026-01-03"]}), mode="overwrite")


def settings_for(base: Path, **changes: Any) -> Settings:
    settings = load_settings("test", PACKAGE_CONFIG_DIR)
    return settings.model_copy(
        update={
            "root": REPO_ROOT,
            "lake_dir": base / "lake",
            "registry": settings.registry.model_copy(update={"root": base / "registry"}),
            "backup": settings.backup.model_copy(update={"root": str(base / "backups")}),
            **changes,
        }
    )


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration folder holding secrets in every way they turn up."""
    folder = tmp_path / "configs"
    (folder / "auth").mkdir(parents=True)
    (folder / "base.yaml").write_text(
        "dataset: saas\n"
        f"serve:\n  redis_url: redis://:{SECRET}@127.0.0.1:6379/0\n"
        "  token_ttl_s: 900\n"
        "alerts:\n  slack:\n    webhook_url: https://hooks.example/T000/B000/XXXX\n"
        "smtp:\n  password: hunter22  # from the vault\n"
    )
    (folder / "auth" / "local.yaml").write_text('clients:\n  a:\n    secret_hash: "$argon2id$x"\n')
    (folder / "auth" / "signing.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    monkeypatch.setenv("CHURN_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def system(
    tmp_path: Path, config_dir: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> Settings:
    """Two Delta tables and a registry with two versions, aliases and metric history."""
    serve = load_settings("test", PACKAGE_CONFIG_DIR).serve
    settings = settings_for(
        tmp_path / "live",
        serve=serve.model_copy(update={"redis_url": SecretStr(f"redis://:{SECRET}@h:1/0")}),
    )
    lake = settings.dataset_lake
    tiny_table(lake / "silver" / "people", checkpoint=True)
    write_deltalake(
        str(lake / "monitoring" / "predictions"),
        pa.table({"p": [0.25, 0.5], "log_date": ["2026-01-01", "2026-01-02"]}),
        partition_by=["log_date"],
    )
    with open_registry(settings.registry, settings.resolve) as registry:
        for auc in (0.7, 0.8):
            registry.register(
                "m",
                tiny_model_bytes,
                tiny_contract,
                params={"max_depth": 3},
                metrics={"roc_auc": auc},
                lineage={},
                feature_importance={"usage": 1.0},
                files={"report.json": b'{"ok": true}'},
            )
        registry.set_alias("m", "champion", 2, reason="test")
        registry.set_alias("m", "challenger", 1, reason="test")
        registry.record_metrics("m", 2, {"roc_auc": 0.79}, source="accuracy")
    return settings


def registry_state(settings: Settings) -> dict[str, Any]:
    with open_registry(
        settings.registry, settings.resolve, encryption=settings.encryption
    ) as registry:
        return {
            "versions": registry.list("m"),
            "aliases": registry.aliases("m"),
            "history": registry.alias_history("m"),
            "metrics": registry.metric_history("m"),
            "models": {v: registry.read_file("m", v, "model.ubj") for v in (1, 2)},
        }


# --- Delta version selection ----------------------------------------------------------------


def test_log_files_up_to_the_version_and_its_checkpoint_only() -> None:
    names = [commit(n) for n in range(13)] + [
        f"{5:020d}.checkpoint.0000000001.0000000002.parquet",
        f"{5:020d}.checkpoint.0000000002.0000000002.parquet",
        f"{10:020d}.checkpoint.parquet",
        f"{7:020d}.crc",
        f"{8:020d}.crc",
        "_last_checkpoint",
        f"{2:020d}.{4:020d}.compacted.json",
    ]
    chosen = delta_backup.select_log_files(names, 7, last_checkpoint=10)
    assert chosen == sorted(
        [commit(n) for n in range(8)]
        + [names[13], names[14], f"{7:020d}.crc", f"{2:020d}.{4:020d}.compacted.json"]
    )
    # At the checkpoint's own version the hint is kept (it names a checkpoint in the backup).
    latest = delta_backup.select_log_files(names, 12, last_checkpoint=10)
    assert "_last_checkpoint" in latest and f"{10:020d}.checkpoint.parquet" in latest
    assert names[13] not in latest


def test_commits_cleaned_up_before_a_checkpoint_are_not_needed() -> None:
    names = [commit(n) for n in (10, 11, 12)] + [f"{10:020d}.checkpoint.parquet"]
    assert delta_backup.select_log_files(names, 12, None) == sorted(names)
    with pytest.raises(BackupError, match="no commit 0 "):
        delta_backup.select_log_files(names, 9, None)


def test_a_gap_in_the_log_is_refused() -> None:
    with pytest.raises(BackupError, match="no commit 1 "):
        delta_backup.select_log_files([commit(0), commit(2)], 2, None)


def test_a_snapshot_holds_exactly_the_files_its_version_reads(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    tiny_table(lake / "silver" / "people", checkpoint=True)
    (lake / "silver" / "people" / "_delta_log" / "_last_checkpoint").unlink()
    write_deltalake(str(lake / "gold" / "features"), pa.table({"x": [1]}))
    assert delta_backup.discover_tables(lake) == ["gold/features", "silver/people"]
    snapshot = delta_backup.snapshot_table(lake, "silver/people")
    assert snapshot.version == 3
    assert snapshot.rows == 1
    table = DeltaTable(str(lake / "silver" / "people"))
    assert [str(lake / "silver" / "people" / f) for f in snapshot.data_files] == table.file_uris()
    on_disk = [p for p in (lake / "silver/people").rglob("*.parquet") if "_delta_log" not in str(p)]
    assert len(on_disk) == 7 and len(snapshot.data_files) == 1  # 6 appended + the overwrite
    assert snapshot.log_files == [
        f"_delta_log/{n}"
        for n in [commit(0), commit(1), f"{2:020d}.checkpoint.parquet", commit(2), commit(3)]
    ]


# --- a whole backup and restore on local stores ---------------------------------------------


def test_backup_then_restore_into_empty_stores_gives_the_same_system(
    system: Settings, tmp_path: Path
) -> None:
    lake = system.dataset_lake
    before_rows = {n: rows(lake / n) for n in ("silver/people", "monitoring/predictions")}
    before_registry = registry_state(system)

    summary = create_backup(system)
    store = open_store(system)
    assert store.ids() == [summary.id] and store.incomplete() == []
    manifest = store.verify(summary.id)
    assert {(e.name, e.version) for e in manifest.delta} == {
        ("silver/people", 3),
        ("monitoring/predictions", 0),
    }
    assert manifest.registry is not None
    assert manifest.registry.models["m"].versions == [1, 2]
    assert manifest.registry.models["m"].aliases == {"challenger": 1, "champion": 2}
    assert manifest.postgres == [] and manifest.mongodb == []
    people = [f.path for f in manifest.files if f.path.startswith("delta/silver/people/")]
    assert sum(p.endswith(".snappy.parquet") for p in people) == 1  # version 3's file only

    # A new, empty system restored from the backup (the same backup root).
    fresh = settings_for(tmp_path / "fresh").model_copy(update={"backup": system.backup})
    result = restore_backup(fresh, "latest")
    assert result.delta_versions == {"monitoring/predictions": 0, "silver/people": 3}
    for name, expected in before_rows.items():
        assert rows(fresh.dataset_lake / name) == expected
        assert (
            DeltaTable(str(fresh.dataset_lake / name)).version()
            == DeltaTable(str(lake / name)).version()
        )
    assert registry_state(fresh) == before_registry
    # The restored table keeps its history: the overwrite is still version 3.
    history = DeltaTable(str(fresh.dataset_lake / "silver/people")).history()
    assert [h["version"] for h in history] == [3, 2, 1, 0]


def test_a_restore_over_stores_that_are_not_empty_is_refused(system: Settings) -> None:
    create_backup(system)
    with pytest.raises(
        RestoreRefused, match=r"Delta table .*lake/saas/.* is not empty \(and \d+ more\)"
    ):
        restore_backup(system)
    # --force: the live system is overwritten with what it already was.
    before = rows(system.dataset_lake / "silver/people")
    write_deltalake(
        str(system.dataset_lake / "silver/people"),
        pa.table({"id": ["bad"], "day": ["x"]}),
        mode="append",
    )
    restore_backup(system, force=True)
    assert rows(system.dataset_lake / "silver/people") == before


def test_a_corrupted_file_is_named_and_nothing_is_written(system: Settings, tmp_path: Path) -> None:
    backup_id = create_backup(system).id
    store = open_store(system)
    victim = next(f for f in store.manifest(backup_id).files if f.path.endswith("model.ubj"))
    path = Path(store.path(backup_id, victim.path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit
    path.write_bytes(bytes(data))

    with pytest.raises(BackupCorrupt) as caught:
        store.verify(backup_id)
    assert (
        str(caught.value)
        == f"backup {backup_id}: {victim.path}: checksum mismatch "
        + str(caught.value).split("checksum mismatch ", 1)[1]
    )
    assert "\n" not in str(caught.value)

    fresh = settings_for(tmp_path / "fresh").model_copy(update={"backup": system.backup})
    with pytest.raises(BackupCorrupt, match=victim.path.replace(".", r"\.")):
        restore_backup(fresh, backup_id)
    assert not (tmp_path / "fresh").exists()  # verification comes before any write


def test_a_changed_manifest_and_an_unlisted_file_are_caught(system: Settings) -> None:
    backup_id = create_backup(system).id
    store = open_store(system)
    extra = Path(store.path(backup_id, "delta/silver/people/stray.parquet"))
    extra.write_bytes(b"x")
    with pytest.raises(BackupCorrupt, match=r"stray\.parquet: not in the manifest"):
        store.verify(backup_id)
    extra.unlink()
    manifest = Path(store.path(backup_id, MANIFEST_NAME))
    manifest.write_text(manifest.read_text().replace('"dataset": "saas"', '"dataset": "saaS"'))
    with pytest.raises(BackupCorrupt, match=r"manifest\.json: checksum mismatch"):
        store.verify(backup_id)


def test_an_interrupted_backup_leaves_no_backup_behind(
    system: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from churn_core.backup import create

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(create, "_backup_postgres", crash)
    with pytest.raises(KeyboardInterrupt):
        create_backup(system)
    store = open_store(system)
    assert store.ids() == [] and store.incomplete() == []
    with pytest.raises(BackupError, match="no complete backup"):
        store.resolve("latest")


def test_an_incomplete_folder_is_never_taken_for_a_backup(tmp_path: Path) -> None:
    store = BackupStore.from_uri(str(tmp_path))
    backup_id = new_backup_id()
    (tmp_path / f"{INCOMPLETE_PREFIX}{backup_id}").mkdir()
    (tmp_path / f"{INCOMPLETE_PREFIX}{backup_id}" / MANIFEST_NAME).write_text("{}")
    (tmp_path / new_backup_id()).mkdir()  # renamed but without manifest: not complete either
    assert store.ids() == []
    assert store.incomplete() == [f"{INCOMPLETE_PREFIX}{backup_id}"]


def test_secrets_never_reach_the_backup(system: Settings, config_dir: Path) -> None:
    backup_id = create_backup(system).id
    store = open_store(system)
    manifest = store.manifest(backup_id)
    assert "auth/signing.pem" not in manifest.configs
    assert sorted(manifest.configs) == ["auth/local.yaml", "base.yaml"]
    everything = b"".join(
        Path(store.path(backup_id, p)).read_bytes() for p in store.files(backup_id)
    )
    for secret in (SECRET, "hunter22", "XXXX", "$argon2id$x", "PRIVATE KEY"):
        assert secret.encode() not in everything
    base = Path(store.path(backup_id, "configs/base.yaml")).read_text()
    assert "token_ttl_s: 900" in base and f"redis://:{REDACTED}@127.0.0.1" in base
    assert manifest.redacted_values >= 4


def test_redaction_keeps_the_shape_of_the_file() -> None:
    text = 'a:\n  password: ""\n  api_key: abc # x\n{"token": "t0k", "n": 1}\nurl: s3://k:v@b/p\n'
    redacted, count = redact_text(text, [])
    assert redacted == (
        f'a:\n  password: ""\n  api_key: "{REDACTED}"\n{{"token": "{REDACTED}", "n": 1}}\n'
        f"url: s3://k:{REDACTED}@b/p\n"
    )
    assert count == 3


# --- retention ------------------------------------------------------------------------------


def ids_at(*hours_ago: float, now: datetime) -> list[str]:
    return [new_backup_id(now - timedelta(hours=h)) for h in hours_ago]


def test_retention_keeps_the_newest_n_and_the_young() -> None:
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    ids = ids_at(1, 30, 60, 200, 400, now=now)
    assert created_at(ids[0]) == (now - timedelta(hours=1)).replace(microsecond=0)
    assert expired(ids, None, None, now) == []
    assert expired(ids, 2, None, now) == [ids[4], ids[3], ids[2]]
    assert expired(ids, None, 3, now) == [ids[4], ids[3]]
    # Either rule keeps a backup: 2 newest + younger than 10 days.
    assert expired(ids, 2, 10, now) == [ids[4]]
    # The backup just made is never deleted, whatever the rules say.
    assert expired(ids, 1, None, now, protect=ids[4]) == [ids[3], ids[2], ids[1]]


def test_retention_deletes_old_backups_after_a_new_one(system: Settings) -> None:
    settings = system.model_copy(
        update={"backup": system.backup.model_copy(update={"keep_last": 2, "keep_days": None})}
    )
    made = [create_backup(settings, now=datetime(2026, 1, d, tzinfo=UTC)).id for d in (1, 2, 3)]
    store = open_store(settings)
    assert store.ids() == made[1:]
    latest = create_backup(settings)
    assert latest.deleted == [made[1]]
    assert store.ids() == [made[2], latest.id]


# --- PostgreSQL targets -----------------------------------------------------------------------


def test_passwords_leave_the_url_for_the_environment() -> None:
    assert split_password("postgresql://u:p%40ss@h:5433/db?sslmode=require") == (
        "postgresql://u@h:5433/db?sslmode=require",
        "p@ss",
    )
    assert split_password("postgresql://u@h/db?password=x&application_name=a") == (
        "postgresql://u@h/db?application_name=a",
        "x",
    )


def test_pg_dump_gets_the_password_through_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in pg_dump that records its command line and environment, then writes a dump.
    spy = tmp_path / "pg_dump"
    spy.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/argv\n'
        f'echo "$PGPASSWORD" > {tmp_path}/env\n'
        "printf 'PGDMP'\n"
    )
    spy.chmod(0o755)
    target = postgres_targets(SecretStr("postgresql://u:pw%2Fx@h:5/db"))[0]
    sink = io.BytesIO()
    dump_database(target, sink, str(spy), timeout_s=10)
    assert sink.getvalue() == b"PGDMP"
    assert (tmp_path / "argv").read_text().split() == [
        "--format=custom",
        "--no-password",
        "--dbname=postgresql://u@h:5/db",
    ]
    assert (tmp_path / "env").read_text().strip() == "pw/x"
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'FATAL: password pw/x rejected' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(BackupError) as caught:
        dump_database(target, sink, str(failing), timeout_s=10)
    assert "pw/x" not in str(caught.value) and "password *** rejected" in str(caught.value)


def test_every_distinct_database_in_the_settings_is_found() -> None:
    class Scoring(BaseModel):
        postgres_url: SecretStr

    class Fake(BaseModel):
        sources: dict[str, Any]
        online: SecretStr
        scoring: Scoring

    settings = Fake(
        sources={"customers": {"url": "postgresql://a:1@h:5432/src"}, "t": {"x": "kafka://k"}},
        online=SecretStr("postgresql://b:2@h/app"),
        scoring=Scoring(postgres_url=SecretStr("postgres://c:3@h:5432/app")),
    )
    targets = postgres_targets(settings)
    assert [(t.database, t.settings) for t in targets] == [
        ("app", ("online", "scoring.postgres_url")),
        ("src", ("sources.customers.url",)),
    ]
    assert all(":1@" not in t.display and ":2@" not in t.display for t in targets)
    assert targets[0].file_name == "app_h_5432.dump"


# --- time travel ----------------------------------------------------------------------------


def test_restoring_a_version_commits_its_content_and_keeps_history(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    path = lake / "silver" / "people"
    write_deltalake(str(path), pa.table({"id": ["a", "b"], "v": [1, 2]}))
    good = rows(path)
    good_time = datetime.fromtimestamp(DeltaTable(str(path)).history()[0]["timestamp"] / 1000, UTC)
    write_deltalake(str(path), pa.table({"id": ["junk"], "v": [-1]}), mode="append")
    write_deltalake(str(path), pa.table({"id": ["x"], "v": [0]}), mode="overwrite")
    assert resolve_table(lake, "silver/people") == path
    assert version_before(path, good_time + timedelta(milliseconds=1)) == 0

    result = restore_version(path, 0)
    assert (result.previous_version, result.target_version, result.new_version) == (2, 0, 3)
    assert (result.rows_before, result.rows_after) == (1, 2)
    assert rows(path) == good
    history = DeltaTable(str(path)).history()
    assert history[0]["operation"] == "RESTORE" and len(history) == 4
    with pytest.raises(BackupError, match="current version is 3"):
        restore_version(path, 3)
    with pytest.raises(BackupError, match="no Delta table 'silver/nothing'"):
        resolve_table(lake, "silver/nothing")


def test_a_vacuumed_version_cannot_be_restored_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_deltalake(str(path), pa.table({"a": [1]}))
    write_deltalake(str(path), pa.table({"a": [2]}), mode="overwrite")
    DeltaTable(str(path)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with pytest.raises(BackupError, match=r"restoring version 0 failed: .*missing file"):
        restore_version(path, 0)
    assert rows(path) == [{"a": 2}]  # nothing was committed


# --- encrypted backups ----------------------------------------------------------------------

K1 = base64.b64encode(bytes(range(32))).decode()
K2 = base64.b64encode(bytes(range(64, 96))).decode()
WRONG = base64.b64encode(bytes(range(128, 160))).decode()


def encrypted(settings: Settings, keys: str = f"k1:{K1}", active: str | None = None) -> Settings:
    """``settings`` with backups and registry artifacts encrypted under ``keys``."""
    encryption = EncryptionSettings(
        keys=SecretStr(keys), active_key_id=active, backups=True, registry=True
    )
    return settings.model_copy(update={"encryption": encryption})


def forge(store: BackupStore, backup_id: str, path: str, data: bytes) -> None:
    """Replace a file and fix the manifest and its checksum, as someone without the key can."""
    Path(store.path(backup_id, path)).write_bytes(data)
    manifest = store.manifest(backup_id)
    files = [
        f.model_copy(update={"size": len(data), "sha256": sha256_hex(data)})
        if f.path == path
        else f
        for f in manifest.files
    ]
    text = manifest.model_copy(update={"files": files}).to_bytes()
    Path(store.path(backup_id, MANIFEST_NAME)).write_bytes(text)
    Path(store.path(backup_id, MANIFEST_SHA_NAME)).write_text(f"{sha256_hex(text)}  x\n")


def test_an_encrypted_backup_restores_the_same_system(system: Settings, tmp_path: Path) -> None:
    live = encrypted(system)
    before_rows = rows(live.dataset_lake / "silver/people")
    before_registry = registry_state(live)
    backup_id = create_backup(live).id

    store = open_store(live)
    manifest = store.manifest(backup_id)
    assert manifest.format == 2 and manifest.encryption is not None
    assert manifest.encryption.key_id == "k1"
    assert manifest.files and all(f.encrypted for f in manifest.files)
    model = registry_state(live)["models"][1]
    for entry in manifest.files:
        stored = Path(store.path(backup_id, entry.path)).read_bytes()
        assert stored.startswith(MAGIC) and entry.sha256 == sha256_hex(stored)
        assert model[:64] not in stored and b"PAR1" not in stored[:64]
    # Without the key: the ciphertext checksums still verify (and still catch damage).
    keyless = BackupStore.from_uri(store.description)
    assert keyless.verify(backup_id).id == backup_id
    assert store.verify(backup_id, require_key=True).id == backup_id

    fresh = encrypted(settings_for(tmp_path / "fresh").model_copy(update={"backup": live.backup}))
    restore_backup(fresh, backup_id)
    assert rows(fresh.dataset_lake / "silver/people") == before_rows
    assert registry_state(fresh) == before_registry
    # The artifacts went back through the artifact store: encrypted again, under their names.
    restored = fresh.resolve(fresh.registry.root) / "m/versions/000001/model.ubj"
    assert restored.read_bytes().startswith(MAGIC)


def test_restore_with_a_wrong_or_missing_key_writes_nothing(
    system: Settings, tmp_path: Path
) -> None:
    backup_id = create_backup(encrypted(system)).id
    fresh = settings_for(tmp_path / "fresh").model_copy(update={"backup": system.backup})

    with pytest.raises(BackupCorrupt) as caught:
        restore_backup(encrypted(fresh, f"k1:{WRONG}"), backup_id)
    assert str(caught.value) == (
        f"backup {backup_id}: manifest.json.seal: the data key does not open with key 'k1': "
        "a wrong key under that id, or a changed header"
    )
    with pytest.raises(BackupCorrupt, match=r"'k1', which is not configured \(configured: k2\)"):
        restore_backup(encrypted(fresh, f"k2:{K2}"), backup_id)
    with pytest.raises(BackupError, match=rf"backup {backup_id} is encrypted .*no encryption key"):
        restore_backup(fresh, backup_id)
    assert not (tmp_path / "fresh").exists()


def test_a_forged_encrypted_backup_is_refused_before_anything_is_written(
    system: Settings, tmp_path: Path
) -> None:
    live = encrypted(system)
    backup_id = create_backup(live).id
    store = open_store(live)
    manifest = store.manifest(backup_id)
    model = next(f for f in manifest.files if f.path.endswith("000002/model.ubj"))
    data_file = next(f for f in manifest.files if f.path.endswith(".parquet"))
    original = Path(store.path(backup_id, model.path)).read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    forge(store, backup_id, model.path, bytes(tampered))

    # The forger fixed the checksums: they verify, the seal does not.
    assert BackupStore.from_uri(store.description).verify(backup_id).id == backup_id
    fresh = encrypted(settings_for(tmp_path / "fresh").model_copy(update={"backup": live.backup}))
    with pytest.raises(
        BackupCorrupt, match=r"manifest\.json is not the manifest its seal was made"
    ):
        restore_backup(fresh, backup_id)
    assert not (tmp_path / "fresh").exists()
    # Each file authenticates on its own too: a changed byte, and a file moved to another path.
    forged = store.manifest(backup_id)
    entry = next(f for f in forged.files if f.path == model.path)
    problem = store.check_file(backup_id, entry, decrypt=True)
    assert problem is not None and problem.startswith(f"{model.path}: cannot decrypt: chunk 0")
    moved = Path(store.path(backup_id, data_file.path)).read_bytes()
    forge(store, backup_id, model.path, moved)
    entry = next(f for f in store.manifest(backup_id).files if f.path == model.path)
    problem = store.check_file(backup_id, entry, decrypt=True)
    assert problem is not None and f"not 'churn-backup:{backup_id}/{model.path}'" in problem


def test_backups_that_must_be_encrypted_refuse_a_plain_one(
    system: Settings, tmp_path: Path
) -> None:
    backup_id = create_backup(system).id
    fresh = settings_for(tmp_path / "fresh").model_copy(update={"backup": system.backup})
    with pytest.raises(BackupError, match=rf"backup {backup_id} is not encrypted, and encryption"):
        restore_backup(encrypted(fresh), backup_id)
    assert not (tmp_path / "fresh").exists()
    # Allowed explicitly (a backup from before encryption): restored, artifacts re-encrypted.
    result = restore_backup(encrypted(fresh), backup_id, allow_unencrypted=True)
    assert result.delta_versions["silver/people"] == 3
    restored = fresh.resolve(fresh.registry.root) / "m/versions/000002/model.ubj"
    assert restored.read_bytes().startswith(MAGIC)
    assert registry_state(encrypted(fresh)) == registry_state(system)


def test_backups_made_before_a_key_rotation_still_restore(system: Settings, tmp_path: Path) -> None:
    old = create_backup(encrypted(system)).id
    rotated = encrypted(system, f"k2:{K2},k1:{K1}", active="k2")
    new = create_backup(rotated).id
    store = open_store(rotated)
    assert [store.manifest(b).encryption.key_id for b in (old, new)] == ["k1", "k2"]  # type: ignore[union-attr]
    fresh = settings_for(tmp_path / "fresh").model_copy(update={"backup": system.backup})
    fresh = encrypted(fresh, f"k2:{K2},k1:{K1}", active="k2")
    restore_backup(fresh, old)
    assert registry_state(fresh) == registry_state(rotated)
    # With k1 retired the old backup is refused, naming the key it needs.
    with pytest.raises(BackupCorrupt, match="'k1', which is not configured"):
        restore_backup(encrypted(fresh, f"k2:{K2}"), old, force=True)
