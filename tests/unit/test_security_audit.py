"""scripts/security_audit.py: the allow-list rules, pip-audit's report read correctly, and the
secret scan finding a planted key in a real git repository (and forgiving only reviewed ones)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "security_audit", REPO_ROOT / "scripts" / "security_audit.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


TODAY = dt.date(2026, 11, 28)

# The shape of `pip-audit --format json` (pip-audit 2.10).
REPORT = {
    "dependencies": [
        {
            "name": "Jinja2",
            "version": "3.1.2",
            "vulns": [
                {
                    "id": "GHSA-h5c8-rqwp-cp95",
                    "fix_versions": ["3.1.3"],
                    "aliases": ["CVE-2024-22195"],
                    "description": "xss",
                }
            ],
        },
        {
            "name": "requests",
            "version": "2.31.0",
            "vulns": [
                {"id": "PYSEC-2024-1", "fix_versions": [], "aliases": [], "description": "x"}
            ],
        },
        {"name": "numpy", "version": "2.4.6", "vulns": []},
        {"name": "churn-on-ray", "skip_reason": "Dependency not found on PyPI"},
    ],
    "fixes": [],
}


def write_allowlist(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "allow.yaml"
    path.write_text(text)
    return path


def test_the_report_is_read_with_counts(audit: ModuleType) -> None:
    report = audit.parse_pip_audit(REPORT)
    assert (report.audited, report.skipped) == (3, 1)
    assert [(f.package, f.id) for f in report.findings] == [
        ("jinja2", "GHSA-h5c8-rqwp-cp95"),
        ("requests", "PYSEC-2024-1"),
    ]
    assert "fixed in: 3.1.3" in report.findings[0].line()
    assert "no fix released" in report.findings[1].line()


def test_an_allowed_vulnerability_is_accepted_by_id_or_alias(
    audit: ModuleType, tmp_path: Path
) -> None:
    path = write_allowlist(
        tmp_path,
        "vulnerabilities:\n"
        "  - {id: CVE-2024-22195, package: jinja2, reason: templates are ours, review_by: 2027-01-01}\n",
    )
    allowed, expired = audit.load_allowlist(path, TODAY)
    assert expired == []
    left = audit.unaccepted(audit.parse_pip_audit(REPORT).findings, allowed)
    assert [f.package for f in left] == ["requests"]


def test_an_expired_entry_fails_and_no_longer_covers(audit: ModuleType, tmp_path: Path) -> None:
    path = write_allowlist(
        tmp_path,
        "vulnerabilities:\n"
        "  - {id: PYSEC-2024-1, package: requests, reason: not reachable, review_by: 2026-11-01}\n",
    )
    allowed, expired = audit.load_allowlist(path, TODAY)
    assert expired == ["allow-list entry PYSEC-2024-1 (requests) expired on 2026-11-01: review it"]
    assert len(audit.unaccepted(audit.parse_pip_audit(REPORT).findings, allowed)) == 2


def test_an_entry_without_a_reason_is_refused(audit: ModuleType, tmp_path: Path) -> None:
    path = write_allowlist(
        tmp_path, "vulnerabilities:\n  - {id: X-1, package: requests, review_by: 2027-01-01}\n"
    )
    with pytest.raises(audit.AllowlistError, match="missing reason"):
        audit.load_allowlist(path, TODAY)


def test_the_committed_allowlist_is_valid(audit: ModuleType) -> None:
    _, expired = audit.load_allowlist(audit.ALLOWLIST, dt.date.today())
    assert expired == []


def git_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for name, text in files.items():
        (repo / name).write_text(text)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    return repo


AWS_KEY = "AKIA" + "Z7Q3M2KX9PLT4WBN"  # split so this file itself holds no key-shaped literal


def test_a_planted_key_is_found_and_a_reviewed_one_forgiven(
    audit: ModuleType, tmp_path: Path
) -> None:
    repo = git_repo(
        tmp_path,
        {
            "settings.py": f'aws_access_key_id = "{AWS_KEY}"\n',
            "fixture.py": 'password = "hunter2-fixture"\n',
            "clean.py": "x = 1\n",
        },
    )
    found = audit.scan_secrets(repo, audit.tracked_files(repo))
    assert {name for name, *_ in found} == {"settings.py", "fixture.py"}
    baseline = tmp_path / "baseline.json"
    audit.write_baseline(baseline, {f for f in found if f[0] == "fixture.py"})
    leaked = audit.new_secrets(found, audit.baseline_hashes(baseline))
    assert len(leaked) == 1 and leaked[0].startswith("settings.py:1: AWS Access Key")
    # A reviewed fixture moved down the file is still the same reviewed secret.
    (repo / "fixture.py").write_text('\n\nx = 2\npassword = "hunter2-fixture"\n')
    moved = audit.scan_secrets(repo, audit.tracked_files(repo))
    assert [
        line
        for line in audit.new_secrets(moved, audit.baseline_hashes(baseline))
        if "fixture" in line
    ] == []
