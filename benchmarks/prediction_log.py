"""What the prediction log costs the API, and how fast the writer empties its buffer.

Usage: ``python -m benchmarks.prediction_log [--customers 2000] [--seconds 10]`` (needs Redis on
127.0.0.1:6379, ``make services``, and ``wrk``: ``apt-get install -y wrk``).

1. The same API (``serve_apps.standalone``, one uvicorn worker) twice, with the prediction log on
   and off, driven by wrk in the same run: ``/v1/predict`` at 16 connections (cache misses) and
   ``/v1/batch_predict`` of 1,000 records. Ratio = log on / log off.
2. The writer alone: 200,000 rows appended from 4 threads while it flushes, against a baseline
   of the same rows as one ``write_deltalake`` call (what no buffering at all could reach).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.serve import (
    bench_settings,
    free_port,
    run_wrk,
    start_baseline,
    token,
    train_sample_model,
    write_scripts,
)
from churn_core.contract import FeatureContract, load_contract
from churn_core.prediction_log import (
    PARTITION_COLUMNS,
    PredictionLogWriter,
    new_prediction_id,
    prediction_log_schema,
    prediction_row,
    rows_to_table,
)
from churn_core.ray_runtime import ray_session
from churn_core.settings import PredictionLogSettings

WRITER_ROWS = 200_000
WRITER_THREADS = 4


def api_comparison(workdir: Path, customers: int, seconds: int) -> None:
    """Log on versus log off, same model, same load."""
    settings = bench_settings(workdir, free_port())
    settings = settings.model_copy(
        update={"sample": settings.sample.model_copy(update={"customers": customers})}
    )
    with ray_session(settings.ray):
        example = train_sample_model(settings)
    ports = {"log on": free_port(), "log off": free_port()}
    # A Redis database each, emptied first: wrk's random bodies repeat from run to run, and a
    # shared prediction cache would hand the second server the first one's answers.
    redis = {"log on": "redis://127.0.0.1:6379/1", "log off": "redis://127.0.0.1:6379/2"}
    for url in redis.values():
        subprocess.run(["redis-cli", "-u", url, "FLUSHDB"], check=True, capture_output=True)
    servers = {
        "log on": start_baseline(
            settings, ports["log on"], {"CHURN_SERVE__REDIS_URL": redis["log on"]}
        ),
        "log off": start_baseline(
            settings,
            ports["log off"],
            {
                "CHURN_MONITORING__PREDICTION_LOG__ENABLED": "false",
                "CHURN_SERVE__REDIS_URL": redis["log off"],
            },
        ),
    }
    try:
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        scripts = write_scripts(workdir, example, token(urls["log on"]))
        for url in urls.values():
            run_wrk(url, scripts["miss"], 16, 3)
        print(f"\n{'scenario':34} {'':8} {'log on':>10} {'log off':>10} {'ratio':>7}")
        for title, script, scale, unit in [
            ("predict, 16 connections", "miss", 1, "req/s"),
            ("batch_predict 1,000 rows, no SHAP", "batch-none", 1000, "rows/s"),
        ]:
            on = run_wrk(urls["log on"], scripts[script], 16 if scale == 1 else 1, seconds)
            off = run_wrk(urls["log off"], scripts[script], 16 if scale == 1 else 1, seconds)
            print(
                f"{title:34} {unit:8} {on.rate * scale:10.1f} {off.rate * scale:10.1f}"
                f" {on.rate / off.rate:7.2f}"
            )
            print(f"{'':34} {'p99 ms':8} {on.p99_ms:10.1f} {off.p99_ms:10.1f}")
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    logged = settings.dataset_lake / "monitoring" / "predictions"
    print(f"prediction log after the run: {logged} ({'present' if logged.exists() else 'absent'})")


def sample_rows(contract: FeatureContract, count: int) -> list[dict[str, object]]:
    """``count`` log rows with plausible feature values."""
    features: dict[str, object] = {}
    for spec in contract.features:
        if spec.type == "numeric":
            features[spec.name] = 12.5
        elif spec.type == "boolean":
            features[spec.name] = True
        else:
            features[spec.name] = (spec.categories or ["x"])[0]
    now = datetime.now(UTC)
    return [
        prediction_row(
            prediction_id=new_prediction_id(),
            logged_at=now,
            model_name="bench",
            model_version=1,
            endpoint="predict",
            customer_id=f"C{i:07d}",
            features_from="request",
            as_of=None,
            probability=0.3,
            churn=False,
            threshold=0.5,
            features=features,
        )
        for i in range(count)
    ]


def writer_throughput(workdir: Path, contract: FeatureContract) -> None:
    """Rows/s through the buffered writer versus one bulk Delta write of the same rows."""
    from deltalake import write_deltalake

    rows = sample_rows(contract, WRITER_ROWS)
    schema = prediction_log_schema(contract)
    started = time.perf_counter()
    bulk = rows_to_table(rows, schema)
    write_deltalake(str(workdir / "bulk"), bulk, mode="append", partition_by=PARTITION_COLUMNS)
    bulk_s = time.perf_counter() - started

    writer = PredictionLogWriter(
        workdir / "buffered", schema, PredictionLogSettings(), workdir / "spool"
    )
    writer.start()
    share = WRITER_ROWS // WRITER_THREADS
    append_s: list[float] = []

    def produce(part: list[dict[str, object]]) -> None:
        begin = time.perf_counter()
        for start in range(0, len(part), 10):
            writer.append(part[start : start + 10])
        append_s.append(time.perf_counter() - begin)

    started = time.perf_counter()
    threads = [
        threading.Thread(target=produce, args=(rows[i * share : (i + 1) * share],))
        for i in range(WRITER_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    buffered_s = time.perf_counter() - started
    per_append_us = max(append_s) / (share / 10) * 1e6
    print(f"\nwriter: {WRITER_ROWS:,} rows from {WRITER_THREADS} threads, appends of 10 rows")
    print(f"  buffered writer, appended and flushed  {WRITER_ROWS / buffered_s:12,.0f} rows/s")
    print(f"  one bulk write_deltalake (baseline)    {WRITER_ROWS / bulk_s:12,.0f} rows/s")
    print(f"  ratio buffered / bulk                  {bulk_s / buffered_s:12.2f}")
    print(f"  mean append call (caller's cost)       {per_append_us:12.1f} us")
    print(f"  rows written {writer.stats['written']:,}, spooled {writer.stats['spooled']:,}")


def main() -> None:
    """Both measurements, in a temporary folder."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    from churn_core.logging import configure_logging

    configure_logging("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="bench-plog-"))
    try:
        contract = load_contract(Path("configs/contracts/saas.yaml"))
        writer_throughput(workdir, contract)
        api_comparison(workdir, args.customers, args.seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
