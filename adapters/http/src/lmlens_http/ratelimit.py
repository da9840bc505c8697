"""Per-client rate limits: counted in Redis when there is one, in process otherwise.

While Redis is down the in-process counter takes over, so a limit still holds (per
process) and no request fails because of the limiter.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Protocol

from starlette.requests import HTTPConnection

from lmlens_http.errors import RateLimitedError
from lmlens_http.schemas import CacheHealth


class Counter(Protocol):
    def hit(self, client: str) -> tuple[bool, float] | None: ...


class MemoryRateLimiter:
    """Fixed windows per client, in this process."""

    def __init__(self, limit: int, window_s: float, max_clients: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hit(self, client: str) -> tuple[bool, float]:
        now = time.monotonic()
        with self._lock:
            start, count = self._windows.get(client, (now, 0))
            if now - start >= self.window_s:
                start, count = now, 0
            count += 1
            self._windows[client] = (start, count)
            if len(self._windows) > self.max_clients:  # forget the oldest windows
                for old in sorted(self._windows, key=lambda c: self._windows[c][0])[: self.max_clients // 10]:
                    del self._windows[old]
        if count <= self.limit:
            return True, 0.0
        return False, self.window_s - (now - start)


class RateLimiter:
    """Ask the primary counter (Redis); when it cannot answer, the in-process one."""

    def __init__(self, limit: int, window_s: float, primary: Counter | None = None, link: Any = None):
        self.limit = limit
        self.primary = primary
        self.link = link
        self.fallback = MemoryRateLimiter(limit, window_s)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def check(self, client: str) -> None:
        if not self.enabled:
            return
        decision = self.primary.hit(client) if self.primary is not None else None
        if decision is None:
            decision = self.fallback.hit(client)
        allowed, retry_after = decision
        if not allowed:
            raise RateLimitedError(
                f"more than {self.limit} requests in the window; retry in {retry_after:.1f} s",
                retry_after=max(1, math.ceil(retry_after)),
            )

    def health(self) -> CacheHealth:
        if self.link is None:
            return CacheHealth(backend="memory", healthy=True)
        from lmlens_http.caching import public_error

        report = self.link.health()
        return CacheHealth(backend="redis", healthy=report.healthy, error=public_error(report.error))


def client_id(conn: HTTPConnection) -> str:
    """The API key's digest when keys are on, else the peer address (forwarded headers
    are not trusted: they are the client's to set)."""
    state = conn.scope.get("state") or {}
    if state.get("client"):
        return str(state["client"])
    return conn.client.host if conn.client else "unknown"


def build_limiter(limit: int, window_s: float, link: Any = None) -> RateLimiter:
    if link is None or limit <= 0:
        return RateLimiter(limit, window_s)
    from lmlens_redis import RedisRateLimiter

    return RateLimiter(limit, window_s, RedisRateLimiter(link, limit=limit, window_s=window_s), link)
