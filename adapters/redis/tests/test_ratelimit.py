"""RedisRateLimiter against a real redis-server."""

from __future__ import annotations

import time

import pytest

from lmlens_redis import RedisLink, RedisRateLimiter
from lmlens_redis.testing import RedisServer


def test_counts_per_client_and_window(redis_server: RedisServer) -> None:
    limiter = RedisRateLimiter(redis_server.url, limit=3, window_s=10)
    assert [limiter.hit("a") for _ in range(3)] == [(True, 0.0)] * 3
    denied = limiter.hit("a")
    assert denied is not None
    allowed, retry_after = denied
    assert not allowed and 0 < retry_after <= 10
    assert limiter.hit("b") == (True, 0.0)  # another client has its own count


def test_processes_share_the_count(redis_server: RedisServer) -> None:
    one = RedisRateLimiter(redis_server.url, limit=2, window_s=10)
    two = RedisRateLimiter(redis_server.url, limit=2, window_s=10)
    assert one.hit("c") == (True, 0.0)
    assert two.hit("c") == (True, 0.0)
    result = one.hit("c")
    assert result is not None and result[0] is False


def test_window_ends(redis_server: RedisServer) -> None:
    limiter = RedisRateLimiter(redis_server.url, limit=1, window_s=0.15)
    assert limiter.hit("d") == (True, 0.0)
    result = limiter.hit("d")
    assert result is not None and result[0] is False
    time.sleep(0.2)
    assert limiter.hit("d") == (True, 0.0)


def test_down_means_unknown(redis_server: RedisServer) -> None:
    if not redis_server.can_stop:
        pytest.skip("an outside REDIS_URL server cannot be stopped by the test")
    limiter = RedisRateLimiter(RedisLink(redis_server.url, retry_after=0.01), limit=1)
    redis_server.stop()
    assert limiter.hit("e") is None
    redis_server.start()
    time.sleep(0.02)
    assert limiter.hit("e") == (True, 0.0)


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RedisRateLimiter("redis://127.0.0.1:1/0", limit=0)
