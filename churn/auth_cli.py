"""``churn auth``: hash client secrets for the principals file and create JWT signing keys.

Mounted by ``churn/cli.py`` as a sub-app. ``keygen`` falls back to the ``serve.auth`` settings
of the main command's ``--env`` for anything not given on the command line. The API module is
imported inside the commands so ``churn --help`` stays instant.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from churn.failures import one_line_errors_for

auth_app = typer.Typer(
    no_args_is_help=True,
    help="Hash client secrets for the principals file and create JWT signing keys.",
)


class Algorithm(StrEnum):
    """JWT signing algorithms the API supports."""

    HS256 = "HS256"
    RS256 = "RS256"


one_line_errors = one_line_errors_for("churn auth")


@auth_app.command("hash")
@one_line_errors
def hash_command(
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the secret from standard input, not a prompt.")
    ] = False,
) -> None:
    """Print the argon2id hash of a secret, for ``secret_hash`` in a principals file."""
    if stdin:
        # Only the line ending goes: `echo secret | churn auth hash --stdin` hashes "secret".
        secret = sys.stdin.read().rstrip("\r\n")
    else:
        secret = typer.prompt("Secret", hide_input=True, confirmation_prompt=True)
    from serve_apps.auth import hash_secret

    typer.echo(hash_secret(secret))


@auth_app.command("keygen")
@one_line_errors
def keygen_command(
    kid: Annotated[
        str | None, typer.Option("--kid", help="Key id (default: serve.auth.active_kid).")
    ] = None,
    algorithm: Annotated[
        Algorithm | None,
        typer.Option("--algorithm", help="Signing algorithm (default: serve.auth.algorithm)."),
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option("--keys-dir", help="Folder of keys (default: serve.auth.keys_dir)."),
    ] = None,
) -> None:
    """Create a signing key unless it exists, and print its path (never the key)."""
    from serve_apps.auth import ensure_key

    if kid is None or algorithm is None or keys_dir is None:
        from churn import cli

        s = cli.settings()
        kid = kid or s.serve.auth.active_kid
        algorithm = algorithm or Algorithm(s.serve.auth.algorithm)
        keys_dir = keys_dir or s.resolve(s.serve.auth.keys_dir)
    existed = any((keys_dir / f"{kid}{suffix}").exists() for suffix in (".secret", ".pem"))
    path = ensure_key(keys_dir, kid, algorithm.value)
    typer.echo(f"{path} (already existed, left unchanged)" if existed else str(path))
