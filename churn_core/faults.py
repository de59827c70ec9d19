"""Failpoints: named places where a fault-injection test can make a job die on the spot.

A test sets ``CHURN_FAILPOINTS=bronze.after_commit.transactions`` (comma-separated names) on a job's
environment; the job then exits with ``FAILPOINT_EXIT_CODE`` at that point, without cleanup, as
a killed process would. Unset, a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os

FAILPOINT_EXIT_CODE = 75


def failpoint(name: str) -> None:
    """Exit the process at once if the ``CHURN_FAILPOINTS`` variable names this point."""
    active = os.environ.get("CHURN_FAILPOINTS")
    if active and name in active.split(","):
        os._exit(FAILPOINT_EXIT_CODE)
