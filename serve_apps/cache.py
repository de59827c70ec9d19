"""The prediction cache: model version + canonical feature hash -> score and reasons.

The version (and artifact checksum) is part of the key, so a new model version can never answer from an old one's
entries; entries also expire after ``cache_ttl_s``. Without Redis (not configured or down) the
replica's own memory holds the cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from cachetools import TTLCache

from serve_apps.redis_link import RedisLink

LOCAL_ENTRIES = 50_000


def feature_hash(features: Mapping[str, Any]) -> str:
    """A hash of the features that ignores key order (the same customer, the same hash)."""
    canonical = orjson.dumps(dict(features), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


class PredictionCache:
    """Redis first, the replica's memory when Redis is absent or down."""

    def __init__(self, link: RedisLink, model_name: str, ttl_s: int) -> None:
        self._link = link
        self._prefix = f"churn:pred:{model_name}"
        self._ttl_s = ttl_s
        self._local: TTLCache[str, bytes] = TTLCache(maxsize=LOCAL_ENTRIES, ttl=max(ttl_s, 1))

    @property
    def enabled(self) -> bool:
        """A TTL of 0 turns caching off."""
        return self._ttl_s > 0

    def key(self, version: int, artifact_sha256: str, features: Mapping[str, Any]) -> str:
        """The cache key of ``features`` scored by model ``version``.

        The artifact's checksum is in the key too: two registries sharing one Redis (a laptop
        and a benchmark, staging and production) both have a "version 1".
        """
        return f"{self._prefix}:v{version}:{artifact_sha256[:12]}:{feature_hash(features)}"

    async def get(self, key: str) -> dict[str, Any] | None:
        """The cached entry, or ``None``."""
        if not self.enabled:
            return None
        raw: bytes | str | None = None
        if self._link.configured:
            raw = await self._link.call(lambda client: client.get(key))
        if raw is None and not self._link.up:
            raw = self._local.get(key)
        return orjson.loads(raw) if raw is not None else None

    async def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Store ``entry`` under ``key`` for the TTL."""
        if not self.enabled:
            return
        raw = orjson.dumps(dict(entry))
        if self._link.configured:
            stored = await self._link.call(lambda client: client.set(key, raw, ex=self._ttl_s))
            if stored:
                return
        self._local[key] = raw
