"""One decorator for every ``churn`` command group: a failure is one line and exit code 1.

Kept apart from ``churn/cli.py`` so the sub-apps (``churn models``, ``churn auth``) can use it
at import time without importing the main app (which mounts them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def print_failure(what: str, error: Exception) -> None:
    """One red line on stderr: ``<what> failed: <error type>: <message>``."""
    from rich.markup import escape

    from churn import cli

    # The message may hold brackets (paths, HAProxy's "[file:line]"): never markup.
    message = escape(f"{type(error).__name__}: {error}")
    cli.errors.print(f"[red]{escape(what)} failed:[/red] {message}", highlight=False)


def one_line_errors_for(group: str) -> Callable[[F], F]:
    """A decorator naming ``<group> <command>`` in the failure line of any command it wraps."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except Exception as error:
                from churn_core.logging import get_logger

                get_logger("churn.cli").debug("command failed", exc_info=True)
                print_failure(f"{group} {command.__name__.removesuffix('_command')}", error)
                raise typer.Exit(1) from None

        return wrapper  # type: ignore[return-value]

    return decorate
