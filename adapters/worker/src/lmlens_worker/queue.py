"""The client side: submit jobs, follow them, fetch results, cancel."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import msgspec
import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lmlens import wire
from lmlens.errors import InvalidParamsError, LmlensError
from lmlens.jobs import JobCancelled
from lmlens.jobs import QueueUnavailableError as KernelQueueUnavailableError
from lmlens.plugins import PluginHost
from lmlens_worker.broker import ACTOR_NAME, make_broker
from lmlens_worker.settings import WorkerSettings
from lmlens_worker.store import FINAL, JobStore


class JobFailedError(LmlensError):
    """The job ended ``failed``; the message carries its recorded error."""

    code = "job_failed"
    http_status = 409


class UnknownJobError(LmlensError):
    code = "unknown_job"
    http_status = 404


class QueueUnavailableError(KernelQueueUnavailableError):
    """Redis, which holds the queue and the job records, cannot be reached (or is not
    configured); ``retry_after`` becomes the HTTP ``Retry-After``."""

    def __init__(self, message: str, *, retry_after: int = 5, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


JOB_ID = re.compile(r"[0-9a-f]{32}")
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


def check_job_id(job_id: object) -> str:
    """Job ids are what ``JobStore.create`` makes (32 hex digits); anything else never reaches Redis."""
    if not isinstance(job_id, str) or JOB_ID.fullmatch(job_id) is None:
        shown = repr(job_id)[:80]
        raise UnknownJobError(f"no job {shown}: job ids are 32 hexadecimal digits", field="id")
    return job_id


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Redis down, paused or refusing: a 503 the client may retry, never a 500 with its address."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise QueueUnavailableError(
            f"the job queue is unavailable ({type(exc).__name__}); retry later"
        ) from exc
    except redis.RedisError as exc:
        raise QueueUnavailableError(f"the job queue refused the request ({type(exc).__name__})") from exc


def unpack_arrays(value: Any) -> Any:
    """A decoded job result with its packed arrays (``{"dtype", "shape", "data"}``, as
    ``lmlens.wire`` writes them) turned back into numpy arrays, so JSON shows them as
    lists (like ``analyze --json``) and MessagePack packs them again."""
    if isinstance(value, dict):
        if value.keys() == {"dtype", "shape", "data"} and isinstance(value["data"], bytes):
            try:
                return np.frombuffer(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
            except (TypeError, ValueError):
                return value
        return {k: unpack_arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unpack_arrays(v) for v in value]
    return value


class RedisJobQueue:
    """Jobs on Redis: records in a JobStore, messages through the Dramatiq broker.

    Every Redis call has ``redis_timeout_s`` (connect and read) and no retries, so a
    dead or paused Redis is a ``queue_unavailable`` within about that time.
    """

    def __init__(self, settings: WorkerSettings | None = None, host: PluginHost | None = None) -> None:
        self.settings = settings or WorkerSettings.from_env()
        self.host = host or PluginHost()
        timeout = self.settings.redis_timeout_s
        client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        self.store = JobStore(client, self.settings.result_ttl_s, self.settings.lease_s)
        self.broker = make_broker(self.settings, socket_timeout=timeout)

    def submit(self, kind: str, params: dict[str, Any]) -> str:
        """Validate, record and enqueue; a malformed payload is refused here, never half-run."""
        job = self.host.job(kind)
        if not isinstance(params, dict):
            raise InvalidParamsError("params must be an object", field="params")
        try:
            wire.convert(params, job.params)
        except msgspec.ValidationError as exc:
            raise InvalidParamsError(f"invalid params for job {kind!r}: {exc}", field="params") from None
        try:
            encoded = msgspec.json.encode(params)
        except (OverflowError, UnicodeEncodeError, TypeError) as exc:
            raise InvalidParamsError(f"params cannot be stored: {exc}", field="params") from None
        with redis_errors():
            job_id = self.store.create(kind, encoded)
            message = dramatiq.Message(
                queue_name=self.settings.queue, actor_name=ACTOR_NAME, args=(job_id,), kwargs={}, options={}
            )
            self.broker.enqueue(message)
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        check_job_id(job_id)
        try:
            with redis_errors():
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
        with redis_errors():
            encoded = self.store.result(job_id)
        if encoded is None:
            raise UnknownJobError(f"the result of job {job_id} has expired", field="id")
        return unpack_arrays(msgspec.msgpack.decode(encoded))

    def items(self, job_id: str, start: int = 0, limit: int = 16) -> dict[int, bytes]:
        """Items the job has recorded so far (``start`` on, at most ``limit``), each as
        MessagePack: a batch's finished texts, a document's finished windows."""
        check_job_id(job_id)
        with redis_errors():
            if not self.store.exists(job_id):
                raise UnknownJobError(f"no job {job_id!r} (unknown, or expired)", field="id")
            return self.store.items(job_id, start, limit)

    def raw_result(self, job_id: str) -> bytes | None:
        check_job_id(job_id)
        with redis_errors():
            return self.store.result(job_id)

    def cancel(self, job_id: str) -> bool:
        check_job_id(job_id)
        try:
            with redis_errors():
                return self.store.cancel(job_id)
        except KeyError:
            raise UnknownJobError(f"no job {job_id!r}", field="id") from None
