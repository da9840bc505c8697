"""A fixed-window request counter per client in Redis, shared by every server process."""

from __future__ import annotations

import redis

from lmlens_redis.link import RedisLink, RedisUnavailable


class RedisRateLimiter:
    """At most ``limit`` hits per client per ``window_s`` seconds, counted in Redis.

    ``hit(client)`` answers ``(allowed, retry_after_s)``, or ``None`` when Redis cannot
    be asked, so the caller can fall back to counting in process.
    """

    def __init__(
        self, link: RedisLink | str, *, limit: int, window_s: float = 60.0, prefix: str = "lmlens:rate:"
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.link = link if isinstance(link, RedisLink) else RedisLink(link)
        self.limit = limit
        self.window_ms = max(1, int(window_s * 1000))
        self.prefix = prefix

    def hit(self, client: str) -> tuple[bool, float] | None:
        key = self.prefix + client

        def count(conn: redis.Redis) -> list[int]:
            # One round trip, atomic: the window starts at the first hit (NX) and the
            # counter disappears with it.
            pipe = conn.pipeline(transaction=True)
            pipe.incr(key)
            pipe.pexpire(key, self.window_ms, nx=True)
            pipe.pttl(key)
            return pipe.execute()  # type: ignore[no-any-return]

        try:
            hits, _, ttl_ms = self.link.call(count)
        except (RedisUnavailable, redis.RedisError):
            return None
        if int(hits) <= self.limit:
            return True, 0.0
        return False, max(int(ttl_ms), 1) / 1000
