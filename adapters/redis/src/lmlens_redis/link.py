"""One Redis connection pool with a circuit breaker and a health report.

When a call fails with a connection error the link is marked down, and for
``retry_after`` seconds every call fails at once with ``RedisUnavailable`` instead of
waiting on a socket timeout; the first call after that tries Redis again, and a
success marks the link up. redis-py reconnects its pooled sockets by itself, so
nothing has to be rebuilt when Redis comes back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")

# Errors that mean "Redis is not there" (as opposed to a bad command).
_DOWN_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisUnavailable(Exception):
    """Redis could not be reached (now, or a moment ago and the retry pause has not passed)."""


class LinkHealth(msgspec.Struct, frozen=True, kw_only=True):
    healthy: bool
    url: str  # without the password
    error: str | None = None
    down_for_s: float | None = None


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


class RedisLink:
    """A redis-py client that fails fast while Redis is down and recovers by itself."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 1.0,
        retry_after: float = 1.0,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = url
        self.retry_after = retry_after
        # No client-side retries: one failed attempt is enough to go uncached, and
        # retrying with backoff would make every request slow while Redis is down.
        self.client = client or redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0
        self._error: str | None = None

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    def call(self, operation: Callable[[redis.Redis], T]) -> T:
        """Run ``operation(client)``; raise ``RedisUnavailable`` when Redis is unreachable."""
        if self._down_since is not None and time.monotonic() < self._next_try:
            raise RedisUnavailable(self._error or "redis is down")
        try:
            result = operation(self.client)
        except _DOWN_ERRORS as exc:
            self._mark_down(exc)
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self._mark_up()
        return result

    def ping(self) -> LinkHealth:
        """Ask Redis now (ignoring the retry pause) and report."""
        try:
            self.client.ping()
        except _DOWN_ERRORS as exc:
            self._mark_down(exc)
        else:
            self._mark_up()
        return self.health()

    def health(self) -> LinkHealth:
        down_since = self._down_since
        return LinkHealth(
            healthy=down_since is None,
            url=_redact(self.url),
            error=self._error if down_since is not None else None,
            down_for_s=None if down_since is None else round(time.monotonic() - down_since, 3),
        )

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
            self._next_try = now + self.retry_after
            self._error = f"{type(exc).__name__}: {exc}"

    def _mark_up(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            self._down_since = None
            self._error = None

    def close(self) -> None:
        self.client.close()
