"""RedisCache against a real redis-server, including an outage and the recovery."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lmlens import Analyzer
from lmlens.settings import Settings
from lmlens_redis import RedisCache, RedisLink
from lmlens_redis.testing import RedisServer


def make_cache(server: RedisServer, **kwargs: float) -> RedisCache:
    return RedisCache(RedisLink(server.url, retry_after=0.05), **kwargs)


def test_round_trip_keeps_bytes_exactly(redis_server: RedisServer) -> None:
    cache = make_cache(redis_server)
    payload = bytes(range(256)) * 10
    assert cache.get("k") is None
    cache.set("k", payload)
    assert cache.get("k") == payload
    assert redis_server.client().get("k") == payload  # really in Redis, not in process


def test_ttl_is_given_or_default(redis_server: RedisServer) -> None:
    cache = make_cache(redis_server, default_ttl=30.0)
    client = redis_server.client()
    cache.set("default", b"x")
    cache.set("given", b"y", ttl=5.0)
    assert 25_000 < client.pttl("default") <= 30_000
    assert 0 < client.pttl("given") <= 5_000
    RedisCache(redis_server.url, default_ttl=None).set("forever", b"z")
    assert client.pttl("forever") == -1  # no expiry at all


def test_entries_expire(redis_server: RedisServer) -> None:
    cache = make_cache(redis_server)
    cache.set("short", b"x", ttl=0.1)
    assert cache.get("short") == b"x"
    time.sleep(0.25)
    assert cache.get("short") is None


def test_command_error_is_a_miss_not_an_outage(redis_server: RedisServer) -> None:
    redis_server.client().rpush("alist", b"a")
    cache = make_cache(redis_server)
    assert cache.get("alist") is None  # WRONGTYPE from Redis
    assert cache.healthy


def test_outage_degrades_then_recovers(redis_server: RedisServer) -> None:
    if not redis_server.can_stop:
        pytest.skip("an outside REDIS_URL server cannot be stopped by the test")
    cache = make_cache(redis_server)
    cache.set("before", b"1")
    redis_server.stop()

    assert cache.get("before") is None  # a miss, not an exception
    cache.set("during", b"2")  # dropped, not an exception
    assert not cache.healthy
    health = cache.health()
    assert not health.healthy and health.error and "Connection" in health.error

    redis_server.start()  # empty again: it runs without persistence
    time.sleep(0.06)  # past retry_after
    cache.set("after", b"3")
    assert cache.get("after") == b"3"
    assert cache.healthy and cache.health().healthy
    assert cache.get("during") is None


def test_breaker_fails_fast_while_down(redis_server: RedisServer) -> None:
    if not redis_server.can_stop:
        pytest.skip("an outside REDIS_URL server cannot be stopped by the test")
    link = RedisLink(redis_server.url, retry_after=60.0)
    cache = RedisCache(link)
    redis_server.stop()
    calls = []
    real_get = link.client.get
    link.client.get = lambda *a, **k: calls.append(a) or real_get(*a, **k)  # type: ignore[method-assign]
    assert cache.get("a") is None
    assert cache.get("b") is None
    assert cache.get("c") is None
    assert len(calls) == 1  # the later gets never touched the socket
    redis_server.start()
    assert cache.get("a") is None and len(calls) == 1  # still inside the pause
    assert link.ping().healthy  # an explicit health check ignores the pause
    cache.set("a", b"1")
    assert cache.get("a") == b"1"


def test_password_is_not_reported(redis_server: RedisServer) -> None:
    link = RedisLink("redis://user:secret@127.0.0.1:1/0")
    assert "secret" not in link.health().url


def test_analyzer_uses_it_as_its_cache(redis_server: RedisServer, tiny_models, plugin_host, tmp_path) -> None:
    cache = make_cache(redis_server)
    settings = Settings(cache_dir=str(tmp_path), default_model="tiny-gpt2")
    analyzer = Analyzer(tiny_models["gpt2"], settings=settings, plugins=plugin_host, cache=cache)
    first = analyzer.analyze("The cat sat", methods=["attention"])
    keys = redis_server.client().keys("lmlens:result:*")
    assert len(keys) == 1
    # a second analyzer (another server process) gets the hit from Redis
    other = Analyzer(tiny_models["gpt2"], settings=settings, plugins=plugin_host, cache=make_cache(redis_server))
    second = other.analyze("The cat sat", methods=["attention"])
    assert not first.cached and second.cached
    np.testing.assert_array_equal(first.methods["attention"].patterns, second.methods["attention"].patterns)
    third = other.analyze("The cat sat", methods=["attention"], params={"attention": {"layers": [1]}})
    assert not third.cached  # different params, different key
    assert len(redis_server.client().keys("lmlens:result:*")) == 2
