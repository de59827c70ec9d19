"""Notebooks are executed, top to bottom, against a real pipeline run."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT, PipelineRun

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_runs(name: str, saas_run: PipelineRun, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = saas_run.settings
    monkeypatch.setenv("CHURN_ENV", "test")
    monkeypatch.setenv("CHURN_ROOT", str(REPO_ROOT))
    monkeypatch.setenv("CHURN_LAKE_DIR", str(settings.resolve(settings.lake_dir)))
    monkeypatch.setenv("CHURN_REGISTRY__ROOT", str(settings.resolve(settings.registry.root)))
    notebook = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    ]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "top-decile lift" in printed
    if name.startswith("02_"):
        assert "top features by mean |SHAP|" in printed
