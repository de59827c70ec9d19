"""Sustained, realistic load on the Serve app: no 5xx below capacity, 503 (not timeouts) above.

Usage: ``python -m benchmarks.load_test [--minutes 3] [--overload-seconds 60]`` (needs Redis on
127.0.0.1:6379: ``make services``). Writes var/benchmarks/load_test.json and prints the table
the README shows.

A sample business is trained, the Serve app deployed from configs/serve/local.yaml (HAProxy in
front of the replicas) and locust (benchmarks/locustfile.py) drives it, headless:

1. below capacity: USERS clients at RATE requests/s each (a Poisson mix of cached and uncached
   /v1/predict, 100-record /v1/batch_predict, metrics reads and token refreshes) for --minutes;
   at most USERS requests are in flight, under the configured capacity (per replica
   max_ongoing_requests + max_queued_requests). Every answer must be 2xx. The RSS of the
   replica processes is sampled throughout: it must stay flat.
2. above capacity: OVERLOAD_USERS clients without pause, more in flight than every replica may
   hold: the API must shed with 503 + Retry-After, and no request may time out.
3. baseline, same run: phase 1's load for BASELINE_SECONDS against the same API in plain
   uvicorn (one worker), for the latency and rate ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.serve import (
    bench_settings,
    free_port,
    replica_environment,
    start_baseline,
    train_sample_model,
)
from churn_core.ray_runtime import ray_session

USERS = 40
RATE = 4.0  # requests per second per user: ~160 req/s offered
# More in flight than both replicas may hold (2 x 96), yet few enough that the one locust
# process (sharing the 2 cores) keeps up with the answers instead of timing them out itself.
OVERLOAD_USERS = 250
BASELINE_SECONDS = 60
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
OUT = Path("var/benchmarks/load_test.json")


@dataclass
class Phase:
    """What one locust run measured."""

    name: str
    target: str
    users: int
    seconds: float
    requests: int
    rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    codes: dict[str, int]
    rss_mb: list[dict[int, float]] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        """5xx other than the designed 503 shedding, plus answers that never came (0)."""
        return sum(
            n
            for code, n in self.codes.items()
            if code == "0" or (code.startswith("5") and code != "503")
        )


def configured_capacity(config_path: Path) -> tuple[int, int]:
    """(requests one replica holds in flight, max replicas) from the Serve config."""
    config = yaml.safe_load(config_path.read_text())
    deployment = config["applications"][0]["deployments"][0]
    per_replica = int(deployment["max_ongoing_requests"]) + int(deployment["max_queued_requests"])
    return per_replica, int(deployment["autoscaling_config"]["max_replicas"])


def replica_rss_mb() -> dict[int, float]:
    """Resident memory (MB) of each Serve replica process (Ray titles them ServeReplica:...)."""
    sizes = {}
    for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        try:
            title = " ".join(process.info["cmdline"] or [])
            if "ServeReplica" in title:
                sizes[process.info["pid"]] = round(process.info["memory_info"].rss / 2**20, 1)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sizes


class RssSampler(threading.Thread):
    """Samples each replica's RSS every ``interval`` seconds until stopped.

    Replicas come and go with autoscaling: growth is judged per replica process, from its
    first sample to its last, so a second replica starting is not read as a leak.
    """

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[dict[int, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(replica_rss_mb())
            self._stop_event.wait(self.interval)

    def stop(self) -> list[dict[int, float]]:
        self._stop_event.set()
        self.join()
        self.samples.append(replica_rss_mb())
        return self.samples


def rss_by_replica(samples: list[dict[int, float]]) -> dict[int, tuple[float, float, float]]:
    """pid -> (first, last, max) RSS in MB over the samples that saw it."""
    seen: dict[int, list[float]] = {}
    for sample in samples:
        for pid, size in sample.items():
            seen.setdefault(pid, []).append(size)
    return {pid: (sizes[0], sizes[-1], max(sizes)) for pid, sizes in seen.items()}


def run_locust(
    name: str,
    url: str,
    users: int,
    rate: float,
    seconds: int,
    example: dict[str, Any],
    workdir: Path,
) -> Phase:
    """One headless locust run; its aggregated stats and status codes."""
    from churn.cli import LOCAL_CLIENT

    prefix = workdir / name.replace(" ", "_")
    codes_path = workdir / f"{prefix.name}_codes.json"
    env = {
        **os.environ,
        "LOAD_TEST_EXAMPLE": json.dumps(example),
        "LOAD_TEST_CLIENT": ":".join(LOCAL_CLIENT),
        "LOAD_TEST_USER_RATE": str(rate),
        "LOAD_TEST_CODES": str(codes_path),
    }
    spawn = max(1, users // 10)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(spawn),
            "--run-time",
            f"{seconds}s",
            "--host",
            url,
            "--csv",
            str(prefix),
            "--only-summary",
            "--stop-timeout",
            "15",
            "--exit-code-on-error",
            "0",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(f"{prefix}_stats.csv") as handle:
        total = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    codes: dict[str, int] = {}
    for row in json.loads(codes_path.read_text()):
        codes[str(row["status"])] = codes.get(str(row["status"]), 0) + row["count"]
    return Phase(
        name=name,
        target=url,
        users=users,
        seconds=seconds,
        requests=int(total["Request Count"]),
        rate=float(total["Requests/s"]),
        p50_ms=float(total["50%"]),
        p95_ms=float(total["95%"]),
        p99_ms=float(total["99%"]),
        max_ms=float(total["Max Response Time"]),
        codes=dict(sorted(codes.items())),
    )


def main() -> int:
    """Train, deploy, load below and above capacity, compare with uvicorn; exit 1 on a breach."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--overload-seconds", type=int, default=60)
    parser.add_argument("--customers", type=int, default=2000)
    args = parser.parse_args()
    from churn_core.logging import configure_logging
    from serve_apps.launcher import deploy, serve_environment

    configure_logging("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    settings = bench_settings(workdir, free_port())
    settings = settings.model_copy(
        update={"sample": settings.sample.model_copy(update={"customers": args.customers})}
    )
    per_replica, max_replicas = configured_capacity(settings.resolve(settings.serve.config_path))
    assert USERS < per_replica < OVERLOAD_USERS // max_replicas
    phases: list[Phase] = []
    with ray_session(settings.ray, serve_environment(settings.serve, workdir)):
        example = train_sample_model(settings)
        from ray import serve

        url = deploy(settings, environment=replica_environment(settings))
        try:
            run_locust("warm-up", url, 8, 0, 15, example, workdir)
            sampler = RssSampler()
            sampler.start()
            below = run_locust(
                "below capacity", url, USERS, RATE, int(args.minutes * 60), example, workdir
            )
            below.rss_mb = sampler.stop()
            phases.append(below)
            sampler = RssSampler(5.0)
            sampler.start()
            above = run_locust(
                "above capacity", url, OVERLOAD_USERS, 0, args.overload_seconds, example, workdir
            )
            above.rss_mb = sampler.stop()
            phases.append(above)
        finally:
            serve.shutdown()
        baseline_port = free_port()
        baseline = start_baseline(settings, baseline_port)
        try:
            phases.append(
                run_locust(
                    "baseline (uvicorn)",
                    f"http://127.0.0.1:{baseline_port}",
                    USERS,
                    RATE,
                    BASELINE_SECONDS,
                    example,
                    workdir,
                )
            )
        finally:
            baseline.send_signal(signal.SIGINT)
            baseline.wait(timeout=30)
    shutil.rmtree(workdir, ignore_errors=True)
    return report(phases, per_replica, max_replicas)


def report(phases: list[Phase], per_replica: int, max_replicas: int) -> int:
    """Print the table, write the JSON, return 1 if a promise was broken."""
    below, above, base = phases
    print(f"\ncapacity: {per_replica} in flight per replica x {max_replicas} replicas")
    print(
        f"{'phase':22} {'users':>5} {'s':>5} {'req':>7} {'req/s':>7} {'p50':>6} {'p95':>6} {'p99':>6} {'max':>7}  codes"
    )
    for p in phases:
        print(
            f"{p.name:22} {p.users:5d} {p.seconds:5.0f} {p.requests:7d} {p.rate:7.1f} "
            f"{p.p50_ms:6.0f} {p.p95_ms:6.0f} {p.p99_ms:6.0f} {p.max_ms:7.0f}  {p.codes}"
        )
    replicas = rss_by_replica(below.rss_mb)
    # The first minute warms caches and allocators; flat means no growth after it.
    settled = rss_by_replica(below.rss_mb[6:] or below.rss_mb)
    growth = max(((last - first) / first for first, last, _ in settled.values()), default=0.0)
    for pid, (first, last, peak) in sorted(replicas.items()):
        print(
            f"replica {pid} RSS below capacity: start {first:.0f} MB, end {last:.0f} MB, max {peak:.0f} MB"
        )
    for pid, (first, last, peak) in sorted(rss_by_replica(above.rss_mb).items()):
        print(
            f"replica {pid} RSS above capacity: start {first:.0f} MB, end {last:.0f} MB, max {peak:.0f} MB"
        )
    print(f"largest growth of a replica after the first minute: {growth:+.1%}")
    print(
        f"Serve / uvicorn at the same load: rate {below.rate / base.rate:.2f}, "
        f"p50 {below.p50_ms / base.p50_ms:.2f}x, p99 {below.p99_ms / base.p99_ms:.2f}x"
    )
    breaches = []
    if below.server_errors or below.codes.get("503"):
        breaches.append(f"below capacity: errors {below.codes}")
    if above.codes.get("0"):
        breaches.append(f"above capacity: {above.codes['0']} requests got no answer (timeouts)")
    if not above.codes.get("503"):
        breaches.append("above capacity: nothing was shed with 503")
    if growth > 0.10:
        breaches.append(f"a replica's RSS grew {growth:.1%} after the first minute")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {"phases": [asdict(p) for p in phases], "rss_growth": growth, "breaches": breaches},
            indent=2,
        )
    )
    for breach in breaches:
        print(f"BREACH: {breach}")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
