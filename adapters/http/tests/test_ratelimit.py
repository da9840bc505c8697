"""Rate limits without Redis, over real HTTP and WebSocket, and the in-process counter."""

from __future__ import annotations

import json
import time

from websockets.sync.client import connect

from lmlens_http.ratelimit import MemoryRateLimiter, RateLimiter


def test_post_requests_are_limited_per_client(make_server, plain_host) -> None:
    srv = make_server(plain_host, rate_limit=2, rate_window_s=60)
    with srv.client() as client:
        statuses = [client.post("/analyze", json={"text": "x"}).status_code for _ in range(3)]
        limited = client.post("/analyze/batch", json={"texts": ["x"]})
        reads = [client.get(p).status_code for p in ("/health", "/plugins", "/openapi.json")]
    assert statuses == [200, 200, 429]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert reads == [200, 200, 200]


def test_websocket_messages_count_too(make_server, plain_host) -> None:
    srv = make_server(plain_host, rate_limit=1, rate_window_s=60)
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps({"type": "analyze", "text": "a"}))
        while json.loads(ws.recv(timeout=30))["type"] == "progress":
            pass
        ws.send(json.dumps({"type": "analyze", "text": "b"}))
        answer = json.loads(ws.recv(timeout=30))
    assert answer["type"] == "error" and answer["data"]["code"] == "rate_limited"


def test_memory_window_resets() -> None:
    limiter = MemoryRateLimiter(limit=2, window_s=0.1)
    assert [limiter.hit("a")[0] for _ in range(3)] == [True, True, False]
    assert limiter.hit("b")[0] is True
    time.sleep(0.12)
    assert limiter.hit("a")[0] is True


class _DownCounter:
    def hit(self, client: str) -> None:
        return None  # what the Redis counter answers while Redis is down


def test_falls_back_to_counting_in_process() -> None:
    limiter = RateLimiter(1, 60, primary=_DownCounter())
    limiter.check("c")
    try:
        limiter.check("c")
    except Exception as exc:
        assert getattr(exc, "code", None) == "rate_limited"
    else:
        raise AssertionError("the in-process counter must still limit")
