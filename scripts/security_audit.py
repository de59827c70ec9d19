"""Security audit of the repository: ``make audit`` (part of ``make test``).

1. Known vulnerabilities (pip-audit) of the image's pinned set (requirements.lock, hashes) and
   of the test virtualenv, minus the reviewed allow-list in security/audit-allowlist.yaml.
2. Secrets committed by mistake (detect-secrets over every tracked file), minus the reviewed
   test fixtures and examples in security/secrets-baseline.json (matched by file and secret
   hash, not line number, so moving a fixture does not break the audit).
3. Static security checks are ruff's flake8-bandit rules (S), run by ``make lint``.

Vulnerability data comes from PyPI's JSON API. Where that service cannot be reached (this
project's build machines reach only PyPI's package index), pip-audit skips every package; the
audit then says so in one line instead of reporting "no known vulnerabilities", and fails only
with --require-vulnerability-data (the GitHub Actions workflow sets it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
ALLOWLIST = REPO_ROOT / "security" / "audit-allowlist.yaml"
SECRETS_BASELINE = REPO_ROOT / "security" / "secrets-baseline.json"


@dataclass(frozen=True)
class Finding:
    """One known vulnerability of one installed or locked package."""

    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]

    def line(self) -> str:
        """One line for the report."""
        fix = ", ".join(self.fix_versions) or "no fix released"
        return f"{self.package} {self.version}: {self.id} (fixed in: {fix})"


@dataclass(frozen=True)
class VulnerabilityReport:
    """What pip-audit found, and how many packages it could not check."""

    findings: list[Finding]
    audited: int
    skipped: int


class AllowlistError(ValueError):
    """An allow-list entry without an id, package, reason or review date."""


def load_allowlist(path: Path, today: dt.date) -> tuple[dict[tuple[str, str], str], list[str]]:
    """(package, id) -> reason for live entries, and one message per expired entry."""
    data = yaml.safe_load(path.read_text()) or {}
    allowed: dict[tuple[str, str], str] = {}
    expired: list[str] = []
    for index, entry in enumerate(data.get("vulnerabilities") or []):
        missing = [k for k in ("id", "package", "reason", "review_by") if not entry.get(k)]
        if missing:
            raise AllowlistError(f"{path.name} entry {index}: missing {', '.join(missing)}")
        review_by = entry["review_by"]
        if not isinstance(review_by, dt.date):
            review_by = dt.date.fromisoformat(str(review_by))
        key = (str(entry["package"]).lower(), str(entry["id"]))
        if review_by < today:
            expired.append(
                f"allow-list entry {key[1]} ({key[0]}) expired on {review_by}: review it"
            )
        else:
            allowed[key] = str(entry["reason"])
    return allowed, expired


def parse_pip_audit(report: dict[str, Any]) -> VulnerabilityReport:
    """pip-audit's JSON output as findings and counts."""
    findings = []
    audited = skipped = 0
    for dependency in report.get("dependencies", []):
        if dependency.get("skip_reason"):
            skipped += 1
            continue
        audited += 1
        for vuln in dependency.get("vulns", []):
            findings.append(
                Finding(
                    package=dependency["name"].lower(),
                    version=dependency["version"],
                    id=vuln["id"],
                    aliases=tuple(vuln.get("aliases", [])),
                    fix_versions=tuple(vuln.get("fix_versions", [])),
                )
            )
    return VulnerabilityReport(findings, audited, skipped)


def unaccepted(findings: list[Finding], allowed: dict[tuple[str, str], str]) -> list[Finding]:
    """Findings not covered by a live allow-list entry (by id or any alias)."""
    return [f for f in findings if not any((f.package, i) in allowed for i in (f.id, *f.aliases))]


def run_pip_audit(arguments: list[str]) -> VulnerabilityReport:
    """Run pip-audit with ``arguments`` and parse its JSON report."""
    command = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"]
    result = subprocess.run(
        [*command, *arguments], capture_output=True, text=True, check=False, timeout=600
    )
    # Exit 1 means "vulnerabilities found"; anything else without JSON is a failure to run.
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"pip-audit failed: {result.stderr.strip()[-500:]}") from None
    return parse_pip_audit(report)


