from __future__ import annotations

from pathlib import Path

import pytest

from churn_core.settings import load_settings


def write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write(
        tmp_path / "base.yaml",
        "dataset: saas\nsample: {customers: 100, seed: 1}\ntraining: {num_workers: 2}\n",
    )
    write(tmp_path / "dev.yaml", "sample: {customers: 200}\n")
    return tmp_path


def test_environment_file_overrides_base_and_keeps_the_rest(config_dir: Path) -> None:
    settings = load_settings("dev", config_dir)
    assert settings.env == "dev"
    assert settings.sample.customers == 200
    assert settings.sample.seed == 1


def test_environment_variables_override_yaml(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURN_SAMPLE__CUSTOMERS", "300")
    monkeypatch.setenv("CHURN_TRAINING__NUM_WORKERS", "3")
    settings = load_settings("dev", config_dir)
    assert settings.sample.customers == 300
    assert settings.training.num_workers == 3
    assert settings.sample.seed == 1


def test_unknown_environment_names_the_known_ones(config_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown environment 'prod'.*\['dev'\]"):
        load_settings("prod", config_dir)


def test_invalid_values_are_rejected_with_the_field(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURN_SAMPLE__CUSTOMERS", "0")
    with pytest.raises(ValueError, match="customers"):
        load_settings("dev", config_dir)


def test_unknown_keys_are_rejected(config_dir: Path) -> None:
    write(config_dir / "dev.yaml", "sampel: {customers: 200}\n")
    with pytest.raises(ValueError, match="sampel"):
        load_settings("dev", config_dir)


def test_project_environments_load() -> None:
    for env in ("local", "test", "k8s"):
        settings = load_settings(env)
        assert settings.contract_path.exists()
    assert load_settings("k8s").spark.remote == "sc://spark-connect:15002"
    assert load_settings("local").model_name == "churn-saas"
