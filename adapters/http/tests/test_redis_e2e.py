"""The service with a real redis-server: shared cache, an outage, recovery, shared rate limits."""

from __future__ import annotations

import time

import pytest


def test_results_are_cached_in_redis(make_server, plain_host, redis_server) -> None:
    srv = make_server(plain_host, redis_url=redis_server.url, cache_ttl=120)
    with srv.client() as client:
        first = client.post("/analyze", json={"text": "into redis"}).json()
        keys = redis_server.client().keys("lmlens:result:*")
        assert len(keys) == 1
        assert 100_000 < redis_server.client().pttl(keys[0]) <= 120_000  # CACHE_TTL applied
        second = client.post("/analyze", json={"text": "into redis"}).json()
        health = client.get("/health").json()
    assert first["cached"] is False and second["cached"] is True
    assert health["cache"] == {"backend": "redis", "healthy": True, "error": None}
    # another server process on the same Redis gets the hit without computing
    other = make_server(plain_host, redis_url=redis_server.url)
    with other.client() as client:
        assert client.post("/analyze", json={"text": "into redis"}).json()["cached"] is True


def test_outage_keeps_answering_then_caching_resumes(make_server, plain_host, redis_server) -> None:
    if not redis_server.can_stop:
        pytest.skip("an outside REDIS_URL server cannot be stopped by the test")
    srv = make_server(plain_host, redis_url=redis_server.url, rate_limit=100)
    with srv.client() as client:
        assert client.post("/analyze", json={"text": "before"}).json()["cached"] is False
        assert client.post("/analyze", json={"text": "before"}).json()["cached"] is True

        redis_server.stop()
        during = [client.post("/analyze", json={"text": "during"}) for _ in range(2)]
        assert [r.status_code for r in during] == [200, 200]
        assert [r.json()["cached"] for r in during] == [False, False]  # uncached, not failing
        assert client.post("/analyze", json={"text": "before"}).status_code == 200
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert health["cache"]["backend"] == "redis" and health["cache"]["healthy"] is False
        assert health["cache"]["error"]
        assert str(redis_server.port) not in str(health)  # no Redis address on /health (issue 11, item 17)

        redis_server.start()  # empty: no persistence
        deadline = time.monotonic() + 5
        while client.get("/health").json()["status"] != "ok":  # the health check pings
            assert time.monotonic() < deadline, "caching did not resume"
            time.sleep(0.1)
        assert client.post("/analyze", json={"text": "after"}).json()["cached"] is False
        assert client.post("/analyze", json={"text": "after"}).json()["cached"] is True
    assert len(redis_server.client().keys("lmlens:result:*")) == 1


def test_rate_limit_is_shared_through_redis(make_server, plain_host, redis_server) -> None:
    one = make_server(plain_host, redis_url=redis_server.url, rate_limit=3, rate_window_s=30)
    two = make_server(plain_host, redis_url=redis_server.url, rate_limit=3, rate_window_s=30)
    with one.client() as a, two.client() as b:
        statuses = [a.post("/analyze", json={"text": "x"}).status_code,
                    b.post("/analyze", json={"text": "x"}).status_code,
                    a.post("/analyze", json={"text": "x"}).status_code]
        limited = b.post("/analyze", json={"text": "x"})
        health = b.get("/health")  # reading is never limited
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 30
    assert health.status_code == 200
