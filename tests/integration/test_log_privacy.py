"""Every log line of a real run, scanned for customer data and secrets.

One module-scoped run, with JSON file logging on in every process: three ``churn`` jobs as
subprocesses against a copy of the session pipeline's data (ingest and materialize on Spark,
score on Ray Data joining the session's Ray cluster, so Ray workers log too), then the Serve
application with Redis and PostgreSQL reached by password-carrying URLs, and a few API calls.
The lines collected: the log files, the jobs' stdout/stderr, and Ray's session log files
written meanwhile (replica and worker stderr, Serve's own logs).

Forbidden: the configured secrets (Redis and PostgreSQL passwords, the token signing key, the
client secret, issued tokens) and customer values read back from the raw sample files the
session generated. The sample data has no names or emails (see pipelines/sample_data.py); its
distinctive customer values are exact monthly fees and second-precision update/cancel times.
tests/unit/test_logging.py shows this same scan catching a planted leak.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import SecretStr

from churn_core.settings import Settings
from tests.conftest import REPO_ROOT, PipelineRun, free_port
from tests.fixtures.redis import RedisServer
from tests.log_scan import Leak, find_leaks, parse_json_lines, read_lines

pytestmark = pytest.mark.integration

JOB_ID = "privacy-score-1"
REQUEST_ID = "privacy-req-1"
# Feature values sent in a request body: 4 decimals, so a hit is never a coincidence.
SENT = {"monthly_fee": 63.2917, "spend_90d": 412.7731}
OUT_OF_RANGE_FEE = 5000.1234
# Measurements, not data: a duration of 41.37 ms is not the monthly fee 41.37.
TIMING_KEYS = frozenset({"timestamp", "duration_ms", "seconds", "duration_s", "pid"})
LAUNCHER = "import sys; sys.argv[0] = 'churn'; from churn.cli import main; main()"


@dataclass
class PrivacyRun:
    """What the run wrote and what must not be in it."""

    log_dir: Path
    job_output: list[tuple[str, str]]
    ray_log_lines: list[tuple[str, str]]
    secrets: dict[str, str]
    customer_values: dict[str, str]
    responses: dict[str, httpx.Response]


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in its userinfo (Redis: the default user, PostgreSQL: its own)."""
    scheme, rest = url.split("://", 1)
    user, _, host = rest.rpartition("@")
    return f"{scheme}://{user or 'default'}:{password}@{host}"


def customer_values(raw_dir: Path, customer_ids: list[str]) -> dict[str, str]:
    """Distinctive values of these customers, read from the generated customer table."""
    table = pq.read_table(raw_dir / "customers").to_pylist()
    values: dict[str, str] = {}
    for row in table:
        if row["customer_id"] not in customer_ids:
            continue
        cid = row["customer_id"]
        values[f"{cid} monthly_fee"] = repr(row["monthly_fee"])
        for column in ("updated_at", "cancelled_at"):
            if row[column] is not None:
                stamp = row[column].replace(microsecond=0)
                values[f"{cid} {column}"] = stamp.isoformat(sep=" ")
                values[f"{cid} {column} (T)"] = stamp.isoformat()
    assert len({k.split()[0] for k in values}) == len(customer_ids)
    return values


def job_environment(
    settings: Settings, base: Path, log_template: str, secrets_: dict[str, str], gcs: str
) -> dict[str, str]:
    """The jobs' view of this module's settings (they load ``test`` plus these)."""
    return {
        "CHURN_ENV": "test",
        "CHURN_RAW_DIR": str(settings.resolve(settings.raw_dir)),
        "CHURN_LAKE_DIR": str(base / "lake"),
        "CHURN_REGISTRY__ROOT": str(base / "registry"),
        "CHURN_MONITORING__METRICS_DIR": str(base / "metrics"),
        "CHURN_MONITORING__PREDICTION_LOG__SPOOL_DIR": str(base / "spool"),
        "CHURN_MONITORING__ALERTS__STATE_PATH": str(base / "alert_state.json"),
        "CHURN_LOGGING__FILE__PATH": log_template,
        "CHURN_RAY__ADDRESS": gcs,
        "CHURN_SCORING__ENGINE": "ray",
        "CHURN_SCORING__POSTGRES_URL": secrets_["postgres url"],
        "CHURN_SCORING__POSTGRES_TABLE": "privacy_scores",
        "CHURN_SERVE__ONLINE_STORE__REDIS_URL": secrets_["redis url"],
        "CHURN_SERVE__ONLINE_STORE__POSTGRES_URL": secrets_["postgres url"],
        "CHURN_SERVE__ONLINE_STORE__KEY_PREFIX": "churn:privacy",
        "CHURN_SERVE__ONLINE_STORE__TABLE": "privacy_online_features",
    }


