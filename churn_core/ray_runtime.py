"""Start or join Ray from settings (entry points only: nothing starts at import)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from churn_core.logging import get_logger, ray_worker_hook
from churn_core.settings import RaySettings

log = get_logger(__name__)


class RayPortInUseError(RuntimeError):
    """A fixed Ray port is taken: Ray itself would only time out after half a minute."""


@contextmanager
def ray_session(
    settings: RaySettings, environment: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Join ``settings.address`` or start a local cluster bound to loopback; shut down what we started.

    ``environment`` is set before a local cluster starts, so its processes (the Serve
    controller, replicas) see it: Ray Serve reads its feature switches at import.
    """
    if not settings.address and settings.node_ip_address in ("127.0.0.1", "localhost"):
        # Ray swaps a loopback node address for the machine's external one unless it thinks it
        # runs a single-machine (laptop) cluster; this switch keeps every Ray port on loopback.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if "ray" in sys.modules:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.update(environment or {})
    # Ray Data's per-operator progress bars flood logs of non-interactive runs.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Every worker of this job (Train, Tune, Data) logs as the driver does: same JSON lines,
    # same file template, the driver's job and job_id (Ray keeps worker stderr in its files).
    hook = ray_worker_hook()
    runtime_env: dict[str, object] | None = (
        {"worker_process_setup_hook": hook} if hook is not None else None
    )
    if settings.address:
        ray.init(address=settings.address, log_to_driver=False, runtime_env=runtime_env)
    else:
        metrics_port = settings.metrics_export_port
        if metrics_port is not None:
            try:
                ensure_port_free(settings.node_ip_address, metrics_port)
            except RayPortInUseError as error:
                # Only Prometheus's static target depends on the port: a busy 8080 on a
                # laptop must not stop the pipeline. Ray picks a port; the log says which.
                log.warning("ray_metrics_port_taken", error=str(error))
                metrics_port = None
        ray.init(
            num_cpus=settings.num_cpus,
            include_dashboard=settings.include_dashboard,
            _node_ip_address=settings.node_ip_address,
            # The metrics agent serves Prometheus metrics here even with the dashboard off
            # (the dashboard only adds the file-SD list of every node's port).
            _metrics_export_port=metrics_port,
            log_to_driver=False,
            configure_logging=False,
            runtime_env=runtime_env,
        )
    try:
        yield
    finally:
        ray.shutdown()


def ensure_port_free(host: str, port: int) -> None:
    """Raise :class:`RayPortInUseError` when something already listens on ``host:port``."""
    with socket.socket() as probe:
        # As a server would bind: a port with only closed (TIME_WAIT) connections is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise RayPortInUseError(
                f"ray.metrics_export_port {port} on {host} is in use ({error.strerror}): "
                "set CHURN_RAY__METRICS_EXPORT_PORT to a free port, or null to let Ray pick one"
            ) from None


def metrics_export_targets() -> list[str]:
    """``host:port`` of every live node's Prometheus metrics endpoint (Ray must be running)."""
    import ray

    return [
        f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node["Alive"]
    ]
