"""The job store against a real Redis."""

from __future__ import annotations

import pytest

from lmlens_worker.store import JobStore


@pytest.fixture
def store(redis_server) -> JobStore:
    return JobStore(redis_server.client(), ttl_s=60)


def test_create_and_status(store: JobStore) -> None:
    job_id = store.create("analyze_batch", {"texts": ["a"]})
    status = store.status(job_id)
    assert (status.kind, status.status, status.progress, status.attempts) == ("analyze_batch", "queued", 0.0, 0)
    assert store.params(job_id) == ("analyze_batch", {"texts": ["a"]})
    assert 0 < store.client.ttl(store.key(job_id)) <= 60


def test_result_is_written_once(store: JobStore) -> None:
    job_id = store.create("k", {})
    assert store.store_result(job_id, b"first")
    assert not store.store_result(job_id, b"second")
    assert store.result(job_id) == b"first"
    assert store.status(job_id).has_result


def test_items_resume_and_attempts_count(store: JobStore) -> None:
    job_id = store.create("k", {})
    store.item_done(job_id, 0, b"x")
    store.item_done(job_id, 2, b"z")
    assert store.done_items(job_id) == {0: b"x", 2: b"z"}
    assert store.start_attempt(job_id, resumed_items=2) == 1
    assert store.start_attempt(job_id, resumed_items=2) == 2
    status = store.status(job_id)
    assert (status.status, status.attempts, status.resumed_items) == ("running", 2, 2)


def test_cancel_only_unfinished_jobs(store: JobStore) -> None:
    job_id = store.create("k", {})
    assert store.cancel(job_id) and store.is_cancelled(job_id)
    assert store.status(job_id).status == "cancelled"
    assert not store.cancel(job_id)
    with pytest.raises(KeyError):
        store.status("nope")


def test_worker_threads_split_the_cores(monkeypatch) -> None:
    import os

    from lmlens_worker.plugin import torch_thread_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert torch_thread_env(2, 1) == {"OMP_NUM_THREADS": "4"}
    assert torch_thread_env(16, 1) == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_thread_env(2, 1) == {}
