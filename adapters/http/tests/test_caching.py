"""The result cache choice, and the in-process memo of encoded cache hits."""

from __future__ import annotations

import time

from lmlens_http.caching import EncodedResponses, MemoryTTLCache


def test_memory_cache_applies_the_default_ttl() -> None:
    cache = MemoryTTLCache(8, default_ttl=0.05)
    cache.set("k", b"v")
    cache.set("kept", b"v", ttl=60)
    assert cache.get("k") == b"v"
    time.sleep(0.07)
    assert cache.get("k") is None and cache.get("kept") == b"v"


def test_memo_is_bounded_in_bytes_and_time() -> None:
    memo = EncodedResponses(max_bytes=100, ttl=0.05)
    memo.put(("a", False), b"x" * 25)
    memo.put(("b", False), b"y" * 25)
    memo.get(("a", False))  # a is now the most recent
    memo.put(("c", False), b"z" * 25)
    memo.put(("d", False), b"w" * 25)
    memo.put(("e", False), b"v" * 25)  # over 100 bytes: the least recent (b) goes
    assert memo.get(("b", False)) is None and memo.get(("a", False)) == b"x" * 25
    memo.put(("huge", False), b"h" * 60)  # over a quarter of the budget: not kept
    assert memo.get(("huge", False)) is None
    time.sleep(0.07)
    assert memo.get(("a", False)) is None


def test_hot_hits_come_from_the_memo(server) -> None:
    body = {"text": "hot text"}
    with server.client() as client:
        first = client.post("/analyze", json=body)
        second = client.post("/analyze", json=body)  # decoded from the cache, encoded, memoised
        server.service.cache.cache._data.clear()  # the result cache forgets it ...
        third = client.post("/analyze", json=body)  # ... the memo still answers
        packed = client.post("/analyze", json=body, headers={"accept": "application/msgpack"})
    assert first.json()["cached"] is False and second.json()["cached"] is True
    assert third.content == second.content
    assert packed.status_code == 200 and packed.headers["content-type"] == "application/msgpack"
    assert packed.content != second.content and not server.service.responses.get(("nope", True))
