"""``churn backup``, ``churn restore``, ``churn restore-table``: backups and recovery.

Registered at the top level by ``churn/cli.py``; the work lives in ``churn_core/backup/`` and is
imported inside the commands so ``churn --help`` stays instant. Every failure is one line on
stderr and exit code 1 (a corrupt backup names the file; a refused restore names the store).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from churn.failures import one_line_errors_for

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from churn_core.backup.storage import BackupStore

backup_app = typer.Typer()
one_line_errors = one_line_errors_for("churn")
_TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def human_bytes(size: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class RichReporter:
    """Shows the current stage and its bytes on one rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task("starting", total=None)

    def stage(self, name: str, total_bytes: int | None = None) -> None:
        """Restart the bar for a new stage."""
        self._progress.reset(self._task, description=name, total=total_bytes, completed=0)

    def advance(self, n_bytes: int) -> None:
        """Move the bar on."""
        self._progress.advance(self._task, n_bytes)


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from churn import cli

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=cli.console,
        transient=True,
    )


def _list_backups(store: BackupStore) -> None:
    from rich.table import Table

    from churn import cli
    from churn_core.backup.manifest import BackupError

    table = Table(
        "id",
        "created (UTC)",
        "size",
        "files",
        "delta",
        "models",
        "code",
        "key",
        title=store.description,
    )
    for backup_id in store.ids():
        try:
            m = store.manifest(backup_id)
        except BackupError as error:
            table.add_row(backup_id, "-", "-", "-", "-", f"[red]{error}[/red]", "-", "-")
            continue
        versions = sum(len(x.versions) for x in (m.registry.models.values() if m.registry else []))
        table.add_row(
            backup_id,
            f"{m.created_at:%Y-%m-%d %H:%M:%S}",
            human_bytes(m.total_bytes),
            str(len(m.files)),
            str(len(m.delta)),
            str(versions),
            m.code_version[:10],
            m.encryption.key_id if m.encryption else "-",
        )
    cli.console.print(table)
    for folder in store.incomplete():
        cli.console.print(f"[yellow]incomplete[/yellow] {folder} (interrupted or still running)")


@backup_app.command("backup")
@one_line_errors
def backup_command(
    verify: Annotated[
        str | None,
        typer.Option(
            "--verify", metavar="ID", help="Re-check every file of backup ID (or 'latest')."
        ),
    ] = None,
    list_backups: Annotated[
        bool, typer.Option("--list", help="List the complete backups and stop.")
    ] = False,
) -> None:
    """Back up PostgreSQL, the registry, model artifacts, every Delta table and the configs."""
    import time

    from churn import cli
    from churn_core.backup.create import create_backup, open_store

    s = cli.settings()
    if list_backups:
        _list_backups(open_store(s))
        return
    if verify is not None:
        store = open_store(s)
        started = time.perf_counter()
        backup_id = store.resolve(verify)
        with _progress() as progress:
            manifest = store.verify(backup_id, s.backup.workers, RichReporter(progress))
        if manifest.encryption is None:
            result = "ok"
        elif store.keyring is None:
            # Still worth running: it finds missing, truncated or bit-rotted files.
            result = "ok (ciphertext checksums only: no encryption key configured)"
        else:
            result = f"ok (decrypted with key {manifest.encryption.key_id})"
        cli._done(
            "verify",
            time.perf_counter() - started,
            backup=backup_id,
            files=len(manifest.files),
            bytes=human_bytes(manifest.total_bytes),
            result=result,
        )
        return
    with _progress() as progress:
        summary = create_backup(s, reporter=RichReporter(progress))
    cli._done(
        "backup",
        summary.seconds,
        id=summary.id,
        files=summary.files,
        bytes=human_bytes(summary.bytes),
        delta_tables=summary.delta_tables,
        postgres=summary.postgres_databases,
        mongodb=summary.mongodb_databases,
        model_versions=summary.model_versions,
        configs=summary.configs,
        deleted=len(summary.deleted),
        location=summary.location,
    )


@backup_app.command("restore")
@one_line_errors
def restore_command(
    backup: Annotated[str, typer.Argument(help="A backup id, or 'latest'.")] = "latest",
    force: Annotated[
        bool, typer.Option(help="Overwrite targets that are not empty (default: refuse).")
    ] = False,
    create_databases: Annotated[
        bool, typer.Option(help="Create PostgreSQL databases that do not exist.")
    ] = True,
    configs_to: Annotated[
        Path | None,
        typer.Option(help="Also write the backed-up configs (secrets redacted) into this folder."),
    ] = None,
    allow_unencrypted: Annotated[
        bool,
        typer.Option(
            help="Restore an unencrypted backup although encryption.backups is on "
            "(one taken before encryption was switched on)."
        ),
    ] = False,
) -> None:
    """Rebuild every store from a backup (checksums verified first), into empty stores."""
    from churn import cli
    from churn_core.backup.restore import restore_backup

    s = cli.settings()
    with _progress() as progress:
        summary = restore_backup(
            s,
            backup,
            force=force,
            create_databases=create_databases,
            configs_to=configs_to,
            reporter=RichReporter(progress),
            allow_unencrypted=allow_unencrypted,
        )
    versions = ",".join(f"{name}@v{v}" for name, v in summary.delta_versions.items()) or "-"
    cli._done(
        "restore",
        summary.seconds,
        id=summary.id,
        files=summary.files,
        bytes=human_bytes(summary.bytes),
        delta_tables=len(summary.delta_versions),
        postgres=summary.postgres_databases,
        created_databases=len(summary.created_databases),
        mongodb_documents=summary.mongodb_documents,
        model_versions=summary.model_versions,
        configs=summary.configs,
    )
    cli.console.print(f"Delta versions kept (numbering preserved): {versions}", highlight=False)


def restore_table_command(
    table: Annotated[
        str, typer.Argument(help="A table under the data set's lake (silver/customers) or a path.")
    ],
    version: Annotated[
        int | None, typer.Option(min=0, help="Bring back the content of this version.")
    ] = None,
    before: Annotated[
        datetime | None,
        typer.Option(
            formats=_TIME_FORMATS,
            metavar="YYYY-MM-DD[THH:MM[:SS]]",
            help="Bring back the version current just before this time (UTC).",
        ),
    ] = None,
) -> None:
    """Undo bad writes to one Delta table: version N's content becomes a new version."""
    from churn import cli
    from churn_core.backup.manifest import BackupError
    from churn_core.backup.time_travel import resolve_table, restore_version, version_before

    if (version is None) == (before is None):
        raise BackupError("give exactly one of --version N or --before TIME")
    s = cli.settings()
    path = resolve_table(s.dataset_lake, table)
    if version is None:
        assert before is not None  # exactly one of the two is set
        version = version_before(path, before)
    result = restore_version(path, version)
    cli._done(
        "restore",
        result.seconds,
        table=table,
        version=f"{result.previous_version}->{result.new_version}",
        content_of=result.target_version,
        rows=f"{result.rows_before}->{result.rows_after}",
        files_removed=result.files_removed,
        files_restored=result.files_restored,
    )


# The failure line names the command as typed ("churn restore-table failed: ...").
restore_table_command.__name__ = "restore-table_command"
backup_app.command("restore-table")(one_line_errors(restore_table_command))
