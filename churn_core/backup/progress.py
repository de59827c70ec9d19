"""How backup and restore report progress (the CLI draws it with rich; tests pass nothing)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Protocol, TypeVar

T = TypeVar("T")


class Reporter(Protocol):
    """Receives the current stage and the bytes moved (called from worker threads too)."""

    def stage(self, name: str, total_bytes: int | None = None) -> None:
        """A new stage starts; ``total_bytes`` when known in advance."""
        ...

    def advance(self, n_bytes: int) -> None:
        """``n_bytes`` more were copied in the current stage."""
        ...


class SilentReporter:
    """Reports nothing."""

    def stage(self, name: str, total_bytes: int | None = None) -> None:
        """Ignore the stage."""

    def advance(self, n_bytes: int) -> None:
        """Ignore the bytes."""


class LockedReporter:
    """Serialises calls to a reporter that is not thread-safe."""

    def __init__(self, inner: Reporter) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def stage(self, name: str, total_bytes: int | None = None) -> None:
        """Forward under the lock."""
        with self._lock:
            self._inner.stage(name, total_bytes)

    def advance(self, n_bytes: int) -> None:
        """Forward under the lock."""
        with self._lock:
            self._inner.advance(n_bytes)


def run_parallel(tasks: Iterable[Callable[[], T]], workers: int) -> list[T]:
    """Run ``tasks`` on ``workers`` threads; results in task order; the first failure raises.

    Tasks not yet started when one fails are cancelled, so a failed backup stops copying.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup") as pool:
        futures: list[Future[T]] = [pool.submit(task) for task in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            error = failed.exception()
            assert error is not None
            raise error
        return [future.result() for future in futures]
