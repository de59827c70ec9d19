"""``churn drift``: placeholder replaced by the monitoring work in progress."""

from __future__ import annotations


def drift_command() -> None:
    """Not built yet."""
    raise NotImplementedError("churn drift is being built")
