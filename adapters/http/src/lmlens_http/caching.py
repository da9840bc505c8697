"""Which result cache the service uses: Redis when ``REDIS_URL`` is set, else in process.

The analyzer stores results without a TTL, so both backends apply ``CACHE_TTL``
as their default.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
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


def public_error(error: str | None) -> str | None:
    """What /health may say about a Redis error: its kind, not the address in its message."""
    if error is None:
        return None
    return f"redis unreachable ({error.split(':', 1)[0].strip() or 'error'})"


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
        return CacheHealth(backend="redis", healthy=report.healthy, error=public_error(report.error))


def build_cache(config: ServiceConfig) -> CacheBackend:
    if not config.redis_url:
        return CacheBackend(MemoryTTLCache(config.memory_cache_entries, config.cache_ttl), "memory")
    from lmlens_redis import RedisCache, RedisLink  # optional: lmlens-http[redis]

    link = RedisLink(config.redis_url, socket_timeout=config.redis_timeout_s)
    return CacheBackend(RedisCache(link, default_ttl=config.cache_ttl), "redis", link)


class EncodedResponses:
    """Recent cache-hit responses, already encoded, so a hot hit costs no decode and no encode.

    Keyed by the analyzer's cache key (text, model revision, plugin versions, params)
    and the format: a result under one key never changes, so serving these bytes is
    as correct as decoding the cached result again. Bounded in bytes; entries live
    at most ``ttl`` seconds, like the cache entry they came from.
    """

    def __init__(self, max_bytes: int, ttl: float | None) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._entries: OrderedDict[tuple[str, bool], tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, bool]) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: tuple[str, bool], body: bytes) -> None:
        if len(body) > self.max_bytes // 4:
            return  # one huge result must not flush everything else
        expires = time.monotonic() + (self.ttl or float("inf"))
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (body, expires)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[str, bool]) -> None:
        body, _ = self._entries.pop(key)
        self._bytes -= len(body)
