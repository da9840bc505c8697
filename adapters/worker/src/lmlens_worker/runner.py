"""Run one delivery of a job: resume, report, store the result once, decide on retries."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import redis

from lmlens import wire
from lmlens.errors import LmlensError
from lmlens.jobs import JobCancelled
from lmlens.plugins import PluginHost
from lmlens_worker.store import JobStore


class RedisJobContext:
    """What a running job sees: progress, per-item records, cancellation, the analyzer."""

    def __init__(self, store: JobStore, job_id: str, analyzer: Any) -> None:
        self.store = store
        self.job_id = job_id
        self._analyzer = analyzer

    @property
    def analyzer(self) -> Any:
        return self._analyzer

    def progress(self, fraction: float, message: str) -> None:
        if self.store.is_cancelled(self.job_id):
            raise JobCancelled("the job was cancelled")
        self.store.update(self.job_id, progress=max(0.0, min(1.0, fraction)), message=message)

    def done_items(self) -> dict[int, bytes]:
        return self.store.done_items(self.job_id)

    def item_done(self, index: int, value: bytes) -> None:
        self.store.item_done(self.job_id, index, value)


log = logging.getLogger(__name__)


@contextmanager
def lease(store: JobStore, job_id: str) -> Iterator[None]:
    """Renew the job's lease every ``lease_s / 3`` while it runs, from a thread of its own
    (a long method call does not stop it). A SIGKILLed worker stops renewing: the record
    reads ``stale`` after ``lease_s``, until Dramatiq requeues the message."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(store.lease_s / 3):
            try:
                store.beat(job_id)
            except redis.RedisError:
                log.warning("could not renew the lease of job %s", job_id)

    store.beat(job_id)
    thread = threading.Thread(target=renew, name=f"lease-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class RetryJob(Exception):
    """Raised to hand a failed attempt back to Dramatiq's retry middleware."""


def execute(
    job_id: str, *, store: JobStore, host: PluginHost, analyzer: Any, retries: int, max_retries: int
) -> str:
    """Run one delivery; returns the status it left. Raises RetryJob when it should be retried."""
    if not store.exists(job_id):
        return "missing"  # expired, or never created
    if store.result(job_id) is not None:
        store.update(job_id, status="done", progress=1.0, message="done")
        return "done"  # a second delivery of a finished job
    if store.is_cancelled(job_id):
        return "cancelled"
    kind, raw = store.params(job_id)
    try:
        job = host.job(kind)
        params = wire.convert(raw, job.params)
    except (LmlensError, msgspec.ValidationError) as exc:
        store.update(job_id, status="failed", message="rejected", error={"code": "invalid_params", "message": str(exc)})
        return "failed"
    done = store.done_items(job_id)
    attempt = store.start_attempt(job_id, resumed_items=len(done))
    try:
        with lease(store, job_id):
            value = job.run(params, RedisJobContext(store, job_id, analyzer))
    except JobCancelled:
        store.update(job_id, status="cancelled", message="cancelled")
        return "cancelled"
    except LmlensError as exc:  # typed errors are the caller's to fix: retrying cannot help
        store.update(job_id, status="failed", message="failed",
                     error={"code": exc.code, "message": exc.message, "field": exc.field})
        return "failed"
    except BaseException as exc:
        # Exceptions, and Dramatiq's interrupts (the time limit, shutdown), which are BaseExceptions:
        # the record says what happened; Dramatiq decides on the retry (``broker.JobRecords``
        # marks the job failed when no retry is left).
        log.error("job %s attempt %s failed", job_id, attempt, exc_info=exc)
        name = type(exc).__name__
        code = "time_limit" if name == "TimeLimitExceeded" else "job_error"
        error = {"code": code, "message": f"{name}: {exc}"[:300], "attempt": attempt}
        if not isinstance(exc, Exception):
            store.update(job_id, status="retrying", message=f"attempt {attempt} interrupted ({name})", error=error)
            raise
        if retries >= max_retries:
            store.update(job_id, status="failed", message=f"failed after {attempt} attempts", error=error)
            return "failed"
        store.update(job_id, status="retrying", message=f"attempt {attempt} failed; retrying", error=error)
        raise RetryJob(error["message"]) from exc
    store.store_result(job_id, msgspec.msgpack.encode(value, enc_hook=wire._msgpack_enc_hook))
    store.update(job_id, status="done", progress=1.0, message="done")
    return "done"
