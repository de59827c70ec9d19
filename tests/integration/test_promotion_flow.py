"""Promotion with real trained models: a worse model is refused by name, a better one promoted,
rollback restores the previous champion (through the `churn models` commands people use)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from churn_core.registry import LocalRegistry
from churn_core.tables import Tables
from tests.conftest import REPO_ROOT, PipelineRun
from training.pipeline import train_and_register

pytestmark = pytest.mark.integration


def models(registry_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    churn = Path(sys.executable).with_name("churn")
    env = {**os.environ, "CHURN_REGISTRY__ROOT": str(registry_root)}
    return subprocess.run(
        [str(churn), "--env", "test", "models", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO_ROOT,
    )


def test_a_worse_model_is_refused_a_better_one_promoted_and_rollback_restores(
    saas_run: PipelineRun, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    shutil.copytree(saas_run.settings.resolve(saas_run.settings.registry.root), root)
    settings = saas_run.settings.model_copy(
        update={
            "registry": saas_run.settings.registry.model_copy(update={"root": root}),
            # A deliberately weak model: two stumps.
            "training": saas_run.settings.training.model_copy(
                update={"num_boost_round": 2, "params": {"max_depth": 1, "eta": 0.3}}
            ),
        }
    )
    registry = LocalRegistry(root)
    name = settings.model_name
    good = registry.resolve(name, "champion")

    weak = train_and_register(settings, saas_run.contract, Tables(settings.dataset_lake), registry)
    assert weak.version.metrics["roc_auc"] < good.metrics["roc_auc"]
    assert "champion" not in weak.aliases  # training itself never crowns a worse model
    assert registry.aliases(name)["champion"] == good.version

    refused = models(root, "promote", str(weak.version.version))
    assert refused.returncode == 1
    assert "PromotionRefused" in refused.stderr and "beats_champion(roc_auc)" in refused.stderr
    assert registry.aliases(name)["champion"] == good.version

    # Forced in anyway (an operator's decision, recorded with its reason) ...
    forced = models(root, "promote", str(weak.version.version), "--force", "--reason", "drill")
    assert forced.returncode == 0, forced.stderr
    assert registry.aliases(name)["champion"] == weak.version.version
    # ... the better model now passes every gate against it and is promoted ...
    better = models(root, "promote", str(good.version), "--reason", "better")
    assert better.returncode == 0, better.stderr
    assert registry.aliases(name)["champion"] == good.version
    # ... and rollbacks walk the history back: first to the weak one, then to the original.
    assert models(root, "rollback", "--reason", "drill").returncode == 0
    assert registry.aliases(name)["champion"] == weak.version.version
    assert models(root, "rollback", "--reason", "drill").returncode == 0
    assert registry.aliases(name)["champion"] == good.version
    history = models(root, "history")
    assert history.returncode == 0 and "drill" in history.stdout
