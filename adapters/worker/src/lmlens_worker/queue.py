"""The client side: submit jobs, follow them, fetch results, cancel."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import msgspec
import redis

from lmlens import wire
from lmlens.errors import InvalidParamsError, LmlensError
from lmlens.jobs import JobCancelled
from lmlens.plugins import PluginHost
from lmlens_worker.broker import ACTOR_NAME, make_broker
from lmlens_worker.settings import WorkerSettings
from lmlens_worker.store import FINAL, JobStore


class JobFailedError(LmlensError):
    code = "job_failed"
    http_status = 500


class UnknownJobError(LmlensError):
    code = "unknown_job"
    http_status = 404


class RedisJobQueue:
    """Jobs on Redis: records in a JobStore, messages through the Dramatiq broker."""

    def __init__(self, settings: WorkerSettings | None = None, host: PluginHost | None = None) -> None:
        self.settings = settings or WorkerSettings.from_env()
        self.host = host or PluginHost()
        self.store = JobStore(redis.Redis.from_url(self.settings.redis_url), self.settings.result_ttl_s)
        self.broker = make_broker(self.settings)

    def submit(self, kind: str, params: dict[str, Any]) -> str:
        """Validate, record and enqueue; a malformed payload is refused here, never half-run."""
        job = self.host.job(kind)
        if not isinstance(params, dict):
            raise InvalidParamsError("params must be an object", field="params")
        try:
            wire.convert(params, job.params)
        except msgspec.ValidationError as exc:
            raise InvalidParamsError(f"invalid params for job {kind!r}: {exc}", field="params") from None
        job_id = self.store.create(kind, params)
        message = dramatiq.Message(
            queue_name=self.settings.queue, actor_name=ACTOR_NAME, args=(job_id,), kwargs={}, options={}
        )
        self.broker.enqueue(message)
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        try:
            return msgspec.to_builtins(self.store.status(job_id))  # type: ignore[no-any-return]
        except KeyError:
            raise UnknownJobError(f"no job {job_id!r} (unknown, or expired)", field="id") from None

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result (or raise its error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status["status"] in FINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {status['status']} after {timeout} s")
            time.sleep(0.1)
        if status["status"] == "cancelled":
            raise JobCancelled(f"job {job_id} was cancelled")
        if status["status"] == "failed":
            error = status["error"] or {}
            raise JobFailedError(f"job {job_id} failed: [{error.get('code')}] {error.get('message')}")
        encoded = self.store.result(job_id)
        if encoded is None:
            raise UnknownJobError(f"the result of job {job_id} has expired", field="id")
        return msgspec.msgpack.decode(encoded)

    def raw_result(self, job_id: str) -> bytes | None:
        return self.store.result(job_id)

    def cancel(self, job_id: str) -> bool:
        try:
            return self.store.cancel(job_id)
        except KeyError:
            raise UnknownJobError(f"no job {job_id!r}", field="id") from None