def run_job(command: str, env: dict[str, str], job_id: str | None = None) -> list[tuple[str, str]]:
    """``churn <command>`` in its own process; its stdout and stderr lines, for the scan."""
    extra = {"CHURN_JOB_ID": job_id} if job_id else {}
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, command],
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200", **env, **extra},
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, f"churn {command}: {result.stderr[-3000:]}"
    return [
        (f"churn {command} {stream}:{n}", line)
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr))
        for n, line in enumerate(text.splitlines(), 1)
    ]


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def replica_config_dir(base: Path, log_template: str, found: dict[str, str]) -> Path:
    """configs/ with a ``test.yaml`` that also holds this module's serve settings and secrets."""
    folder = base / "configs"
    folder.mkdir()
    shutil.copy(REPO_ROOT / "configs/base.yaml", folder / "base.yaml")
    test = yaml.safe_load((REPO_ROOT / "configs/test.yaml").read_text())
    override = {
        "logging": {"file": {"path": log_template}},
        "serve": {
            "redis_url": found["redis url"],
            "auth": {"keys_dir": str(base / "keys")},
            "online_store": {
                "redis_url": found["redis url"],
                "postgres_url": found["postgres url"],
                "key_prefix": "churn:privacy",
                "table": "privacy_online_features",
            },
        },
    }
    (folder / "test.yaml").write_text(yaml.safe_dump(merged(test, override)))
    return folder


def latest_customer_ids(run: PipelineRun, count: int) -> list[str]:
    """The last ``count`` customers of the latest gold snapshot (the online store has them)."""
    from deltalake import DeltaTable

    gold = DeltaTable(str(run.tables.gold_features)).to_pandas()
    latest = gold[gold["snapshot_date"] == gold["snapshot_date"].max()]
    key = run.contract.entity_key
    return sorted(str(c) for c in latest.sort_values(key)[key].tail(count))


def ray_logs_since(started: float) -> list[tuple[str, str]]:
    """Lines of Ray's session log files written since ``started`` (this driver's session)."""
    import ray

    node = ray._private.worker._global_node
    if node is None:  # pragma: no cover - the session cluster is always up here
        return []
    logs = Path(node.get_logs_dir_path())
    return read_lines(p for p in logs.rglob("*") if p.is_file() and p.stat().st_mtime >= started)


@pytest.fixture(scope="module")
def privacy_run(
    saas_run: PipelineRun,
    redis_server: RedisServer,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrivacyRun]:
    import ray
    from ray import serve

    from serve_apps.launcher import deploy
    from tests.integration.test_serving import latest_gold_customer

    started = time.time()
    base = tmp_path_factory.mktemp("privacy")
    original = saas_run.settings
    # A copy of the session's lake and registry: these jobs write scores and predictions.
    shutil.copytree(original.dataset_lake, base / "lake" / original.dataset)
    shutil.copytree(original.resolve(original.registry.root), base / "registry")
    log_dir = base / "logs"
    log_template = str(log_dir / "{component}-{pid}.jsonl")
    found: dict[str, str] = {
        "redis password": f"redis-{secrets.token_hex(8)}",
        "postgres password": f"pg-{secrets.token_hex(8)}",
        "client secret": "predictor-client-secret",  # pragma: allowlist secret
    }
    found["redis url"] = with_password(redis_server.url, found["redis password"])
    found["postgres url"] = with_password(postgres_url, found["postgres password"])
    gcs = ray.get_runtime_context().gcs_address
    env = job_environment(original, base, log_template, found, gcs)

    output = run_job("ingest", env)
    output += run_job("materialize", env)
    output += run_job("score", env, job_id=JOB_ID)

    serve_settings = original.serve.model_copy(
        update={
            "port": free_port(),
            "redis_url": SecretStr(found["redis url"]),
            "online_store": original.serve.online_store.model_copy(
                update={
                    "redis_url": SecretStr(found["redis url"]),
                    "postgres_url": SecretStr(found["postgres url"]),
                    "key_prefix": "churn:privacy",
                    "table": "privacy_online_features",
                }
            ),
            "auth": original.serve.auth.model_copy(update={"keys_dir": base / "keys"}),
        }
    )
    settings = original.model_copy(
        update={
            "serve": serve_settings,
            "lake_dir": base / "lake",
            "registry": original.registry.model_copy(update={"root": base / "registry"}),
        }
    )
    # The replicas read their secrets from a config file, as pods read them from a mounted
    # Secret: Ray's runtime_env_agent.log records every runtime_env variable verbatim, which
    # this test caught when the URLs were handed over as CHURN_* variables that way.
    replica_env = {"CHURN_CONFIG_DIR": str(replica_config_dir(base, log_template, found))}
    example = latest_gold_customer(saas_run)
    ids = sorted({example["customer_id"], *latest_customer_ids(saas_run, 3)})
    url = deploy(settings, environment=replica_env)
    responses: dict[str, httpx.Response] = {}
    try:
        token = httpx.post(
            f"{url}/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("predictor-client", found["client secret"]),
            timeout=30,
        )
        assert token.status_code == 200, token.text
        found["access token"] = token.json()["access_token"]
        found["basic credentials"] = base64.b64encode(
            f"predictor-client:{found['client secret']}".encode()
        ).decode()
        headers = {"Authorization": f"Bearer {found['access token']}"}

        def post(name: str, path: str, body: Any, extra: dict[str, str] | None = None) -> None:
            responses[name] = httpx.post(
                f"{url}{path}", json=body, headers={**headers, **(extra or {})}, timeout=30
            )

        post(
            "by_id",
            "/v1/predict",
            {"customer_id": example["customer_id"]},
            {"X-Request-ID": REQUEST_ID},
        )
        post("by_features", "/v1/predict", {"features": {**example["features"], **SENT}})
        post(
            "batch",
            "/v1/batch_predict",
            {"records": [{"customer_id": c} for c in ids] + [{"features": example["features"]}]},
        )
        bad = {**example["features"], "monthly_fee": OUT_OF_RANGE_FEE}
        post("invalid", "/v1/predict", {"features": bad})
        responses["wrong_secret"] = httpx.post(
            f"{url}/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("predictor-client", f"wrong-{found['client secret']}"),
            timeout=30,
        )
    finally:
        # Shut down first: the replicas' last lines (prediction-log flush) are then written.
        serve.shutdown()
    (key_file,) = (base / "keys").glob("*.secret")
    found["signing key"] = key_file.read_text().strip()
    for name in ("redis url", "postgres url"):
        del found[name]  # the passwords are the secrets; the rest of the URL may be logged
    yield PrivacyRun(
        log_dir=log_dir,
        job_output=output,
        ray_log_lines=ray_logs_since(started),
        secrets=found,
        customer_values=customer_values(original.resolve(original.raw_dir), ids),
        responses=responses,
    )


