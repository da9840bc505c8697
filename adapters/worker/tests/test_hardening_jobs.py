"""Issue 11 on the job routes, over real HTTP with a real redis-server (and real workers where
the behaviour is the worker's): every reproduction of the issue, failing before the fix."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
from click.testing import CliRunner

from lmlens import wire
from lmlens_worker.queue import RedisJobQueue
from lmlens_worker.settings import WorkerSettings

from .conftest import wait_for, worker_env

http = pytest.importorskip("lmlens_http", reason="the /jobs routes are served by lmlens-http")


@pytest.fixture
def env(redis_server, monkeypatch) -> dict[str, str]:
    values = worker_env(redis_server.url)
    for key, value in values.items():
        if key.startswith(("LMLENS_", "REDIS_URL")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("LMLENS_JOB_REDIS_TIMEOUT", "1")
    return values


@pytest.fixture
def server(env, redis_server, test_plugins, monkeypatch):
    from lmlens_http.app import create_app
    from lmlens_http.config import ServiceConfig
    from lmlens_http.testing import running

    monkeypatch.syspath_prepend(str(test_plugins))
    config = ServiceConfig(port=0, redis_url=redis_server.url, models=["tiny-gpt2"], default_model="tiny-gpt2",
                           rate_limit=0, max_batch_size=2, max_job_texts=50, max_body_bytes=64 * 1024,
                           max_sequence_length=64)
    with running(create_app(config)) as running_server:
        yield running_server


def job_keys(redis_server) -> list[bytes]:
    return redis_server.client().keys("lmlens:job:*")


def analyze_batch(texts: list, **extra) -> dict:
    return {"kind": "analyze_batch", "params": {"texts": texts, **extra}}


# --- item 4: job ids are checked before they touch Redis ------------------------------------------


def test_a_job_id_ending_in_result_is_404_not_wrongtype(server, redis_server) -> None:
    from websockets.sync.client import connect

    with server.client() as client:
        job_id = client.post("/jobs", json=analyze_batch(["a"])).json()["id"]
        with connect(server.ws_url) as ws:
            ws.send(json.dumps({"type": "follow", "job": f"{job_id}:result"}))
            follow = json.loads(ws.recv(timeout=30))
        for method in ("GET", "DELETE"):
            for bad in (f"{job_id}:result", f"{job_id}:items", "x" * 32, job_id.upper()):
                answer = client.request(method, f"/jobs/{bad}")
                assert (answer.status_code, answer.json()["code"]) == (404, "unknown_job"), (method, bad)
        assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    assert follow["type"] == "error" and follow["data"]["code"] == "unknown_job"


# --- items 5, 6, 7, 8: /jobs gets the checks /analyze has ------------------------------------------


def test_job_bodies_are_bounded_typed_and_shaped_like_analyze(server, redis_server) -> None:
    with server.client() as client:
        big = client.post("/jobs", json=analyze_batch(["x" * 500] * 200))
        plain = client.post("/jobs", content=json.dumps(analyze_batch(["a"])),
                            headers={"content-type": "text/plain", "origin": "null"})
        untyped = client.post("/jobs", content=json.dumps(analyze_batch(["a"])), headers={"content-type": ""})
        malformed = client.post("/jobs", content=b'{"kind": ', headers={"content-type": "application/json"})
        bad_utf8 = client.post("/jobs", content=b'{"kind":"analyze_batch","params":{"texts":["\xff"]}}',
                               headers={"content-type": "application/json"})
        deep = client.post("/jobs", content=b'{"kind":"analyze_batch","params":' + b'{"a":' * 1000 + b"1"
                           + b"}" * 1001, headers={"content-type": "application/json"})
    assert (big.status_code, big.json()["code"]) == (413, "body_too_large")
    assert plain.status_code in (403, 415) and untyped.status_code == 415
    assert (malformed.status_code, malformed.json()["code"], malformed.json()["field"]) == (
        400, "malformed_body", "body")
    assert (bad_utf8.status_code, bad_utf8.json()["code"]) == (400, "malformed_body")
    assert (deep.status_code, deep.json()["code"]) == (400, "malformed_body")
    assert job_keys(redis_server) == []


def test_hostile_job_bodies_get_no_5xx(server, redis_server) -> None:
    import http.client

    from lmlens_http.hostile import bodies, wrong_content_types

    cases = [*bodies("texts", wrap_job=True), *wrong_content_types(json.dumps(analyze_batch(["a"])).encode())]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    accepted = 0
    for name, content_type, body in cases:
        conn.request("POST", "/jobs", body=body, headers={"Content-Type": content_type} if content_type else {})
        response = conn.getresponse()
        payload = response.read()
        assert response.status < 500, (name, payload[:300])
        accepted += response.status == 202
        if response.status >= 400:
            assert json.loads(payload)["code"], name
    conn.close()
    assert accepted >= 2 and len(job_keys(redis_server)) == accepted  # only the accepted ones queued


@pytest.mark.parametrize(
    ("params", "status", "code", "field"),
    [
        ({"texts": ["a", "b", "c", " "]}, 400, "empty_text", "params.texts[3]"),
        ({"texts": ["a", "x" * 5000]}, 413, "text_too_long", "params.texts[1]"),
        ({"texts": ["a"], "methods": ["attention", "no_such_method"]}, 400, "unknown_method", "params.methods"),
        ({"texts": ["a"], "params": {"attention": {"layers": [99]}}}, 422, "invalid_params",
         "params.params.attention.layers"),
        ({"texts": ["a"], "params": {"attention": {"top_k": "many"}}}, 422, "invalid_params",
         "params.params.attention"),
        ({"texts": ["a"], "model": "gpt2"}, 403, "model_not_allowed", "params.model"),
        ({"texts": "a"}, 422, "invalid_request", "params.texts"),
        ({"texts": ["a"] * 51}, 413, "batch_too_large", "params.texts"),
    ],
)
def test_job_params_are_checked_before_queuing(server, redis_server, params, status, code, field) -> None:
    with server.client() as client:
        answer = client.post("/jobs", json={"kind": "analyze_batch", "params": params})
    assert (answer.status_code, answer.json()["code"], answer.json()["field"]) == (status, code, field), answer.text
    assert job_keys(redis_server) == []  # nothing queued


def test_a_big_batch_has_an_upper_bound(server, redis_server) -> None:
    with server.client() as client:
        answer = client.post("/analyze/batch", json={"texts": ["a"] * 51})
        fits = client.post("/analyze/batch", json={"texts": ["a"] * 50})
    assert (answer.status_code, answer.json()["code"], answer.json()["field"]) == (413, "batch_too_large", "texts")
    assert fits.status_code == 202
    params = json.loads(redis_server.client().hget(f"lmlens:job:{fits.json()['id']}", "params"))
    assert params["params"]["attention"]["patterns"] is False  # the HTTP default travels with the job


# --- item 9: Redis down or paused is a quick 503 ----------------------------------------------------


@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_redis_outage_is_503_queue_unavailable(server, redis_server, outage) -> None:
    if not redis_server.can_stop:
        pytest.skip("an outside REDIS_URL server cannot be stopped by the test")
    with server.client() as client:
        job_id = client.post("/jobs", json=analyze_batch(["a"])).json()["id"]
        pid = redis_server.process.pid
        if outage == "stopped":
            redis_server.stop()
        else:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answers = [client.post("/jobs", json=analyze_batch(["a"])), client.get(f"/jobs/{job_id}"),
                       client.delete(f"/jobs/{job_id}")]
            elapsed = time.monotonic() - started
        finally:
            if outage == "paused":
                os.kill(pid, signal.SIGCONT)
    for answer in answers:
        assert (answer.status_code, answer.json()["code"]) == (503, "queue_unavailable"), answer.text
        assert int(answer.headers["retry-after"]) >= 1
        assert "127.0.0.1" not in answer.text and str(redis_server.port) not in answer.text
    assert elapsed < 30  # three calls, each bounded by LMLENS_JOB_REDIS_TIMEOUT=1 s (was about 5 s each)


# --- item 13: an abandoned follow stops polling ---------------------------------------------------------


def test_a_closed_follow_stops_polling_redis(server, redis_server) -> None:
    from websockets.sync.client import connect

    def hgetalls() -> int:
        stats = redis_server.client().info("commandstats")
        return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))

    with server.client() as client:
        job_id = client.post("/jobs", json=analyze_batch(["a"])).json()["id"]  # no worker: stays queued
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(server.ws_url)) for _ in range(5)]
        for ws in sockets:
            ws.send(json.dumps({"type": "follow", "job": job_id}))
            assert json.loads(ws.recv(timeout=30))["data"]["stage"] == "job"
        before = hgetalls()
        wait_for(lambda: hgetalls() > before + 5, 30, "the follows to poll")
        for ws in sockets:
            ws.close()
    wait_for(lambda: server.service.pool.stats().running == 0, 30, "the sockets to close")
    time.sleep(1.0)  # let any follow that was mid-poll finish its last call
    settled = hgetalls()
    time.sleep(2.0)  # 8 poll intervals: five live follows would make about 40 calls
    assert hgetalls() == settled


# --- item 10: jobs never stuck "running" ------------------------------------------------------------------


def test_a_job_killed_by_the_time_limit_ends_failed(redis_server, test_plugins, start_worker, env,
                                                    monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(test_plugins))
    worker = {**worker_env(redis_server.url, test_plugins), "LMLENS_JOB_TIME_LIMIT_MS": "1000",
              "LMLENS_JOB_MAX_RETRIES": "1"}
    queue = RedisJobQueue(WorkerSettings.from_env())
    job_id = queue.submit("nap", {"seconds": 600})
    start_worker(worker)
    wait_for(lambda: queue.status(job_id)["status"] == "failed", 180, "the job to end failed")
    status = queue.status(job_id)
    assert status["error"]["code"] == "time_limit" and status["attempts"] == 2
    assert "LMLENS_JOB_TIME_LIMIT_MS" in status["error"]["message"]


def test_a_sigkilled_worker_leaves_a_record_that_reads_stale(redis_server, test_plugins, start_worker, env,
                                                            monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(test_plugins))
    monkeypatch.setenv("LMLENS_JOB_LEASE_S", "1")
    worker = {**worker_env(redis_server.url, test_plugins), "LMLENS_JOB_LEASE_S": "1",
              "LMLENS_WORKER_HEARTBEAT_MS": "600000"}  # Dramatiq would not requeue it during the test
    queue = RedisJobQueue(WorkerSettings.from_env())
    job_id = queue.submit("nap", {"seconds": 600})
    process = start_worker(worker)
    wait_for(lambda: queue.status(job_id)["status"] == "running", 120, "the job to start")
    time.sleep(1.5)
    assert queue.status(job_id)["stale"] is False  # the lease is being renewed
    process.kill(signal.SIGKILL)
    wait_for(lambda: queue.status(job_id)["stale"], 60, "the record to read stale")
    assert queue.status(job_id)["status"] == "running"


# --- CLI (issue 12) and the OpenAPI document (item 18) ---------------------------------------------------


def cli_with_plugins() -> tuple[object, dict]:
    from lmlens.cli import cli
    from lmlens.plugins import PluginHost

    host = PluginHost()
    host.pm.hook.register_commands(cli=cli)
    return cli, {"host": host}


def test_jobs_cli_without_redis_is_queue_unavailable(monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    cli, obj = cli_with_plugins()
    answer = CliRunner().invoke(cli, ["jobs", "submit", "analyze_batch", '{"texts": ["a"]}'], obj=obj)
    assert answer.exit_code != 0 and "queue_unavailable" in answer.output and "REDIS_URL" in answer.output


def test_jobs_result_prints_arrays_as_lists(redis_server, env) -> None:
    cli, obj = cli_with_plugins()
    queue = RedisJobQueue(WorkerSettings.from_env())
    job_id = queue.store.create("analyze_batch", {"texts": ["a"]})
    values = np.array([[0.25, 1.5]], dtype=np.float32)
    queue.store.store_result(job_id, wire.to_msgpack([{"entropy": values, "name": "x"}]))
    queue.store.update(job_id, status="done", progress=1.0, message="done")
    answer = CliRunner().invoke(cli, ["jobs", "result", job_id], obj=obj)
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output) == [{"entropy": [[0.25, 1.5]], "name": "x"}]


def test_openapi_documents_what_the_job_routes_answer(server) -> None:
    with server.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    submit = paths["/jobs"]["post"]["responses"]
    assert {"202", "400", "413", "415", "422", "503"} <= set(submit) and "200" not in submit
    job = paths["/jobs/{id}"]
    assert {"200", "404", "503"} <= set(job["get"]["responses"]) and "404" in job["delete"]["responses"]
    assert job["get"]["parameters"][0]["schema"]["pattern"] == "^[0-9a-f]{32}$"
    assert msgspec.json.decode(msgspec.json.encode(paths))  # a valid JSON document


# --- item 16: deployment defaults -----------------------------------------------------------------------


def test_compose_keeps_redis_internal_and_workers_on_the_aliases() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[3] / "compose.yaml").read_text())
    services = compose["services"]
    assert "ports" not in services["redis"]  # on the compose network only
    assert all(str(p).startswith("127.0.0.1:") for p in services["api"]["ports"])
    for name in ("api", "worker"):
        assert services[name]["environment"]["LMLENS_MODELS"]


def test_a_worker_without_an_allowlist_loads_aliases_only(monkeypatch, tmp_path) -> None:
    from lmlens import Analyzer
    from lmlens.errors import UnknownModelError
    from lmlens.plugins import PluginHost
    from lmlens_worker.settings import analyzer_settings

    monkeypatch.delenv("LMLENS_MODELS", raising=False)
    monkeypatch.delenv("LMLENS_ALLOW_ANY_MODEL", raising=False)
    (tmp_path / "config.json").write_text("{}")  # what a job placed in Redis made a worker read
    host = PluginHost()
    analyzer = Analyzer(plugins=host, settings=analyzer_settings(list(host.aliases)))
    for spec in (str(tmp_path), "openai-community/gpt2"):
        with pytest.raises(UnknownModelError):
            analyzer.load_model(spec)
    assert set(analyzer.settings.allowed_models) >= set(host.aliases)
    monkeypatch.setenv("LMLENS_ALLOW_ANY_MODEL", "1")
    assert analyzer_settings(list(host.aliases)).allowed_models is None  # an explicit opt-in
