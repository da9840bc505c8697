"""Load behaviour over real HTTP: queue full -> 503, identical requests once, timeouts -> 504."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from lmlens.capture import Need
from lmlens.forward import run_forward
from lmlens_http.cancellation import CancelToken, RequestCancelled, bound
from lmlens_http.pool import AnalysisPool


def sleepy(text: str, seconds: float, *extra: str) -> dict:
    return {"text": text, "methods": ["sleepy", *extra], "params": {"sleepy": {"seconds": seconds}}}


async def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post("/analyze", json=b) for b in bodies))


def test_full_queue_answers_503_with_retry_after(make_server, test_host, test_plugin) -> None:
    srv = make_server(test_host, pool_workers=1, queue_size=1)
    responses = asyncio.run(post_all(srv.url, [sleepy(f"text {i}", 2.0) for i in range(4)]))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503]
    for rejected in (r for r in responses if r.status_code == 503):
        assert rejected.json()["code"] == "overloaded"
        assert int(rejected.headers["retry-after"]) >= 1
    assert len(test_plugin.runs) == 2  # the rejected ones never ran


def test_identical_requests_are_computed_once(make_server, test_host, test_plugin) -> None:
    srv = make_server(test_host, pool_workers=2, queue_size=0)
    # queue_size 0 and 2 workers: without single flight, 5 concurrent requests would get 503s
    responses = asyncio.run(post_all(srv.url, [sleepy("same text", 2.0)] * 5))
    assert [r.status_code for r in responses] == [200] * 5
    assert test_plugin.ran("sleepy", "same text") == 1
    assert len({r.content for r in responses}) == 1


def test_timeout_is_504_and_the_rest_of_the_work_is_cancelled(make_server, test_host, test_plugin) -> None:
    """Explicit ordering (the slow request is running before the second is sent), no tight margins."""
    srv = make_server(test_host, pool_workers=1, queue_size=4, request_timeout_s=0.3)
    sleep_s = 4.0

    async def scenario() -> tuple[httpx.Response, float, httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            started = time.monotonic()
            slow = asyncio.create_task(client.post("/analyze", json=sleepy("slow", sleep_s, "recorder")))
            for _ in range(600):  # wait until the slow request occupies the only worker
                if test_plugin.ran("sleepy", "slow"):
                    break
                await asyncio.sleep(0.05)
            queued = await client.post("/analyze", json=sleepy("queued", 0.0, "recorder"))
            running = await slow
            return running, time.monotonic() - started, queued

    running, waited, queued = asyncio.run(scenario())
    assert waited < sleep_s  # answered at the limit, not when the work ended
    assert (running.status_code, running.json()["code"]) == (504, "timeout")
    assert (queued.status_code, queued.json()["code"]) == (504, "timeout")
    with srv.client() as client:
        for _ in range(1200):  # the sleeping method finishes its sleep; then the pool is free
            if client.get("/health").json()["pool"]["running"] == 0:
                break
            time.sleep(0.05)
        assert test_plugin.ran("sleepy", "slow") == 1
        assert test_plugin.ran("recorder", "slow") == 0  # stopped before the next method
        assert test_plugin.ran("sleepy", "queued") == 0  # cancelled while queued: never started
        assert client.post("/analyze", json=sleepy("after", 0.0)).status_code == 200
        health = client.get("/health").json()
    assert health["pool"]["running"] == 0 and health["pool"]["queued"] == 0


def test_block_checks_stop_a_forward_pass(tiny_models) -> None:
    loaded = tiny_models["llama"]
    ids = loaded.tokenizer("hello", return_tensors="pt")["input_ids"]
    needs = [Need("blocks.1.resid_post")]
    token = CancelToken()
    with bound(token):
        assert "blocks.1.resid_post" in run_forward(loaded, needs, input_ids=ids)
        token.cancel("stop")
        try:
            run_forward(loaded, needs, input_ids=ids)
        except RequestCancelled as exc:
            assert exc.code == "timeout" and exc.http_status == 504
        else:
            raise AssertionError("a cancelled token must stop the pass")
    # no token bound on this thread: no checks, and no hook is left on the model
    assert "blocks.1.resid_post" in run_forward(loaded, needs, input_ids=ids)
    assert not loaded.modules.blocks[0]._forward_pre_hooks


def test_pool_counts_and_frees_slots() -> None:
    async def scenario() -> None:
        pool = AnalysisPool(workers=1, queue_size=0, timeout_s=5)
        assert await pool.run("a", lambda notify: 41 + 1) == 42
        with pytest.raises(ZeroDivisionError):
            await pool.run("b", lambda notify: 1 / 0)
        stats = pool.stats()
        assert (stats.running, stats.queued, stats.in_flight_keys) == (0, 0, 0)
        assert await pool.run(None, lambda notify: "free again") == "free again"
        pool.shutdown()

    asyncio.run(scenario())


def test_cache_hits_and_health_do_not_wait_behind_model_work(make_server, test_host, test_plugin) -> None:
    srv = make_server(test_host, pool_workers=1, queue_size=0)

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            assert (await client.post("/analyze", json={"text": "warm"})).status_code == 200
            slow = asyncio.ensure_future(client.post("/analyze", json=sleepy("busy", 1.0)))
            while test_plugin.ran("sleepy", "busy") == 0:  # the only worker is now asleep
                await asyncio.sleep(0.01)
            hit = await client.post("/analyze", json={"text": "warm"})
            health = await client.get("/health")
            busy = await client.post("/analyze", json={"text": "needs the pool"})
            assert not slow.done()  # all three answered while the model work still ran
            assert hit.status_code == 200 and hit.json()["cached"] is True
            assert health.json()["pool"]["running"] == 1
            assert busy.status_code == 503  # no thread and no queue left: refused, not piled up
            assert (await slow).status_code == 200

    asyncio.run(scenario())
