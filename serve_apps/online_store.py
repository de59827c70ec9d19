"""Online feature lookups for ``/predict`` by customer id: Redis first, PostgreSQL as fallback.

``churn materialize`` (``pipelines/online_store.py``) writes each customer's latest gold features
to both stores. A replica reads Redis with short timeouts; a key that is absent, or a Redis that
does not answer, sends the lookup to PostgreSQL. After a Redis connection error, Redis is skipped
for a moment (a small circuit breaker), so a dead Redis costs one timeout per second, not one
per request. :meth:`OnlineFeatureStore.status` keeps the last outcome of each backend for
``/readyz``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from churn_core.online_features import decode_features, describe_error, feature_key, lookup_sql
from churn_core.settings import OnlineStoreSettings, TlsSettings
from churn_core.tls import postgres_params, redis_options

__all__ = ["OnlineFeatureStore", "OnlineLookup", "OnlineStoreUnavailable"]

Source = Literal["redis", "postgres"]
_RedisOutcome = Literal["hit", "absent", "failed", "disabled"]

OK = "ok"
DISABLED = "disabled"
# Errors that say "Redis is not there" (as opposed to "Redis refused this command"): only
# these open the circuit breaker.
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class OnlineStoreUnavailable(RuntimeError):
    """No backend could answer a lookup (the caller answers 503); one line, no passwords."""


@dataclass(frozen=True)
class OnlineLookup:
    """A customer's materialised features, their gold snapshot, and which store answered."""

    features: dict[str, Any]
    snapshot_date: str
    source: Source


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # orjson parses jsonb several times faster than the stdlib json module psycopg defaults to.
    set_json_loads(orjson.loads, conn)


class OnlineFeatureStore:
    """Look up a customer's latest features for one contract; see the module docstring.

    ``timeout_s`` bounds each Redis connect and read; ``postgres_timeout_s`` bounds waiting for
    a pooled PostgreSQL connection; ``breaker_s`` is how long Redis is skipped after it failed
    to answer. A backend whose URL is unset is skipped; at least one must be set.
    """

    def __init__(
        self,
        settings: OnlineStoreSettings,
        contract_name: str,
        *,
        timeout_s: float = 0.25,
        postgres_timeout_s: float = 1.0,
        breaker_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis_url = _secret(settings.redis_url)
        self._postgres_url = _secret(settings.postgres_url)
        if self._redis_url is None and self._postgres_url is None:
            raise ValueError("online store needs serve.online_store.redis_url or postgres_url")
        self._prefix = settings.key_prefix
        self._contract = contract_name
        self._lookup = lookup_sql(settings.table)
        self._postgres_timeout_s = postgres_timeout_s
        self._breaker_s = breaker_s
        self._clock = clock
        self._skip_redis_until = 0.0
        self._started = False
        self._status = {
            "redis": OK if self._redis_url else DISABLED,
            "postgres": OK if self._postgres_url else DISABLED,
        }
        self._redis = self._redis_client(self._redis_url, timeout_s, settings.redis_tls)
        self._pool = self._postgres_pool(
            self._postgres_url, postgres_timeout_s, settings.postgres_tls
        )

    @staticmethod
    def _redis_client(url: str | None, timeout_s: float, tls: TlsSettings) -> aioredis.Redis | None:
        if url is None:
            return None
        url, tls_options = redis_options(url, tls, "serve.online_store.redis_tls")
        # No retries: the fallback is PostgreSQL, not a second wait on the same dead server.
        return aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            **tls_options,
        )

    @staticmethod
    def _postgres_pool(
        url: str | None, timeout_s: float, tls: TlsSettings
    ) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None:
        if url is None:
            return None
        tls_params = postgres_params(tls, "serve.online_store.postgres_tls")
        return AsyncConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            timeout=timeout_s,
            configure=_configure,
            # A connection the server dropped (restart, idle timeout) is replaced, not returned.
            check=AsyncConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(timeout_s)),
                "application_name": "churn-online-store",
                **tls_params,
            },
            name="online-features",
        )

    async def start(self) -> None:
        """Open the PostgreSQL pool in the background (a dead server does not fail startup)."""
        if self._pool is not None and not self._started:
            await self._pool.open(wait=False)
        self._started = True

    async def close(self) -> None:
        """Close the Redis client and the PostgreSQL pool."""
        if self._redis is not None:
            await self._redis.aclose()
        if self._pool is not None:
            await self._pool.close()
        self._started = False

    def status(self) -> dict[str, str]:
        """Last outcome per backend: ``ok``, ``disabled`` or a one-line error (no passwords)."""
        return dict(self._status)

    async def get(self, customer_id: str) -> OnlineLookup | None:
        """``customer_id``'s features from Redis, else PostgreSQL; None if neither has them.

        Raises OnlineStoreUnavailable when PostgreSQL fails, or when Redis fails and there is
        no PostgreSQL to fall back to.
        """
        outcome, found = await self._from_redis(customer_id)
        if found is not None:
            return found
        if self._pool is None:
            if outcome == "failed":
                raise OnlineStoreUnavailable(
                    f"online store unavailable: redis: {self._status['redis']}; "
                    "postgres: not configured"
                )
            return None
        return await self._from_postgres(customer_id)

    async def _from_redis(self, customer_id: str) -> tuple[_RedisOutcome, OnlineLookup | None]:
        if self._redis is None:
            return "disabled", None
        if self._clock() < self._skip_redis_until:
            return "failed", None
        key = feature_key(self._prefix, self._contract, customer_id)
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError) as error:
            self._status["redis"] = describe_error(error, self._redis_url)
            if isinstance(error, _REDIS_DOWN):
                self._skip_redis_until = self._clock() + self._breaker_s
            return "failed", None
        self._status["redis"] = OK
        if raw is None:
            return "absent", None
        try:
            value = decode_features(raw)
        except ValueError as error:
            # A corrupt value is not a dead Redis: PostgreSQL holds the same row.
            self._status["redis"] = f"bad value at {key}: {describe_error(error)}"
            return "absent", None
        return "hit", OnlineLookup(value.features, value.snapshot_date, "redis")

    async def _from_postgres(self, customer_id: str) -> OnlineLookup | None:
        assert self._pool is not None
        if not self._started:
            await self.start()
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(self._lookup, (self._contract, customer_id))
                row = await cursor.fetchone()
        except (psycopg.Error, OSError) as error:
            self._status["postgres"] = describe_error(error, self._postgres_url)
            raise OnlineStoreUnavailable(
                f"online store unavailable: redis: {self._status['redis']}; "
                f"postgres: {self._status['postgres']}"
            ) from None
        self._status["postgres"] = OK
        if row is None:
            return None
        snapshot_date, features = row
        return OnlineLookup(dict(features), snapshot_date.isoformat(), "postgres")
