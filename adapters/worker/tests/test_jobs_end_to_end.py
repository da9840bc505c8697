"""Real worker processes on a real Redis: results, crashes, retries, cancellation."""

from __future__ import annotations

import os
import signal

import pytest

from lmlens import Analyzer, InvalidParamsError, QueueUnavailableError
from lmlens_worker.queue import JobFailedError, RedisJobQueue, UnknownJobError
from lmlens_worker.settings import WorkerSettings

from .conftest import wait_for, worker_env

TEXTS = [f"text number {i} for the batch" for i in range(40)]


@pytest.fixture
def queue(redis_server, test_plugins, monkeypatch) -> RedisJobQueue:
    monkeypatch.syspath_prepend(str(test_plugins))
    for key, value in worker_env(redis_server.url).items():
        if key.startswith(("LMLENS_", "REDIS_URL")):
            monkeypatch.setenv(key, value)
    return RedisJobQueue(WorkerSettings.from_env())


def batch(n: int = 40, **extra) -> dict:
    return {"texts": TEXTS[:n], "methods": ["attention"], "params": {"attention": {"patterns": False}},
            "model": "tiny-gpt2", **extra}


# the tests that stop a job midway want it to take many passes: one text per pass
ONE_BY_ONE = {"batch_size": 1}


def test_malformed_payloads_are_refused_at_submission(queue: RedisJobQueue) -> None:
    keys_before = set(queue.store.client.keys("*"))
    with pytest.raises(InvalidParamsError, match="invalid params"):
        queue.submit("analyze_batch", {"texts": "one text"})
    with pytest.raises(InvalidParamsError, match="invalid params"):
        queue.submit("analyze_batch", {"texts": ["a"], "colour": "red"})
    with pytest.raises(Exception, match="unknown job kind"):
        queue.submit("teleport", {})
    assert set(queue.store.client.keys("*")) == keys_before  # nothing recorded, nothing enqueued
    with pytest.raises(UnknownJobError):
        queue.status("no-such-job")


def test_analyzer_submit_goes_to_the_workers(queue, redis_server, test_plugins, start_worker) -> None:
    start_worker(worker_env(redis_server.url, test_plugins))
    handle = Analyzer().submit("analyze_batch", batch(3))
    result = handle.result(timeout=120)
    assert [r["text"] for r in result] == TEXTS[:3]
    assert result[0]["methods"]["attention"]["kind"] == "attention"
    status = handle.status()
    assert (status["status"], status["progress"], status["attempts"]) == ("done", 1.0, 1)


def test_a_padded_batch_job_equals_analysing_each_text_here(queue, redis_server, test_plugins,
                                                           start_worker) -> None:
    import numpy as np

    start_worker(worker_env(redis_server.url, test_plugins))
    texts = ["a", "mid length text", *TEXTS[:4], "the longest text of this batch, by some margin"]
    params = {"attention": {"patterns": True, "top_k": 2}}
    job = {"texts": texts, "methods": ["attention"], "params": params, "model": "tiny-gpt2"}
    batched = queue.result(queue.submit("analyze_batch", {**job, "batch_size": 4}), timeout=120)
    one_by_one = queue.result(queue.submit("analyze_batch", {**job, "batch_size": 1}), timeout=120)
    here = Analyzer("tiny-gpt2")
    for text, a, b in zip(texts, batched, one_by_one, strict=True):
        alone = here.analyze(text, methods=["attention"], params=params, use_cache=False).methods["attention"]
        for got in (a, b):
            assert got["text"] == text
            att = got["methods"]["attention"]
            for field in ("patterns", "entropy", "sink_mass", "mean_distance", "top_weights"):
                np.testing.assert_allclose(np.asarray(att[field]), getattr(alone, field), atol=1e-5, err_msg=field)
    assert {r["timings_ms"].get("forward_batch") is not None for r in batched} == {True}
    assert {r["timings_ms"].get("forward_batch") is None for r in one_by_one} == {True}


