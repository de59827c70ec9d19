"""Per-client fixed-window rate limits, counted in Redis so every replica shares them.

When Redis is absent or down each replica counts in its own memory: the limit then holds per
replica rather than not at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from serve_apps.redis_link import RedisLink


@dataclass(frozen=True)
class Admission:
    """The verdict on one request."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int


class RateLimiter:
    """Counts requests per client and window; refuses the ones over the limit."""

    def __init__(
        self,
        link: RedisLink,
        window_s: int,
        default_limit: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._window_s = window_s
        self._default_limit = default_limit
        self._clock = clock
        self._local: TTLCache[str, int] = TTLCache(maxsize=100_000, ttl=window_s + 1)

    async def admit(self, client_id: str, limit: int | None = None) -> Admission:
        """Count one request of ``client_id`` and say whether it may go on."""
        limit = limit or self._default_limit
        now = self._clock()
        window = int(now // self._window_s)
        key = f"churn:rl:{client_id}:{window}"
        count = await self._count_in_redis(key)
        if count is None:
            count = self._local.get(key, 0) + 1
            self._local[key] = count
        retry_after = max(1, math.ceil((window + 1) * self._window_s - now))
        return Admission(
            allowed=count <= limit,
            limit=limit,
            remaining=max(0, limit - count),
            retry_after_s=retry_after,
        )

    async def _count_in_redis(self, key: str) -> int | None:
        async def incr(client: object) -> int:
            pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
            pipe.incr(key)
            # The key outlives its window by a second so a slow clock never resets a count.
            pipe.expire(key, self._window_s + 1, nx=True)
            count, _ = await pipe.execute()
            return int(count)

        return await self._link.call(incr)
