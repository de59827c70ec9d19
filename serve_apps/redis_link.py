"""One Redis connection per replica, with a circuit breaker so a dead Redis costs nothing.

The API must keep answering when Redis is down (uncached, rate-limited per replica): every
call goes through :meth:`RedisLink.call`, which returns ``None`` instead of raising when Redis
is unreachable and remembers why, for ``/readyz`` and the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from churn_core.settings import TlsSettings
from churn_core.tls import redis_options

T = TypeVar("T")

# After a failure, calls skip Redis for this long instead of each waiting for a timeout.
OPEN_CIRCUIT_S = 1.0


class RedisLink:
    """A shared async Redis client that degrades instead of failing."""

    def __init__(
        self,
        url: str | None,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        tls: TlsSettings | None = None,
        tls_setting: str = "serve.redis_tls",
    ) -> None:
        self._client: aioredis.Redis | None = None
        if url:
            # A missing TLS file fails here, when the replica starts, naming the setting.
            url, tls_options = redis_options(url, tls or TlsSettings(), tls_setting)
            self._client = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=30,
                **tls_options,
            )
        self._clock = clock
        self._open_until = 0.0
        self.last_error: str | None = None
        self.failures = 0

    @property
    def configured(self) -> bool:
        """Whether a Redis URL was given at all."""
        return self._client is not None

    @property
    def up(self) -> bool:
        """Configured, and the last call did not fail."""
        return self._client is not None and self.last_error is None

    def status(self) -> str:
        """``ok``, ``not configured`` or the last error in one line."""
        if self._client is None:
            return "not configured"
        return "ok" if self.last_error is None else f"down: {self.last_error}"

    async def call(self, action: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """Run ``action`` on the client; ``None`` when Redis is absent, down or misbehaving."""
        if self._client is None or self._clock() < self._open_until:
            return None
        try:
            result = await action(self._client)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._trip(f"{type(exc).__name__}: {_one_line(exc)}")
            return None
        except RedisError as exc:  # e.g. OOM or READONLY: degrade the same way
            self._trip(f"{type(exc).__name__}: {_one_line(exc)}")
            return None
        self.last_error = None
        return result

    async def ping(self) -> bool:
        """Probe Redis now, ignoring the breaker (``/readyz``)."""
        self._open_until = 0.0
        return bool(await self.call(lambda client: client.ping()))

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()

    def _trip(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        self._open_until = self._clock() + OPEN_CIRCUIT_S


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
