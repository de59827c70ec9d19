"""The web dashboard end to end: real scores, drift runs and model served by Ray Serve behind
HAProxy, driven in real headless Chromium (Debian's, through playwright-core).

The session pipeline's champion scores the latest gold snapshot into this module's own lake
(``churn score``, which also fills the prediction log), the drift job runs three times over
those scores, and the Serve app is deployed on that lake with a copy of the registry. A
paced client keeps calling ``/v1/predict`` meanwhile, so the live page has traffic to show.
``dashboard/e2e/run.mjs`` then signs in, checks every page shows this data (rows, SVG marks),
runs axe-core at 1280 and 390 px and saves a screenshot of each page under
``var/artifacts/screenshots``; it prints one JSON document, asserted here against the data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from churn_core.prediction_log import query_delta
from churn_core.settings import Settings
from churn_core.tables import Tables
from tests.conftest import REPO_ROOT, PipelineRun
from tests.integration.test_serving import fetch_token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

DASHBOARD = REPO_ROOT / "dashboard"
SCREENSHOTS = REPO_ROOT / "var" / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
DRIFT_RUNS = 3
# configs/auth/test.yaml: a person with the viewer role (the dashboard asks for viewer only),
# whose test password follows that file's convention.
USER = "analyst"
PAGES = ("login", "customers", "customer", "model", "importance", "drift", "live")
CHART_LIMIT = 20  # bars a chart draws at most (dashboard/src/charts/geometry.ts)


@dataclass(frozen=True)
class Dashboard:
    url: str
    settings: Settings
    tables: Tables
    customers: int  # customers in the scored slice
    drifted: list[list[str]]  # drifted features of each drift run, oldest first
    versions: int


def require_tools() -> None:
    """The browser, Node and the built app; missing ones fail with what to run (not a skip)."""
    problems = []
    if not CHROMIUM.exists():
        problems.append(
            f"{CHROMIUM} missing: run `make services` as root (apt-get install chromium)"
        )
    if shutil.which("node") is None:
        problems.append("node is not on PATH")
    if not (DASHBOARD / "dist" / "index.html").exists():
        problems.append("dashboard/dist is not built: run `make dashboard`")
    if not (DASHBOARD / "node_modules" / "playwright-core").exists():
        problems.append("dashboard/node_modules is missing: run `make dashboard`")
    if problems:
        pytest.fail("; ".join(problems))


def keep_predicting(
    url: str, headers: dict[str, str], bodies: list[Any], stop: threading.Event
) -> None:
    """About 20 requests a second (bounded: at most 3,000), features repeating so the cache hits."""
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for turn in range(3_000):
            if stop.wait(0.05):
                return
            try:
                client.post("/v1/predict", json=bodies[turn % len(bodies)])
            except httpx.TransportError:
                continue


def gold_bodies(run: PipelineRun, count: int) -> list[dict[str, Any]]:
    """Request bodies of a few customers of the latest gold snapshot (features given inline)."""
    names = ", ".join(f'"{n}"' for n in run.contract.feature_names)
    rows = query_delta(
        {"g": run.tables.gold_features},
        f"SELECT {names} FROM g ORDER BY snapshot_date DESC, customer_id LIMIT {count}",
    ).to_pylist()
    # NaN is not JSON; a missing value is null in a request.
    return [
        {"features": {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}}
        for row in rows
    ]


@pytest.fixture(scope="module")
def dashboard(
    saas_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    from ray import serve

    from churn.score_cli import Engine, run_score
    from churn_core.registry import LocalRegistry
    from monitoring.drift_job import run_drift
    from serve_apps.launcher import deploy

    require_tools()
    base = tmp_path_factory.mktemp("dashboard")
    original = saas_run.settings
    shutil.copytree(original.resolve(original.registry.root), base / "registry")
    tables = Tables(base / "lake" / original.dataset)
    shutil.copytree(saas_run.tables.gold_features, tables.gold_features)
    settings = original.model_copy(
        update={
            "lake_dir": base / "lake",
            "registry": original.registry.model_copy(update={"root": base / "registry"}),
            "serve": original.serve.model_copy(
                update={
                    "reload_interval_s": 0,
                    "auth": original.serve.auth.model_copy(update={"keys_dir": base / "keys"}),
                }
            ),
            "monitoring": original.monitoring.model_copy(
                update={
                    "metrics_dir": base / "metrics",
                    "prediction_log": original.monitoring.prediction_log.model_copy(
                        update={"spool_dir": base / "spool"}
                    ),
                    "alerts": original.monitoring.alerts.model_copy(
                        update={"state_path": base / "alert_state.json"}
                    ),
                }
            ),
        }
    )
    # Real scores (and prediction-log rows) from the champion for the two latest snapshots
    # (each customer gets a score history), then drift runs over them.
    assert saas_run.contract.snapshot is not None
    previous = sorted(saas_run.contract.snapshot.dates)[-2]
    run_score(settings, snapshot=previous, engine=Engine.spark, postgres=False)
    scored = run_score(settings, engine=Engine.spark, postgres=False)
    registry = LocalRegistry(base / "registry")
    drifted = [run_drift(settings, registry, tables).drifted for _ in range(DRIFT_RUNS)]
    url = deploy(
        settings,
        environment={
            "CHURN_SERVE__AUTH__KEYS_DIR": str(base / "keys"),
            "CHURN_SERVE__RELOAD_INTERVAL_S": "0",
            "CHURN_SERVE__UI_DIR": str(DASHBOARD / "dist"),
        },
    )
    stop = threading.Event()
    traffic = threading.Thread(
        target=keep_predicting,
        args=(url, fetch_token(url, "predictor-client"), gold_bodies(saas_run, 5), stop),
        daemon=True,
    )
    traffic.start()
    try:
        yield Dashboard(
            url=url,
            settings=settings,
            tables=tables,
            customers=scored.plan.rows,
            drifted=drifted,
            versions=len(registry.list(settings.model_name)),
        )
    finally:
        stop.set()
        traffic.join(timeout=30)
        serve.shutdown()


def number(text: str) -> float:
    """The figure of a stat card's text ("Request rate\\n\\n12.5 req/s" -> 12.5)."""
    value = text.split("\n")[-1].split()[0].rstrip("%").replace(",", "")
    return float(value)


