"""``churn score``: placeholder replaced by the batch-scoring and recovery work in progress."""

from __future__ import annotations


def score_command() -> None:
    """Not built yet."""
    raise NotImplementedError("churn score is being built")
