"""``churn backup`` / ``churn restore``: placeholders replaced by the recovery work in progress."""

from __future__ import annotations

import typer

# Registered at the top level: ``churn backup``, ``churn restore``, ``churn restore-table``.
backup_app = typer.Typer()


@backup_app.command("backup")
def backup_command() -> None:
    """Not built yet."""
    raise NotImplementedError("churn backup is being built")
