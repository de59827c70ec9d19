"""``churn schedule``: placeholder replaced by the batch-scoring and recovery work in progress."""

from __future__ import annotations


def schedule_command() -> None:
    """Not built yet."""
    raise NotImplementedError("churn schedule is being built")