def file_lines(run: PrivacyRun) -> list[tuple[str, str]]:
    return read_lines(run.log_dir.iterdir())


def test_every_file_line_is_json_with_the_common_fields(privacy_run: PrivacyRun) -> None:
    lines = parse_json_lines(file_lines(privacy_run))
    assert len(lines) > 20
    for line in lines:
        assert {"timestamp", "level", "logger", "component", "event", "pid"} <= set(line)
        assert line["timestamp"].endswith("Z")
    components = {line["component"] for line in lines}
    assert {"cli", "serve"} <= components
    jobs = {line.get("job") for line in lines if line["component"] == "cli"}
    assert {"ingest", "materialize", "score"} <= jobs


def test_ids_lead_from_a_request_or_a_job_to_its_lines(privacy_run: PrivacyRun) -> None:
    lines = parse_json_lines(file_lines(privacy_run))
    responses = privacy_run.responses
    assert responses["by_id"].status_code == 200
    # Through HAProxy and Serve's direct ingress, the caller's id comes back once.
    assert responses["by_id"].headers.get_list("x-request-id") == [REQUEST_ID]
    (request,) = [
        line
        for line in lines
        if line["event"] == "http_request" and line.get("request_id") == REQUEST_ID
    ]
    assert request["prediction_ids"] == [responses["by_id"].json()["prediction_id"]]
    assert request["route"] == "/v1/predict" and request["status"] == 200
    # Without a header, Serve's generated id is the one in our lines too.
    batch = responses["batch"]
    assert batch.status_code == 200
    (generated,) = batch.headers.get_list("x-request-id")
    (batch_line,) = [
        line
        for line in lines
        if line["event"] == "http_request" and line.get("request_id") == generated
    ]
    assert batch_line["prediction_ids"] == [p["prediction_id"] for p in batch.json()["predictions"]]
    # The scheduler-style run id is on the job's lines and on its Ray workers' files.
    score = [line for line in lines if line.get("job") == "score"]
    assert score and {line["job_id"] for line in score} == {JOB_ID}
    workers = list(privacy_run.log_dir.glob("ray-worker-*.jsonl*"))
    assert workers, "the Ray workers of `churn score` configured no logging"
    for line in parse_json_lines(read_lines(workers)):
        assert (line["component"], line["job_id"]) == ("ray-worker", JOB_ID)


def test_no_line_holds_a_secret_or_customer_data(privacy_run: PrivacyRun) -> None:
    run = privacy_run
    assert run.responses["invalid"].status_code == 422
    assert run.responses["wrong_secret"].status_code == 401
    text_values = {
        **run.secrets,
        **{k: v for k, v in run.customer_values.items() if "monthly_fee" not in k},
        **{f"sent {k}": repr(v) for k, v in SENT.items()},
        "out-of-range fee sent": repr(OUT_OF_RANGE_FEE),
    }
    numbers = {k: v for k, v in run.customer_values.items() if "monthly_fee" in k}
    ours = file_lines(run)
    # Exact fees (2 decimals) are matched in our JSON lines minus the timing fields; as free
    # text in Ray's own logs, "41.37" is as likely a percentage or a size.
    structured = [
        (where, json.dumps({k: v for k, v in line.items() if k not in TIMING_KEYS}))
        for (where, _), line in zip(ours, parse_json_lines(ours), strict=True)
    ]
    leaks: list[Leak] = find_leaks(ours + run.job_output + run.ray_log_lines, text_values)
    leaks += find_leaks(structured, numbers)
    assert run.ray_log_lines, "Ray's session logs were not reachable"
    assert not leaks, "\n".join(str(leak) for leak in leaks[:20])
