"""POST /jobs, GET /jobs/{id}, DELETE /jobs/{id} on the real service, with a real worker."""

from __future__ import annotations

import pytest

from .conftest import wait_for, worker_env

http = pytest.importorskip("lmlens_http", reason="the /jobs routes are served by lmlens-http")


@pytest.fixture
def server(redis_server, test_plugins, monkeypatch):
    from lmlens_http.app import create_app
    from lmlens_http.config import ServiceConfig
    from lmlens_http.testing import running

    for key, value in worker_env(redis_server.url).items():
        if key.startswith(("LMLENS_", "REDIS_URL")):
            monkeypatch.setenv(key, value)
    config = ServiceConfig(port=0, redis_url=redis_server.url, models=["tiny-gpt2"], default_model="tiny-gpt2",
                           rate_limit=0, max_batch_size=2)
    with running(create_app(config)) as running_server:
        yield running_server


def test_jobs_over_http(server, redis_server, test_plugins, start_worker) -> None:
    start_worker(worker_env(redis_server.url, test_plugins))
    with server.client() as client:
        accepted = client.post("/jobs", json={"kind": "analyze_batch",
                                              "params": {"texts": ["one", "two"], "model": "tiny-gpt2"}})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        assert accepted.headers["location"] == f"/jobs/{job_id}"
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["status"] == "done", 120, "the job")
        body = client.get(f"/jobs/{job_id}").json()
        assert body["progress"] == 1.0 and [r["text"] for r in body["result"]] == ["one", "two"]
        assert client.delete(f"/jobs/{job_id}").json() == {"id": job_id, "cancelled": False}


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"kind": "analyze_batch", "params": {"texts": "x"}}, 422, "invalid_request"),
        ({"kind": "analyze_batch", "params": {"texts": ["x"], "model": "/etc/passwd"}}, 403, "model_not_allowed"),
        ({"kind": "nope"}, 400, "unknown_job_kind"),
        ({"kind": "analyze_batch", "extra": 1}, 422, "invalid_request"),
    ],
)
def test_bad_job_requests(server, payload, status, code) -> None:
    with server.client() as client:
        answer = client.post("/jobs", json=payload)
    assert answer.json()["code"] == code, answer.text
    assert answer.status_code == status


def test_unknown_job_is_404(server) -> None:
    with server.client() as client:
        answer = client.get("/jobs/0123456789abcdef0123456789abcdef")
    assert answer.status_code == 404 and answer.json()["code"] == "unknown_job"


def test_a_large_batch_becomes_a_job_and_the_websocket_follows_it(server, redis_server, test_plugins,
                                                                   start_worker) -> None:
    import json

    from websockets.sync.client import connect

    start_worker(worker_env(redis_server.url, test_plugins))
    texts = ["alpha", "beta", "gamma"]
    with server.client() as client:
        small = client.post("/analyze/batch", json={"texts": texts[:2], "methods": ["attention"]})
        assert small.status_code == 200  # at most max_batch_size: answered at once
        big = client.post("/analyze/batch", json={"texts": texts, "methods": ["attention"]})
        assert big.status_code == 202, big.text
        job_id = big.json()["id"]
        bad = client.post("/analyze/batch", json={"texts": ["ok", "ok", "  "], "methods": ["attention"]})
        assert bad.status_code == 400 and bad.json()["field"] == "texts[2]"  # validated before queueing
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "follow", "job": job_id, "id": "f1"}))
        events = []
        while True:
            message = json.loads(ws.recv(timeout=120))
            events.append(message)
            if message["type"] != "progress":
                break
        assert message["type"] == "complete" and message["id"] == "f1"
        assert [r["text"] for r in message["data"]["result"]] == texts
        assert message["data"]["message"] == f"job {job_id} done" and message["data"]["job"] == job_id
        assert all(e["data"]["stage"] == "job" for e in events[:-1]) and events[-2]["data"]["fraction"] == 1.0
        ws.send(json.dumps({"type": "follow", "job": "missing"}))
        assert json.loads(ws.recv(timeout=30))["data"]["code"] == "unknown_job"  # and the socket stays usable


def test_job_items_route_checks_before_redis(server) -> None:
    unknown = "0123456789abcdef0123456789abcdef"
    with server.client() as client:
        bad_start = client.get(f"/jobs/{unknown}/items/-1")
        too_far = client.get(f"/jobs/{unknown}/items/{2**31}")
        missing = client.get(f"/jobs/{unknown}/items/0")
    assert bad_start.status_code == 422 and bad_start.json()["code"] == "invalid_params"
    assert bad_start.json()["field"] == "start"
    assert too_far.status_code == 422 and too_far.json()["code"] == "invalid_params"
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_job"


def test_document_job_items_arrive_in_order_over_http(server, redis_server, test_plugins, start_worker) -> None:
    start_worker(worker_env(redis_server.url, test_plugins))
    text = " ".join(f"Line {i}: the cat sat on mat number {i}." for i in range(5))
    with server.client() as client:
        refused = client.post("/jobs", json={"kind": "analyze_document", "params": {"text": "  "}})
        assert refused.status_code == 400 and refused.json()["code"] == "empty_text", refused.text
        assert refused.json()["field"] == "params.text"
        accepted = client.post("/jobs", json={"kind": "analyze_document", "params": {
            "text": text, "model": "tiny-gpt2", "methods": ["attention"], "window_size": 48}})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["status"] == "done", 120, "the document job")
        state = client.get(f"/jobs/{job_id}").json()
        n = len(state["result"]["windows"])
        first = client.get(f"/jobs/{job_id}/items/0").json()
        rest = client.get(f"/jobs/{job_id}/items/{first['next'] - 1}").json()
    assert n > 2 and state["progress"] == 1.0
    assert [item["index"] for item in first["items"]] == list(range(n)) and first["next"] == n
    assert [item["value"]["window"]["index"] for item in first["items"]] == list(range(n))
    # the service's defaults for /analyze apply: per-head summaries, no [layer, head, q, k] maps
    assert all(item["value"]["result"]["methods"]["attention"]["patterns"] is None for item in first["items"])
    assert [item["index"] for item in rest["items"]] == [n - 1]