def test_a_killed_worker_s_job_is_redelivered_and_resumes(queue, redis_server, test_plugins, start_worker) -> None:
    env = worker_env(redis_server.url, test_plugins)
    first = start_worker(env)
    job_id = queue.submit("analyze_batch", batch(**ONE_BY_ONE))
    wait_for(lambda: len(queue.store.done_items(job_id)) >= 5, 120, "the first worker to finish some items")
    first.kill(signal.SIGKILL)
    done_at_kill = len(queue.store.done_items(job_id))
    assert done_at_kill < len(TEXTS), "the job finished before the kill; make the batch longer"
    assert queue.status(job_id)["status"] == "running"

    start_worker(env)
    result = queue.result(job_id, timeout=180)
    status = queue.status(job_id)
    assert status["status"] == "done" and status["attempts"] == 2
    assert status["resumed_items"] >= done_at_kill  # the retry started from the recorded items
    assert [r["text"] for r in result] == TEXTS
    assert queue.store.client.exists(queue.store.key(job_id) + ":result") == 1  # exactly one result


def test_a_failing_job_is_retried_then_failed_without_blocking_others(
    queue, redis_server, test_plugins, start_worker
) -> None:
    start_worker(worker_env(redis_server.url, test_plugins))
    bad = queue.submit("explode", {"message": "kaboom"})
    good = queue.submit("analyze_batch", batch(2))
    assert len(queue.result(good, timeout=120)) == 2
    with pytest.raises(JobFailedError, match="RuntimeError: kaboom"):
        queue.result(bad, timeout=120)
    status = queue.status(bad)
    assert status["status"] == "failed" and status["attempts"] == 3  # the first try and 2 retries
    assert status["error"]["code"] == "job_error"


def test_typed_errors_fail_at_once(queue, redis_server, test_plugins, start_worker) -> None:
    start_worker(worker_env(redis_server.url, test_plugins))
    job = queue.submit("analyze_batch", {"texts": ["x"], "model": "no/such/model"})
    with pytest.raises(JobFailedError, match="unknown_model"):
        queue.result(job, timeout=120)
    assert queue.status(job)["attempts"] == 1


def test_cancel_stops_a_running_job(queue, redis_server, test_plugins, start_worker) -> None:
    start_worker(worker_env(redis_server.url, test_plugins))
    job_id = queue.submit("analyze_batch", batch(**ONE_BY_ONE))
    wait_for(lambda: len(queue.store.done_items(job_id)) >= 2, 120, "the job to start")
    assert queue.cancel(job_id)
    wait_for(lambda: queue.status(job_id)["message"] == "cancelled", 60, "the worker to notice")
    done = len(queue.store.done_items(job_id))
    assert done < len(TEXTS) and queue.raw_result(job_id) is None
    assert not queue.cancel(job_id)


def test_no_queue_without_redis_url(monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(QueueUnavailableError, match="REDIS_URL") as exc:  # missing configuration
        Analyzer().submit("analyze_batch", {"texts": ["a"]})
    assert exc.value.code == "queue_unavailable"


def test_cli_submit_status_result(queue, redis_server, test_plugins, start_worker) -> None:
    import json

    from click.testing import CliRunner

    from lmlens.cli import cli
    from lmlens.plugins import PluginHost

    start_worker(worker_env(redis_server.url, test_plugins))
    host = PluginHost()
    host.pm.hook.register_commands(cli=cli)
    runner = CliRunner()
    submitted = runner.invoke(cli, ["jobs", "submit", "analyze_batch", json.dumps(batch(1))], obj={"host": host})
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.strip()
    result = runner.invoke(cli, ["jobs", "result", job_id, "--timeout", "120"], obj={"host": host})
    assert result.exit_code == 0 and json.loads(result.output)[0]["text"] == TEXTS[0]
    status = json.loads(runner.invoke(cli, ["jobs", "status", job_id], obj={"host": host}).output)
    assert status["status"] == "done"
    bad = runner.invoke(cli, ["jobs", "submit", "analyze_batch", '{"texts": 3}'], obj={"host": host})
    assert bad.exit_code == 2 and "error [invalid_params]" in bad.output
    assert os.environ["REDIS_URL"] == redis_server.url