def tracked_files(root: Path) -> list[str]:
    """Files git tracks under ``root`` (what a commit would publish)."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.decode()
    return [name for name in out.split("\0") if name and (root / name).is_file()]


def scan_secrets(root: Path, files: list[str]) -> set[tuple[str, str, str, int]]:
    """(file, type, secret hash, line) of every potential secret in ``files``."""
    import os

    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    secrets = SecretsCollection(root=str(root))
    previous = Path.cwd()
    os.chdir(root)  # detect-secrets reports paths relative to the working directory
    try:
        with default_settings():
            secrets.scan_files(*files, num_processors=1)
    finally:
        os.chdir(previous)
    return {(name, s.type, s.secret_hash, s.line_number or 0) for name, s in secrets}


def baseline_hashes(path: Path) -> set[tuple[str, str]]:
    """(file, secret hash) pairs reviewed as not secret."""
    if not path.exists():
        return set()
    data = json.loads(path.read_text())
    return {
        (name, item["hashed_secret"])
        for name, items in data.get("results", {}).items()
        for item in items
        if item.get("is_secret") is False
    }


def new_secrets(found: set[tuple[str, str, str, int]], reviewed: set[tuple[str, str]]) -> list[str]:
    """One line per potential secret that is not in the reviewed baseline."""
    return sorted(
        f"{name}:{line}: {kind}"
        for name, kind, digest, line in found
        if (name, digest) not in reviewed
    )


def write_baseline(path: Path, found: set[tuple[str, str, str, int]]) -> None:
    """Record every current finding as reviewed (run after looking at each one)."""
    results: dict[str, list[dict[str, Any]]] = {}
    for name, kind, digest, line in sorted(found):
        results.setdefault(name, []).append(
            {"type": kind, "hashed_secret": digest, "line_number": line, "is_secret": False}
        )
    path.write_text(
        json.dumps({"version": "detect-secrets 1.5.0", "results": results}, indent=2) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Run every audit; print one line per problem; exit 1 if any."""
    parser = argparse.ArgumentParser(prog="scripts/security_audit.py", description=__doc__)
    parser.add_argument("--require-vulnerability-data", action="store_true")
    parser.add_argument("--update-secrets-baseline", action="store_true")
    args = parser.parse_args(argv)
    problems: list[str] = []

    allowed, expired = load_allowlist(ALLOWLIST, dt.date.today())
    problems += expired
    venv_site = (
        Path(sys.prefix)
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
    )
    for label, arguments in (
        (
            "image (requirements.lock)",
            ["-r", str(REPO_ROOT / "requirements.lock"), "--require-hashes", "--disable-pip"],
        ),
        ("test virtualenv", ["--path", str(venv_site)]),
    ):
        report = run_pip_audit(arguments)
        open_findings = unaccepted(report.findings, allowed)
        problems += [f"vulnerability in the {label}: {f.line()}" for f in open_findings]
        if report.audited == 0:
            message = (
                f"vulnerabilities of the {label}: NOT CHECKED, no vulnerability data reachable "
                f"({report.skipped} packages skipped by pip-audit)"
            )
            if args.require_vulnerability_data:
                problems.append(message)
            else:
                print(f"audit: {message}")
        else:
            print(
                f"audit: {label}: {report.audited} packages checked, {report.skipped} skipped, "
                f"{len(report.findings)} known vulnerabilities, {len(open_findings)} not allowed"
            )

    # The baseline holds hashes of the reviewed fixtures: hex strings the scanner would flag.
    baseline = str(SECRETS_BASELINE.relative_to(REPO_ROOT))
    found = scan_secrets(REPO_ROOT, [f for f in tracked_files(REPO_ROOT) if f != baseline])
    if args.update_secrets_baseline:
        write_baseline(SECRETS_BASELINE, found)
        print(f"audit: {len(found)} findings recorded in {SECRETS_BASELINE.relative_to(REPO_ROOT)}")
    leaked = new_secrets(found, baseline_hashes(SECRETS_BASELINE))
    problems += [f"possible secret committed: {line}" for line in leaked]
    print(f"audit: secrets: {len(found)} findings in tracked files, {len(leaked)} not reviewed")

    for problem in problems:
        print(f"audit: FAIL {problem}", file=sys.stderr)
    print(f"audit: {'FAILED' if problems else 'passed'} ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
