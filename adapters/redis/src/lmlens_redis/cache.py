"""``lmlens.cache.Cache`` in Redis: encoded results under their cache key, with a TTL."""

from __future__ import annotations

import logging

import redis

from lmlens_redis.link import LinkHealth, RedisLink, RedisUnavailable

log = logging.getLogger(__name__)


class RedisCache:
    """Get and set bytes in Redis; while Redis is down, every get misses and every set is dropped.

    ``default_ttl`` (seconds) applies when a caller gives no TTL: the analyzer stores
    results without one, and a shared Redis must not fill up forever.
    """

    def __init__(self, link: RedisLink | str, *, default_ttl: float | None = 3600.0) -> None:
        self.link = link if isinstance(link, RedisLink) else RedisLink(link)
        self.default_ttl = default_ttl

    def get(self, key: str) -> bytes | None:
        try:
            value = self.link.call(lambda client: client.get(key))
        except RedisUnavailable:
            return None
        except redis.RedisError as exc:  # a command error is a miss, not an outage
            log.warning("redis cache get failed: %s", exc)
            return None
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        ttl = ttl if ttl is not None else self.default_ttl
        px = max(1, int(ttl * 1000)) if ttl else None
        try:
            self.link.call(lambda client: client.set(key, value, px=px))
        except RedisUnavailable:
            return
        except redis.RedisError as exc:  # e.g. OOM with maxmemory: caching is best effort
            log.warning("redis cache set failed: %s", exc)

    @property
    def healthy(self) -> bool:
        return self.link.healthy

    def health(self) -> LinkHealth:
        return self.link.ping()
