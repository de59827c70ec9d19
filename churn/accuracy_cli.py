"""``churn accuracy``: placeholder replaced by the monitoring work in progress."""

from __future__ import annotations


def accuracy_command() -> None:
    """Not built yet."""
    raise NotImplementedError("churn accuracy is being built")
