"""``churn encryption``: create key-encryption keys for encryption at rest.

Mounted by ``churn/cli.py`` as a sub-app. The key is printed as ``kid:base64``, the form
``CHURN_ENCRYPTION__KEYS`` and ``encryption.keys_file`` take (a list joins them with commas or
newlines), so it can go straight into a Kubernetes Secret without being written to disk here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from churn.failures import one_line_errors_for

encryption_app = typer.Typer(
    no_args_is_help=True,
    help="Encryption at rest of backups and model artifacts: create keys.",
)
one_line_errors = one_line_errors_for("churn encryption")


@encryption_app.command("keygen")
@one_line_errors
def keygen_command(
    kid: Annotated[
        str | None,
        typer.Option(
            "--kid", help="Key id written into every file it encrypts (default: kYYYYMMDD)."
        ),
    ] = None,
) -> None:
    """Print a new random AES-256 key-encryption key as ``kid:base64`` (nothing is stored)."""
    from churn_core.encryption import check_key_id, generate_key

    name = check_key_id(kid or f"k{datetime.now(UTC):%Y%m%d}")
    typer.echo(f"{name}:{generate_key()}")
