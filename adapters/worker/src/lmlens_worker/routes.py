"""HTTP routes for jobs, served by lmlens-http through its ``register_routes`` hook.

    POST   /jobs        {"kind", "params"} -> 202 {"id", "status"}
    GET    /jobs/{id}   status, progress, and the result or the error
    DELETE /jobs/{id}   ask the job to stop
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from lmlens.errors import InvalidParamsError, LmlensError
from lmlens_worker.queue import RedisJobQueue
from lmlens_worker.store import JobStatus


class NoJobQueueError(LmlensError):
    code = "no_job_queue"
    http_status = 503


class JobRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: str
    params: dict[str, Any] = {}


class JobAccepted(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: str


class JobState(JobStatus, frozen=True, kw_only=True):
    """The stored status, plus the result once the job is done."""

    result: Any = None


_queues: dict[str, RedisJobQueue] = {}


def job_queue(request: Request) -> RedisJobQueue:
    url = os.environ.get("REDIS_URL")
    if not url:
        raise NoJobQueueError("jobs need Redis: set REDIS_URL for the service and start `lmlens worker`")
    if url not in _queues:
        service = getattr(request.app.state, "service", None)
        host = getattr(service, "host", None)
        _queues[url] = RedisJobQueue(host=host)
    return _queues[url]


async def submit_job(request: Request) -> Response:
    from lmlens_http.codec import encode_response

    body = await request.body()
    try:
        payload = msgspec.json.decode(body, type=JobRequest)
    except msgspec.DecodeError as exc:
        raise InvalidParamsError(f"the body is not a valid job request: {exc}", field="body") from None
    service = getattr(request.app.state, "service", None)
    model = payload.params.get("model")
    if service is not None and model is not None and model not in service.allowed:
        from lmlens_http.errors import ModelNotAllowedError

        raise ModelNotAllowedError(
            f"model {model!r} is not served here; choose one of: {', '.join(service.allowed)}", field="params.model"
        )
    queue = job_queue(request)
    job_id = await run_in_threadpool(queue.submit, payload.kind, payload.params)
    return encode_response(request, JobAccepted(id=job_id, status="queued"), status=202,
                           headers={"Location": f"/jobs/{job_id}"})


async def job(request: Request) -> Response:
    from lmlens_http.codec import encode_response

    queue = job_queue(request)
    job_id = request.path_params["id"]
    if request.method == "DELETE":
        cancelled = await run_in_threadpool(queue.cancel, job_id)
        return encode_response(request, {"id": job_id, "cancelled": cancelled})
    status = await run_in_threadpool(queue.status, job_id)
    result = None
    if status["status"] == "done":
        raw = await run_in_threadpool(queue.raw_result, job_id)
        result = msgspec.msgpack.decode(raw) if raw is not None else None
    return encode_response(request, JobState(**status, result=result))


def register(register_route: Callable[..., None]) -> None:
    register_route("/jobs", submit_job, methods=("POST",), request=JobRequest, response=JobAccepted,
                   summary="Queue a job (analyze_batch, or a plugin's) on the workers")
    register_route("/jobs/{id}", job, methods=("GET", "DELETE"), response=JobState,
                   summary="A job's status, progress and result; DELETE cancels it")
