"""A long document uploaded as a file and analysed through a job queue, without a browser.

In process the job runs on the local queue (no REDIS_URL); as an API client it runs on a
real ``lmlens worker`` behind a real service and a real redis-server. Either way: the
progress reaches the number of windows, every window arrives (one at a time, in order)
with the tokens the document's own tokenization gives it, and the page draws it.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from bokeh.document import Document

from lmlens import Analyzer
from lmlens.plugins import PluginHost
from lmlens.settings import Settings
from lmlens_dashboard import jobs
from lmlens_dashboard.app import Page
from lmlens_dashboard.backend import ApiBackend, InProcessBackend
from lmlens_dashboard.upload import read_upload

from .test_page import Now

DOCUMENT = " ".join(f"Line {i}: the cat sat on mat number {i}, and then it slept." for i in range(6))
WINDOW = 64


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost(load=["attention", "surprisal"])


@pytest.fixture(scope="module")
def backend(host: PluginHost) -> Iterator[InProcessBackend]:
    made = InProcessBackend(Analyzer("tiny-gpt2", plugins=host), models=["tiny-gpt2"])
    yield made
    queue = made.job_queue()
    if isinstance(queue, jobs.LocalJobs):
        queue.close()


def page_for(backend: Any) -> Page:
    page = Page(Document(), backend, Now())
    page.later = lambda fn, *args: fn(*args)  # type: ignore[method-assign]
    return page


def expected_windows(analyzer: Analyzer) -> list[list[int]]:
    """The document's token ids, cut as the plan says: windows of WINDOW tokens every
    WINDOW // 2, the last one ending at the document's end (computed here, not by the kernel)."""
    ids = analyzer.load_model("tiny-gpt2").tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 * WINDOW, "the document must need several windows"
    starts = [*range(0, len(ids) - WINDOW, WINDOW // 2), len(ids) - WINDOW]
    starts = sorted(set(starts))
    return [ids[s : s + WINDOW] for s in starts]


def record(page: Page) -> list[tuple[str, int, list[int]]]:
    """Every job update the page gets: (status, windows on the page, progress bar tags)."""
    seen: list[tuple[str, int, list[int]]] = []
    update = page.documents._update

    def recording(stamp: int, view: jobs.JobView) -> None:
        update(stamp, view)
        seen.append((view.status, len(page.documents.results), list(page.documents.bar.tags)))

    page.documents._update = recording  # type: ignore[method-assign]
    return seen


def analyse_document(page: Page, methods: list[str]) -> list[tuple[str, int, list[int]]]:
    page.methods.active = [page.methods.labels.index(m) for m in methods]
    page.documents.uploaded(encoded(DOCUMENT.encode()))
    assert not page.documents.error.visible, page.documents.error.text
    assert not page.documents.start_button.disabled
    page.documents.window_size.value = str(WINDOW)
    seen = record(page)
    page.documents.start()  # the page's pool runs at once here: this returns when the job has ended
    return seen


def check_windows(page: Page, reference: Analyzer, seen: list[tuple[str, int, list[int]]]) -> None:
    wanted = expected_windows(reference)
    n = len(wanted)
    documents = page.documents
    assert not documents.error.visible, documents.error.text
    # the windows arrived one update at a time, in order, and the bar followed them to n / n
    counts = [count for _, count, _ in seen]
    grown = [b for a, b in zip([0, *counts], counts, strict=False) if b != a]
    assert grown == list(range(1, n + 1)), counts
    assert next(tags for _, count, tags in seen if count == 1) == [1, n]
    assert seen[-1][0] == "done" and seen[-1][2] == [n, n]
    assert "100%" in documents.bar.text and f"{n} / {n} windows" in documents.bar.text
    # every window is on the page, with the tokens the document's own tokenization gives it
    assert [value for value, _ in documents.windows.options] == [str(i) for i in range(n)]
    for window, ids in zip(documents.results, wanted, strict=True):
        assert [t.id for t in window.result.tokens] == ids
        assert window.result.text == DOCUMENT[window.window.char_start : window.window.char_end]
    # the first window was drawn as it arrived; another is drawn when chosen
    assert page.overviews[0].text == documents.results[0].result.text
    image = page.sections["attention"].holders[0].children[0].renderers[0].data_source.data["image"][0]
    assert np.asarray(image).shape == (WINDOW, WINDOW)  # one head's map over the window's tokens
    documents.windows.value = str(n - 1)
    assert page.overviews[0].text == documents.results[n - 1].result.text
    assert page.status.text.startswith(f"window {n} of {n}"), page.status.text
    assert len(page.sections["attention"].holders[0].children) == 1, page.sections["attention"].error.text
    # the window's per-head summaries match a plain analysis of the same tokens
    last = documents.results[n - 1].result
    plain = reference.analyze(last.text, ["attention"], {"attention": {"patterns": False, "top_k": 0}},
                              model="tiny-gpt2")
    assert [t.id for t in plain.tokens] == [t.id for t in last.tokens]
    np.testing.assert_allclose(last.methods["attention"].entropy, plain.methods["attention"].entropy,
                               rtol=1e-5, atol=1e-6)


def test_a_document_is_analysed_window_by_window_in_process(backend: InProcessBackend) -> None:
    assert isinstance(backend.job_queue(), jobs.LocalJobs)  # no REDIS_URL here: the local queue
    page = page_for(backend)
    seen = analyse_document(page, ["attention", "surprisal"])
    check_windows(page, backend.analyzer, seen)
    # the address names the job, and a reloaded page follows it again from its first window
    query = page.share.tags[0]
    assert query.startswith(f"job={page.documents.job_id}&model=tiny-gpt2&methods=attention%2Csurprisal")
    again = page_for(backend)
    again.documents.resume({"job": [page.documents.job_id.encode()]})
    assert len(again.documents.results) == len(page.documents.results)
    assert again.documents.bar.tags == page.documents.bar.tags


def test_a_cancelled_job_and_an_unknown_one_say_so(backend: InProcessBackend) -> None:
    queue = backend.job_queue()
    gate = threading.Event()
    queue.pool.submit(gate.wait)  # the local queue's one thread is busy: the job waits, queued
    try:
        job_id = backend.submit_document(DOCUMENT, "tiny-gpt2", ["attention"], {}, WINDOW)
        page = page_for(backend)
        page.documents.job_id = job_id
        page.documents.cancel_button.visible = True
        page.documents.cancel()
        assert queue.status(job_id)["status"] == "cancelled"
        assert backend.cancel_document(job_id) is False  # already ended
    finally:
        gate.set()
    page.documents.resume({"job": [job_id.encode()]})
    assert page.documents.error.visible and "<code>job_cancelled</code>" in page.documents.error.text
    assert not page.documents.results and not page.documents.cancel_button.visible
    gone = page_for(backend)
    gone.documents.resume({"job": [b"0123456789abcdef0123456789abcdef"]})
    assert "<code>unknown_job</code>" in gone.documents.error.text


@pytest.mark.parametrize(
    ("data", "limit", "code"),
    [
        (b"caf\xe9 au lait", None, "malformed_body"),  # Latin-1, not UTF-8
        (b" \n\t ", None, "empty_text"),
        (b"", None, "empty_text"),
        (b"x" * 100, 50, "text_too_long"),
    ],
)
def test_a_bad_upload_shows_the_service_code_next_to_the_field(
    backend: InProcessBackend, data: bytes, limit: int | None, code: str
) -> None:
    page = page_for(backend)
    if limit is not None:
        page.documents.limit_chars = limit
    page.documents.uploaded(encoded(data))
    assert page.documents.error.visible and f"<code>{code}</code>" in page.documents.error.text
    assert page.documents.start_button.disabled
    page.documents.start()
    assert page.documents.job_id is None  # nothing was queued


def test_upload_limits() -> None:
    assert read_upload(encoded("\ufeffhello".encode()), limit_chars=10) == "hello"
    with pytest.raises(Exception, match="bytes") as caught:
        read_upload(encoded(b"x" * 20), limit_chars=100, limit_bytes=10)
    assert caught.value.code == "body_too_large"  # type: ignore[attr-defined]


def test_a_failed_job_shows_its_code_and_message(host: PluginHost) -> None:
    """A window longer than the model allows fails in the job (the checks that need the model)."""
    settings = msgspec.structs.replace(Settings.from_env(), max_sequence_length=32)
    small = InProcessBackend(Analyzer("tiny-gpt2", plugins=host, settings=settings), models=["tiny-gpt2"])
    try:
        page = page_for(small)
        seen = analyse_document(page, ["attention"])
        assert seen[-1][0] == "failed"
        error = page.documents.error
        assert error.visible and "<code>invalid_params</code>" in error.text and "window_size" in error.text
        assert not page.documents.results and not page.documents.start_button.disabled
    finally:
        small.job_queue().close()


# --- through the service's job queue: a real redis-server and a real `lmlens worker` ---------


@pytest.fixture
def redis_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A redis-server of its own and one ``lmlens worker`` on it; REDIS_URL is set meanwhile."""
    pytest.importorskip("lmlens_worker", reason="the Redis queue is lmlens-worker's")
    from lmlens_redis.testing import start_redis_server

    redis_server = start_redis_server()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    env = {**os.environ, "REDIS_URL": redis_server.url, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "worker.log").open("ab")
    worker = subprocess.Popen([sys.executable, "-m", "lmlens", "worker", "--processes", "1", "--threads", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield redis_server.url
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
        redis_server.stop()


@pytest.fixture
def queued_api(host: PluginHost, redis_worker: str) -> Iterator[ApiBackend]:
    from lmlens_http import create_app
    from lmlens_http.testing import running, tiny_config

    with running(create_app(tiny_config())) as server:  # REDIS_URL is set: the service serves /jobs
        client = ApiBackend(server.url, host=host)
        yield client
        client.close()


def test_in_process_with_redis_url_the_document_goes_to_that_queue(redis_worker: str) -> None:
    from lmlens_worker.queue import RedisJobQueue

    with_worker = PluginHost(load=["attention", "surprisal", "worker"])
    queued = InProcessBackend(Analyzer("tiny-gpt2", plugins=with_worker), models=["tiny-gpt2"])
    assert isinstance(queued.job_queue(), RedisJobQueue)
    page = page_for(queued)
    seen = analyse_document(page, ["attention", "surprisal"])
    check_windows(page, queued.analyzer, seen)
    assert queued.job_queue().status(page.documents.job_id)["status"] == "done"  # the worker ran it


def test_a_document_is_analysed_on_the_service_workers(queued_api: ApiBackend, backend: InProcessBackend) -> None:
    page = page_for(queued_api)
    seen = analyse_document(page, ["attention", "surprisal"])
    check_windows(page, backend.analyzer, seen)
    # a job the service refuses before queuing: its code, next to the upload
    page.documents.uploaded(encoded(DOCUMENT.encode()))
    page.model.value = "gpt2-xl"
    page.documents.start()
    assert "<code>model_not_allowed</code>" in page.documents.error.text, page.documents.error.text
