"""The Serve application versus the same API in plain uvicorn, same model, same load, same run.

Usage: ``python -m benchmarks.serve [--customers 2000] [--seconds 10]`` (needs Redis on
127.0.0.1:6379, ``make services``, and ``wrk``: ``apt-get install -y wrk``).

Both servers run the whole API (token check, rate limit and cache in Redis, validation, model,
SHAP reasons): the ratio is what Ray Serve costs on top of the application itself. A small
sample business is generated and trained first, in a temporary folder. Scenarios:

* sequential ``/v1/predict`` (one connection): p50 and p99 latency;
* ``/v1/predict`` at 16 and 64 connections: throughput and p99 (every body differs, so these
  are cache misses);
* the cache-hit path: one body, 16 connections;
* ``/v1/batch_predict`` of 1,000 records, one connection, with exact, approximate or no SHAP
  reasons: latency and rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from churn_core.ray_runtime import ray_session
from churn_core.settings import Settings, load_settings

REDIS_URL = "redis://127.0.0.1:6379/0"
TENURE = "__TENURE__"

# wrk reports through a Lua `done` hook: one JSON line, latencies in microseconds.
REPORT_LUA = """
done = function(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %f, "p50_us": %f, "p99_us": %f, "errors": %d, "non2xx": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


@dataclass(frozen=True)
class Result:
    """One wrk run."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failed: int

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_settings(workdir: Path, port: int) -> Settings:
    """Local settings with every writable location under ``workdir`` and limits out of the way."""
    settings = load_settings("local")
    serve = settings.serve.model_copy(
        update={
            "port": port,
            "redis_url": SecretStr(REDIS_URL),
            "haproxy_stats_port": free_port(),
            "haproxy_metrics_port": free_port(),
            "rate_limit": settings.serve.rate_limit.model_copy(update={"requests": 10**9}),
            "auth": settings.serve.auth.model_copy(update={"keys_dir": workdir / "keys"}),
        }
    )
    return settings.model_copy(
        update={
            "raw_dir": workdir / "raw",
            "lake_dir": workdir / "lake",
            "registry": settings.registry.model_copy(update={"root": workdir / "registry"}),
            "training": settings.training.model_copy(update={"storage_path": workdir / "ray"}),
            "serve": serve,
            "monitoring": settings.monitoring.model_copy(
                update={
                    "prediction_log": settings.monitoring.prediction_log.model_copy(
                        update={"spool_dir": workdir / "spool"}
                    )
                }
            ),
        }
    )


def replica_environment(settings: Settings) -> dict[str, str]:
    """What both servers must see of the settings changed above."""
    return {
        "CHURN_REGISTRY__ROOT": str(settings.registry.root),
        "CHURN_LAKE_DIR": str(settings.lake_dir),
        "CHURN_MONITORING__PREDICTION_LOG__SPOOL_DIR": str(
            settings.monitoring.prediction_log.spool_dir
        ),
        "CHURN_SERVE__REDIS_URL": REDIS_URL,
        "CHURN_SERVE__RATE_LIMIT__REQUESTS": str(settings.serve.rate_limit.requests),
        "CHURN_SERVE__AUTH__KEYS_DIR": str(settings.serve.auth.keys_dir),
    }


def train_sample_model(settings: Settings) -> dict[str, Any]:
    """Generate, ingest, build features and train; returns one gold customer's request body."""
    from churn import cli

    cli.run_generate(settings)
    cli.run_spark_stages(settings)
    cli.run_train(settings)
    from churn_core.contract import load_contract
    from churn_core.tables import Tables

    example = cli._example_features(
        Tables(settings.dataset_lake), load_contract(settings.contract_path)
    )
    return {"customer_id": example.pop("__key"), "features": example}


def start_baseline(
    settings: Settings, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``serve_apps.standalone`` (one uvicorn worker) on ``port``; waits until it answers."""
    env = {**os.environ, **replica_environment(settings), **(extra_env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "serve_apps.standalone", "--env", "local", "--port", str(port)],
        env=env,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the uvicorn baseline did not start")
        time.sleep(0.2)


def token(url: str) -> str:
    """A bearer token for the local development client."""
    from churn.cli import LOCAL_CLIENT

    response = httpx.post(
        f"{url}/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=LOCAL_CLIENT,
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def write_scripts(folder: Path, example: dict[str, Any], bearer: str) -> dict[str, Path]:
    """wrk Lua scripts: varying single predictions, one fixed prediction, a 1,000-record batch."""
    headers = (
        f'wrk.headers["Authorization"] = "Bearer {bearer}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    varying = {**example, "features": {**example["features"], "tenure_days": TENURE}}
    template = json.dumps(json.dumps(varying)).replace(f'\\"{TENURE}\\"', "%.4f")
    scripts = {
        "miss": headers
        + f"local template = {template}\n"
        + "request = function()\n"
        + '  return wrk.format("POST", "/v1/predict", nil, '
        + "string.format(template, math.random() * 3000))\nend\n",
        "hit": headers
        + 'wrk.method = "POST"\nwrk.path = "/v1/predict"\n'
        + f"wrk.body = {json.dumps(json.dumps(example))}\n",
    }
    for reasons in ("exact", "approximate", "none"):
        batch = json.dumps({"records": [example] * 1000, "reasons": reasons})
        scripts[f"batch-{reasons}"] = (
            headers
            + 'wrk.method = "POST"\nwrk.path = "/v1/batch_predict"\n'
            + f"wrk.body = {json.dumps(batch)}\n"
        )
    paths = {}
    for name, body in scripts.items():
        paths[name] = folder / f"{name}.lua"
        paths[name].write_text(body + REPORT_LUA)
    return paths


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> Result:
    """One wrk run; fails loudly on any error or non-2xx answer."""
    threads = 1 if connections == 1 else 2
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    raw = json.loads(line.removeprefix("RESULT "))
    result = Result(
        requests=raw["requests"],
        seconds=raw["seconds"],
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        failed=raw["errors"] + raw["non2xx"],
    )
    if result.failed:
        raise RuntimeError(f"{result.failed} failed requests against {url} with {script.name}")
    return result


def main() -> None:
    """Train a sample model, start both servers, drive both with wrk, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    from churn_core.logging import configure_logging
    from serve_apps.launcher import deploy, serve_environment

    configure_logging("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    settings = bench_settings(workdir, free_port())
    settings = settings.model_copy(
        update={"sample": settings.sample.model_copy(update={"customers": args.customers})}
    )
    baseline_port = free_port()
    with ray_session(settings.ray, serve_environment(settings.serve, workdir)):
        example = train_sample_model(settings)
        from ray import serve

        serve_url = deploy(settings, environment=replica_environment(settings))
        baseline = start_baseline(settings, baseline_port)
        try:
            targets = {"serve": serve_url, "uvicorn": f"http://127.0.0.1:{baseline_port}"}
            scripts = write_scripts(workdir, example, token(serve_url))
            scenarios = [
                ("predict, sequential", "miss", 1),
                ("predict, 16 connections", "miss", 16),
                ("predict, cache hit, 16 connections", "hit", 16),
                # Last of the single-row runs: 64 in flight asks the autoscaler for a second
                # replica, which on 2 cores only competes with the first for CPU.
                ("predict, 64 connections", "miss", 64),
                ("batch_predict 1,000 rows, exact SHAP", "batch-exact", 1),
                ("batch_predict 1,000 rows, approx. SHAP", "batch-approximate", 1),
                ("batch_predict 1,000 rows, no reasons", "batch-none", 1),
            ]
            for url in targets.values():  # warm-up: imports, connections, caches
                run_wrk(url, scripts["miss"], 16, 3)
            print_header()
            for title, script, connections in scenarios:
                results = {
                    name: run_wrk(url, scripts[script], connections, args.seconds)
                    for name, url in targets.items()
                }
                print_row(
                    title, results["serve"], results["uvicorn"], batch=script.startswith("batch")
                )
        finally:
            baseline.send_signal(signal.SIGINT)
            baseline.wait(timeout=30)
            serve.shutdown()
    shutil.rmtree(workdir, ignore_errors=True)


def print_header() -> None:
    """Column titles."""
    print(f"\n{'scenario':38} {'':10} {'Serve':>10} {'uvicorn':>10} {'ratio':>7}")


def print_row(title: str, serve: Result, base: Result, batch: bool) -> None:
    """Throughput (or rows/s) and latency of both servers, with Serve/baseline ratios."""
    unit, scale = ("rows/s", 1000) if batch else ("req/s", 1)
    rows = [
        (unit, serve.rate * scale, base.rate * scale, f"{serve.rate / base.rate:.2f}"),
        ("p50 ms", serve.p50_ms, base.p50_ms, f"{serve.p50_ms / base.p50_ms:.2f}"),
        ("p99 ms", serve.p99_ms, base.p99_ms, f"{serve.p99_ms / base.p99_ms:.2f}"),
    ]
    for i, (name, s, b, ratio) in enumerate(rows):
        print(f"{title if i == 0 else '':38} {name:10} {s:10.1f} {b:10.1f} {ratio:>7}")


if __name__ == "__main__":
    main()
