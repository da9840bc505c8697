"""Which result cache the service uses: Redis when ``REDIS_URL`` is set, else in process.

The analyzer stores results without a TTL, so both backends apply ``CACHE_TTL``
as their default.
"""

from __future__ import annotations

from typing import Any

from lmlens.cache import Cache, MemoryCache
from lmlens_http.config import ServiceConfig
from lmlens_http.schemas import CacheHealth


class MemoryTTLCache(MemoryCache):
    """The kernel's in-process LRU with a default TTL."""

    def __init__(self, max_entries: int, default_ttl: float | None) -> None:
        super().__init__(max_entries)
        self.default_ttl = default_ttl

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        super().set(key, value, ttl if ttl is not None else self.default_ttl)


class CacheBackend:
    """The cache plus how to report on it."""

    def __init__(self, cache: Cache, backend: str, link: Any = None) -> None:
        self.cache = cache
        self.backend = backend
        self.link = link  # the RedisLink, shared with the rate limiter

    def health(self) -> CacheHealth:
        if self.link is None:
            return CacheHealth(backend="memory", healthy=True)
        report = self.link.ping()
        return CacheHealth(backend="redis", healthy=report.healthy, error=report.error)


def build_cache(config: ServiceConfig) -> CacheBackend:
    if not config.redis_url:
        return CacheBackend(MemoryTTLCache(config.memory_cache_entries, config.cache_ttl), "memory")
    from lmlens_redis import RedisCache, RedisLink  # optional: lmlens-http[redis]

    link = RedisLink(config.redis_url)
    return CacheBackend(RedisCache(link, default_ttl=config.cache_ttl), "redis", link)