def test_the_dashboard_shows_real_data_in_chromium(dashboard: Dashboard) -> None:
    # The build is served under /ui by the same app, with the page's security headers.
    page = httpx.get(f"{dashboard.url}/ui/customers/anyone", timeout=30)
    assert page.status_code == 200 and '<div id="root">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{dashboard.url}/readyz", timeout=30).json()["checks"]["dashboard"] == "ok"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    done = subprocess.run(
        [
            "node",
            "e2e/run.mjs",
            "--base-url",
            dashboard.url,
            "--user",
            USER,
            "--password",
            f"{USER}-password",
            "--out",
            str(SCREENSHOTS),
            "--chromium",
            str(CHROMIUM),
        ],
        cwd=DASHBOARD,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output (exit {done.returncode}): {done.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert done.returncode == 0 and report["ok"], json.dumps(report["failures"], indent=1)

    pages = report["pages"]
    # Customers at risk: the first page of the latest slice, highest risk first, sorted and
    # filtered by the server.
    assert pages["customers"]["rows"] == min(25, dashboard.customers)
    assert pages["customers"]["sortedDesc"] and pages["customers"]["filteredRows"] >= 1
    assert number(pages["customers"]["customers"]) == dashboard.customers
    features = len(saas_features(dashboard))
    # One customer: every feature's SHAP push, and its score history.
    assert pages["customer"]["contributionBars"] == min(CHART_LIMIT, features)
    customer = pages["customer"]["id"]
    slices = query_delta(
        {"s": dashboard.tables.scores}, f"SELECT * FROM s WHERE customer_id = '{customer}'"
    ).num_rows
    assert pages["customer"]["historyPoints"] == slices >= 1
    # Model: the registry's versions, ROC path, calibration bins, ten lift deciles.
    assert pages["model"]["versions"] == dashboard.versions
    assert pages["model"]["liftBars"] == 10 and pages["model"]["calibrationPoints"] >= 5
    assert 0.6 < number(pages["model"]["rocAuc"]) <= 1
    assert pages["importance"]["globalBars"] == min(CHART_LIMIT, features)
    assert pages["importance"]["customerBars"] == min(CHART_LIMIT, features)
    # Drift: one point per run of the chosen feature, every feature and the score in the table.
    assert pages["drift"]["points"] == DRIFT_RUNS
    assert pages["drift"]["features"] == features + 1
    assert number(pages["drift"]["drifted"]) == len(dashboard.drifted[-1])
    assert pages["drift"]["alerts"] == min(20, sum(len(d) for d in dashboard.drifted))
    # Live: the paced client's traffic, measured between two polls of one replica.
    assert number(pages["live"]["rate"]) > 0
    assert number(pages["live"]["p50"]) > 0
    assert number(pages["live"]["cacheHitRatio"]) > 0

    # Accessibility and layout at both widths; a screenshot of every page at each.
    assert report["seriousViolations"] == 0 and report["overflow"] == []
    assert {(a["page"], a["width"]) for a in report["axe"]} >= {
        (p, w) for p in PAGES if p != "login" for w in (1280, 390)
    }
    shots = {Path(p).name for p in report["screenshots"]}
    expected = {f"{p}-1280.png" for p in PAGES} | {f"{p}-390.png" for p in PAGES if p != "login"}
    assert shots == expected
    for name in expected:
        assert (SCREENSHOTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def saas_features(dashboard: Dashboard) -> list[str]:
    from churn_core.contract import load_contract

    return load_contract(dashboard.settings.contract_path).feature_names


def test_the_dashboard_api_keeps_its_roles_through_serve(dashboard: Dashboard) -> None:
    """A predictor-only client gets no dashboard data and no viewer token for the sign-in form."""
    predictor = fetch_token(dashboard.url, "predictor-client")
    refused = httpx.get(f"{dashboard.url}/v1/dashboard/scores", headers=predictor, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_role"
    token = httpx.post(
        f"{dashboard.url}/v1/oauth/token",
        data={"grant_type": "client_credentials", "scope": "viewer"},
        auth=("predictor-client", "predictor-client-secret"),
        timeout=30,
    )
    assert token.status_code == 400 and token.json()["error"] == "invalid_scope"
    viewer = fetch_token(dashboard.url, "viewer-client")
    page = httpx.get(
        f"{dashboard.url}/v1/dashboard/scores", params={"limit": 3}, headers=viewer, timeout=30
    ).json()
    assert page["customers"] == dashboard.customers and len(page["items"]) == 3
    assert all(item["reasons"] for item in page["items"])
