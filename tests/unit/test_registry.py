"""The registry on its embedded default (JSON metadata files, artifacts on a pyarrow file system)."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from pydantic import SecretStr

from churn_core.contract import FeatureContract
from churn_core.encryption import MAGIC
from churn_core.registry import (
    ArtifactStore,
    FileMetadataStore,
    LocalRegistry,
    ModelVersion,
    Registry,
    RegistryError,
    open_registry,
)
from churn_core.settings import EncryptionSettings, RegistrySettings

SEGMENTS = {
    "plan=basic": {"n": 600.0, "positives": 150.0, "roc_auc": 0.71},
    "tenure_band=[0.5, 1)": {"n": 12.0, "positives": 1.0, "roc_auc": None},
}


def register(
    registry: Registry, model: bytes, contract: FeatureContract, auc: float, **extra: object
) -> int:
    meta = registry.register(
        "m",
        model,
        contract,
        params={"max_depth": 3},
        metrics={"roc_auc": auc},
        lineage={"gold_delta_version": 4},
        feature_importance={"usage": 1.0},
        **extra,  # type: ignore[arg-type]
    )
    return meta.version


def test_versions_are_numbered_and_loadable_by_alias(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    assert register(registry, tiny_model_bytes, tiny_contract, 0.7) == 1
    assert register(registry, tiny_model_bytes, tiny_contract, 0.8) == 2
    registry.set_alias("m", "champion", 2)
    model = registry.load_model("m", "champion")
    assert model.version == 2
    assert model.contract == tiny_contract
    assert registry.resolve("m", 1).metrics == {"roc_auc": 0.7}
    assert registry.resolve("m", "v1") == registry.resolve("m", "1") == registry.get("m", 1)
    assert [v.version for v in registry.list("m")] == [1, 2]
    assert registry.model_names() == ["m"]
    assert registry.aliases("m") == {"champion": 2}


def test_unknown_alias_and_version_explain_themselves(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    with pytest.raises(RegistryError, match=r"no alias 'champion'.*churn train"):
        registry.load_model("m", "champion")
    register(registry, tiny_model_bytes, tiny_contract, 0.7)
    with pytest.raises(RegistryError, match="no version 9"):
        registry.set_alias("m", "champion", 9)
    with pytest.raises(RegistryError, match="invalid alias '7'"):
        registry.set_alias("m", "7", 1)  # would be read back as a version number
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.register(
            "../escape",
            tiny_model_bytes,
            tiny_contract,
            params={},
            metrics={},
            lineage={},
            feature_importance={},
        )


def test_every_file_is_checksummed_and_report_files_are_stored(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    plot = tmp_path / "roc.png"
    plot.write_bytes(b"\x89PNG fake")
    meta = registry.get(
        "m",
        register(
            registry,
            tiny_model_bytes,
            tiny_contract,
            0.7,
            segments=SEGMENTS,
            files={"report.json": b'{"roc_auc": 0.7}', "plots/roc.png": plot},
        ),
    )
    assert {f.name for f in meta.files} == {
        "model.ubj",
        "contract.yaml",
        "report.json",
        "plots/roc.png",
    }
    assert meta.file("model.ubj").sha256 == hashlib.sha256(tiny_model_bytes).hexdigest()  # type: ignore[union-attr]
    assert meta.artifact_sha256 == meta.file("model.ubj").sha256  # type: ignore[union-attr]
    assert meta.segments == SEGMENTS
    assert meta.registered_by
    assert registry.read_file("m", 1, "plots/roc.png") == b"\x89PNG fake"
    assert registry.read_file("m", 1, "report.json") == b'{"roc_auc": 0.7}'
    assert registry.load_contract("m", 1) == tiny_contract
    # The layout the earlier registry wrote: artifacts and metadata in one folder per version.
    assert (tmp_path / "m/versions/000001/model.ubj").read_bytes() == tiny_model_bytes
    assert (tmp_path / "m/versions/000001/metadata.json").exists()
    with pytest.raises(RegistryError, match=r"no file 'missing.txt'"):
        registry.read_file("m", 1, "missing.txt")


@pytest.mark.parametrize("name", ["model.ubj", ".hidden", "a/../b", "/abs", "sp ace.txt", ""])
def test_report_file_names_are_checked(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract, name: str
) -> None:
    registry = LocalRegistry(tmp_path)
    with pytest.raises(RegistryError, match="invalid report file name"):
        register(registry, tiny_model_bytes, tiny_contract, 0.7, files={name: b"x"})
    assert registry.version_numbers("m") == []


@pytest.mark.parametrize("filename", ["model.ubj", "contract.yaml", "report.json"])
def test_tampered_artifact_is_refused(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract, filename: str
) -> None:
    registry = LocalRegistry(tmp_path)
    register(registry, tiny_model_bytes, tiny_contract, 0.7, files={"report.json": b"{}"})
    path = tmp_path / "m/versions/000001" / filename
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RegistryError, match=rf"{filename}: checksum mismatch"):
        if filename == "report.json":
            registry.read_file("m", 1, filename)
        else:
            registry.load_model("m", 1)


def test_a_missing_artifact_is_named(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    register(registry, tiny_model_bytes, tiny_contract, 0.7)
    (tmp_path / "m/versions/000001/model.ubj").unlink()
    with pytest.raises(RegistryError, match=r"000001/model.ubj is missing"):
        registry.load_model("m", 1)


def test_invalid_metadata_fails_before_a_number_is_taken(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    with pytest.raises(ValueError, match="roc_auc"):
        registry.register(
            "m",
            tiny_model_bytes,
            tiny_contract,
            params={},
            metrics={"roc_auc": object()},  # type: ignore[dict-item]
            lineage={},
            feature_importance={},
        )
    with pytest.raises(FileNotFoundError):
        register(registry, tiny_model_bytes, tiny_contract, 0.7, files={"x.png": tmp_path / "no"})
    assert registry.version_numbers("m") == []
    assert not (tmp_path / "m" / "versions").exists()
    assert register(registry, tiny_model_bytes, tiny_contract, 0.7) == 1


def test_a_write_failing_midway_leaves_no_half_version(
    tmp_path: Path,
    tiny_model_bytes: bytes,
    tiny_contract: FeatureContract,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = LocalRegistry(tmp_path)
    real_move = registry.artifacts.filesystem.move
    moves: list[str] = []

    def failing_move(src: str, dest: str) -> None:
        moves.append(dest)
        if len(moves) == 3:  # model and contract are in place, the report is not
            raise OSError("disk full")
        real_move(src, dest)

    monkeypatch.setattr(registry.artifacts, "filesystem", _Proxy(registry.artifacts.filesystem))
    monkeypatch.setattr(registry.artifacts.filesystem, "move", failing_move)
    with pytest.raises(OSError, match="disk full"):
        register(registry, tiny_model_bytes, tiny_contract, 0.7, files={"report.json": b"{}"})
    assert registry.version_numbers("m") == []
    # No version folder, no temporary files: the claim and the written files were removed.
    assert list((tmp_path / "m" / "versions").iterdir()) == []
    monkeypatch.undo()
    assert register(registry, tiny_model_bytes, tiny_contract, 0.7) == 1


class _Proxy:
    """A stand-in file system whose methods can be replaced one by one."""

    def __init__(self, target: pafs.FileSystem) -> None:
        self._target = target

    def __getattr__(self, name: str) -> object:
        return getattr(self._target, name)


def test_a_failed_metadata_commit_removes_the_artifacts(
    tmp_path: Path,
    tiny_model_bytes: bytes,
    tiny_contract: FeatureContract,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = LocalRegistry(tmp_path)

    def failing_insert(meta: ModelVersion) -> None:
        raise OSError("metadata disk full")

    monkeypatch.setattr(registry.metadata, "insert_version", failing_insert)
    with pytest.raises(OSError, match="metadata disk full"):
        register(registry, tiny_model_bytes, tiny_contract, 0.7)
    assert not any((tmp_path / "m" / "versions").iterdir())


def test_an_existing_artifact_is_never_overwritten(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    # Two registries with separate metadata but one artifact folder: the second must not
    # overwrite version 1's files.
    artifacts = tmp_path / "artifacts"
    first = Registry(FileMetadataStore(tmp_path / "a"), ArtifactStore.from_uri(str(artifacts)))
    second = Registry(FileMetadataStore(tmp_path / "b"), ArtifactStore.from_uri(str(artifacts)))
    register(first, tiny_model_bytes, tiny_contract, 0.7)
    with pytest.raises(RegistryError, match="already exists"):
        register(second, b"other bytes", tiny_contract, 0.7)
    assert first.load_model("m", 1).version == 1
    assert second.version_numbers("m") == []


def test_concurrent_registrations_get_distinct_versions(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registries = [LocalRegistry(tmp_path) for _ in range(4)]
    numbers: list[int] = []
    errors: list[BaseException] = []

    def work(registry: LocalRegistry) -> None:
        try:
            numbers.extend(
                register(registry, tiny_model_bytes, tiny_contract, 0.7) for _ in range(5)
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 21))
    assert registries[0].version_numbers("m") == list(range(1, 21))


def test_reads_the_layout_written_by_the_earlier_registry(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    # metadata.json without files/segments, aliases.json as a flat map.
    folder = tmp_path / "m/versions/000001"
    folder.mkdir(parents=True)
    (folder / "model.ubj").write_bytes(tiny_model_bytes)
    (folder / "contract.yaml").write_text(tiny_contract.to_yaml())
    (folder / "metadata.json").write_text(
        json.dumps(
            {
                "name": "m",
                "version": 1,
                "created_at": "2026-01-01T00:00:00Z",
                "artifact_sha256": hashlib.sha256(tiny_model_bytes).hexdigest(),
                "metrics": {"roc_auc": 0.7},
            }
        )
    )
    (tmp_path / "m/aliases.json").write_text(json.dumps({"champion": 1}))
    registry = LocalRegistry(tmp_path)
    assert registry.aliases("m") == {"champion": 1}
    assert registry.load_model("m", "champion").version == 1
    assert register(registry, tiny_model_bytes, tiny_contract, 0.8) == 2
    registry.set_alias("m", "champion", 2, reason="retrained")
    assert registry.aliases("m") == {"champion": 2}
    assert registry.rollback("m", reason="bad").to_version == 1  # history starts at the map
    (tmp_path / "m/versions/000001/model.ubj").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        registry.load_model("m", 1)


def test_nan_metrics_survive_the_json_store(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    registry.register(
        "m",
        tiny_model_bytes,
        tiny_contract,
        params={},
        metrics={"roc_auc": 0.7, "pr_auc": float("nan")},
        lineage={},
        feature_importance={},
    )
    assert registry.get("m", 1).metrics["pr_auc"] != registry.get("m", 1).metrics["pr_auc"]


def test_metric_history_appends_later_measurements(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    registry = LocalRegistry(tmp_path)
    register(registry, tiny_model_bytes, tiny_contract, 0.7)
    register(registry, tiny_model_bytes, tiny_contract, 0.8)
    registry.record_metrics("m", 1, {"roc_auc": 0.68}, source="accuracy", details={"rows": 900})
    registry.record_metrics("m", 1, {"roc_auc": 0.66}, source="accuracy")
    history = registry.metric_history("m", 1)
    assert [(r.source, r.metrics["roc_auc"]) for r in history] == [
        ("registration", 0.7),
        ("accuracy", 0.68),
        ("accuracy", 0.66),
    ]
    assert history[1].details == {"rows": 900}
    assert [r.version for r in registry.metric_history("m")] == [1, 1, 1, 2]
    with pytest.raises(RegistryError, match="no version 5"):
        registry.record_metrics("m", 5, {"roc_auc": 0.5}, source="accuracy")
    # A torn last line (a crash mid-append) is skipped, not fatal.
    with (tmp_path / "m/metric_history.jsonl").open("a") as handle:
        handle.write('{"name": "m", "vers')
    assert len(registry.metric_history("m", 1)) == 3


@pytest.mark.parametrize("scheme", ["path", "file_uri"])
def test_artifacts_at_a_pyarrow_uri(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract, scheme: str
) -> None:
    artifacts = tmp_path / "objects"
    uri = str(artifacts) if scheme == "path" else f"file://{artifacts}"
    settings = RegistrySettings(root=tmp_path / "meta", artifact_uri=uri)
    with open_registry(settings) as registry:
        register(registry, tiny_model_bytes, tiny_contract, 0.7, files={"report.json": b"{}"})
        registry.set_alias("m", "champion", 1)
        assert registry.load_model("m", "champion").version == 1
        assert "files:" in registry.description and str(artifacts) in registry.description
    assert (artifacts / "m/versions/000001/model.ubj").read_bytes() == tiny_model_bytes
    assert (tmp_path / "meta/m/versions/000001/metadata.json").exists()
    assert not (tmp_path / "meta/m/versions/000001/model.ubj").exists()
    (artifacts / "m/versions/000001/model.ubj").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        open_registry(settings).load_model("m", 1)


def test_artifacts_on_a_non_local_file_system(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    # pyarrow's in-memory file system stands in for an object store (no rename, no fsync).
    registry = Registry(
        FileMetadataStore(tmp_path), ArtifactStore.from_uri("mock:///bucket/registry")
    )
    register(registry, tiny_model_bytes, tiny_contract, 0.7, files={"report.json": b"{}"})
    assert registry.load_model("m", 1).version == 1
    listing = registry.artifacts.filesystem.get_file_info(
        pafs.FileSelector("bucket/registry", recursive=True)
    )
    assert sorted(i.path for i in listing if i.type == pafs.FileType.File) == [
        "bucket/registry/m/versions/000001/contract.yaml",
        "bucket/registry/m/versions/000001/model.ubj",
        "bucket/registry/m/versions/000001/report.json",
    ]


def test_relative_artifact_paths_resolve_against_the_project_root(tmp_path: Path) -> None:
    settings = RegistrySettings(root=Path("reg"), artifact_uri="objects")
    registry = open_registry(settings, lambda p: p if p.is_absolute() else tmp_path / p)
    assert registry.artifacts.description == str(tmp_path / "objects")
    assert registry.metadata.description == f"files:{tmp_path / 'reg'}"
    assert registry.policy_path == tmp_path / "configs/promotion.yaml"


def test_uri_credentials_never_reach_messages() -> None:
    store = ArtifactStore.from_uri("mock:///bucket/p?secret_key=hunter2")
    assert "hunter2" not in store.description
    with pytest.raises(RegistryError) as caught:
        ArtifactStore.from_uri("nosuchscheme://user:hunter2@host/p")
    assert "hunter2" not in str(caught.value)


def test_mongodb_settings_need_a_url() -> None:
    with pytest.raises(ValueError, match="mongodb_url is not set"):
        RegistrySettings(metadata="mongodb")
    settings = RegistrySettings(metadata="mongodb", mongodb_url="mongodb://u:pw@127.0.0.1:1/")
    assert "pw" not in repr(settings)


# --- encryption at rest ---------------------------------------------------------------------

_K1 = base64.b64encode(bytes(range(32))).decode()
_K2 = base64.b64encode(bytes(range(50, 82))).decode()
_WRONG = base64.b64encode(bytes(range(150, 182))).decode()


def encryption(keys: str, active: str | None = None, on: bool = True) -> EncryptionSettings:
    return EncryptionSettings(keys=SecretStr(keys), active_key_id=active, backups=on, registry=on)


def test_encrypted_artifacts_load_and_keep_their_plaintext_checksums(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    settings = RegistrySettings(root=tmp_path)
    with open_registry(settings, encryption=encryption(f"k1:{_K1}")) as registry:
        register(registry, tiny_model_bytes, tiny_contract, 0.7, files={"report.json": b"{}"})
        registry.set_alias("m", "champion", 1)
        meta = registry.get("m", 1)
        assert registry.load_model("m", "champion").version == 1
        assert registry.read_file("m", 1, "report.json") == b"{}"
    folder = tmp_path / "m/versions/000001"
    for name in ("model.ubj", "contract.yaml", "report.json"):
        assert (folder / name).read_bytes().startswith(MAGIC)
    assert tiny_model_bytes[:64] not in (folder / "model.ubj").read_bytes()
    # The recorded checksum is the registered content's, whatever it is stored as.
    plain = hashlib.sha256(tiny_model_bytes).hexdigest()
    assert meta.artifact_sha256 == plain and meta.file("model.ubj").sha256 == plain  # type: ignore[union-attr]
    assert meta.file("model.ubj").size == len(tiny_model_bytes)  # type: ignore[union-attr]


def test_encrypted_artifacts_refuse_a_wrong_key_a_changed_byte_and_a_swap(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    settings = RegistrySettings(root=tmp_path)
    with open_registry(settings, encryption=encryption(f"k1:{_K1}")) as registry:
        register(registry, tiny_model_bytes, tiny_contract, 0.7)
        register(registry, tiny_model_bytes, tiny_contract, 0.8)
    wrong = open_registry(settings, encryption=encryption(f"k1:{_WRONG}"))
    with pytest.raises(RegistryError) as caught:
        wrong.load_model("m", 1)
    assert str(caught.value) == (
        f"artifact {tmp_path}/m/versions/000001/model.ubj: cannot decrypt: the data key does "
        "not open with key 'k1': a wrong key under that id, or a changed header"
    )
    with pytest.raises(RegistryError, match="no encryption key is configured"):
        open_registry(settings).load_model("m", 1)

    first, second = (tmp_path / f"m/versions/00000{n}/model.ubj" for n in (1, 2))
    one, two = first.read_bytes(), second.read_bytes()
    # The same model under the same key: only the name binding tells the two files apart.
    first.write_bytes(two)
    second.write_bytes(one)
    registry = open_registry(settings, encryption=encryption(f"k1:{_K1}"))
    with pytest.raises(RegistryError, match=r"000001/model\.ubj: cannot decrypt: chunk 0"):
        registry.load_model("m", 1)
    first.write_bytes(one)
    second.write_bytes(two[:-1] + bytes([two[-1] ^ 1]))
    with pytest.raises(RegistryError, match=r"000002/model\.ubj: cannot decrypt"):
        registry.load_model("m", 2)
    assert registry.load_model("m", 1).version == 1


def test_versions_from_before_encryption_and_before_a_rotation_stay_readable(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    settings = RegistrySettings(root=tmp_path)
    with open_registry(settings) as registry:
        register(registry, tiny_model_bytes, tiny_contract, 0.7)  # plaintext
    with open_registry(settings, encryption=encryption(f"k1:{_K1}")) as registry:
        register(registry, tiny_model_bytes, tiny_contract, 0.7)  # under k1
    rotated = encryption(f"k2:{_K2},k1:{_K1}", active="k2")
    with open_registry(settings, encryption=rotated) as registry:
        register(registry, tiny_model_bytes, tiny_contract, 0.7)  # under k2
        assert [registry.load_model("m", v).version for v in (1, 2, 3)] == [1, 2, 3]
    stored = [(tmp_path / f"m/versions/00000{v}/model.ubj").read_bytes() for v in (1, 2, 3)]
    assert stored[0] == tiny_model_bytes
    assert open_registry(settings).artifacts.file_key("m/versions/000001", "model.ubj") is None
    assert b"\x02k1" in stored[1][:30] and b"\x02k2" in stored[2][:30]
    # Switched off again: new versions are plaintext, encrypted ones still read with the keys.
    with open_registry(settings, encryption=encryption(f"k2:{_K2},k1:{_K1}", "k2", on=False)) as r:
        register(r, tiny_model_bytes, tiny_contract, 0.7)
        assert (tmp_path / "m/versions/000004/model.ubj").read_bytes() == tiny_model_bytes
        assert r.load_model("m", 2).version == 2
    retired = open_registry(settings, encryption=encryption(f"k2:{_K2}"))
    with pytest.raises(RegistryError, match="'k1', which is not configured"):
        retired.load_model("m", 2)


def test_a_pickled_artifact_store_carries_no_keys(
    tmp_path: Path, tiny_model_bytes: bytes, tiny_contract: FeatureContract
) -> None:
    with open_registry(
        RegistrySettings(root=tmp_path), encryption=encryption(f"k1:{_K1}")
    ) as registry:
        register(registry, tiny_model_bytes, tiny_contract, 0.7)
        meta = registry.get("m", 1)
        file_key = registry.artifacts.file_key(meta.artifact_dir, "model.ubj")
        with pytest.raises(RegistryError, match=r"000001/missing is missing"):
            registry.artifacts.file_key(meta.artifact_dir, "missing")
        shipped = pickle.dumps(registry.artifacts)
    assert bytes(range(32)) not in shipped
    worker = pickle.loads(shipped)
    with pytest.raises(RegistryError, match="no encryption key is configured"):
        worker.read(meta.artifact_dir, "model.ubj", meta.artifact_sha256)
    data = worker.read(meta.artifact_dir, "model.ubj", meta.artifact_sha256, file_key=file_key)
    assert data == tiny_model_bytes
    with pytest.raises(RegistryError, match="header changed"):
        worker.read(meta.artifact_dir, "contract.yaml", None, file_key=file_key)
