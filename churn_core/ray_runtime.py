"""Start or join Ray from settings (entry points only: nothing starts at import)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from churn_core.settings import RaySettings


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[None]:
    """Join ``settings.address`` or start a local cluster bound to loopback; shut down what we started."""
    import ray

    if ray.is_initialized():
        yield
        return
    # Ray Data's per-operator progress bars flood logs of non-interactive runs.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if settings.address:
        ray.init(address=settings.address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=settings.num_cpus,
            include_dashboard=settings.include_dashboard,
            _node_ip_address=settings.node_ip_address,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        yield
    finally:
        ray.shutdown()
