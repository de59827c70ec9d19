"""``churn materialize``: the latest gold features of every customer into the online store.

Registered by ``churn/cli.py``; heavy modules are imported inside the command so
``churn --help`` stays instant.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from churn_core.settings import Settings


def run_materialize(s: Settings) -> None:
    """Gold -> Redis and/or PostgreSQL (whichever ``serve.online_store`` URLs are set)."""
    from rich.progress import Progress

    from churn import cli
    from churn_core.contract import load_contract
    from churn_core.tables import Tables
    from pipelines.online_store import materialize_online_features
    from pipelines.session import spark_session

    contract = load_contract(s.contract_path)
    started = time.perf_counter()
    with (
        spark_session(s.spark) as spark,
        Progress(console=cli.console, transient=True) as progress,
    ):
        task = progress.add_task("materialize: gold -> online store", total=None)
        summary = materialize_online_features(
            spark,
            s,
            contract,
            Tables(s.dataset_lake),
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    cli._done(
        "online",
        time.perf_counter() - started,
        customers=summary.customers,
        snapshot_date=summary.snapshot_date or "-",
        redis=summary.redis_written,
        postgres=summary.postgres_written,
    )


def materialize_command() -> None:
    """Latest gold features per customer -> Redis (serving) and PostgreSQL (fallback)."""
    from churn import cli

    run_materialize(cli.settings())
