"""HTTP routes for jobs, served by lmlens-http through its ``register_routes`` hook.

    POST   /jobs        {"kind", "params"} -> 202 {"id", "status"}
    GET    /jobs/{id}   status, progress, and the result or the error
    DELETE /jobs/{id}   ask the job to stop
    GET    /jobs/{id}/items/{start}   the items recorded so far, from ``start`` (at most
                        ITEMS_PER_ANSWER): a batch's finished texts, a document's finished
                        windows, readable before the job ends

A job request gets the checks ``/analyze`` makes, before anything is queued: the same
body decoding (content type, size, UTF-8, depth), every text and method param of an
``analyze_batch`` (errors name ``params.texts[3]``), the model allowlist, and a bound
on the texts per job. Redis down or paused is a quick 503 ``queue_unavailable``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from lmlens_worker.queue import QueueUnavailableError, RedisJobQueue, check_job_id, unpack_arrays
from lmlens_worker.store import JobStatus


class NoJobQueueError(QueueUnavailableError):
    """No REDIS_URL: the service has no queue (a setting, not a passing outage)."""


class JobRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: str
    params: dict[str, Any] = {}


class JobAccepted(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: str


class JobCancelAnswer(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    cancelled: bool


class JobItem(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    value: Any


class JobItems(msgspec.Struct, frozen=True, kw_only=True):
    """``items`` in index order; ``next``: the ``start`` to ask for next."""

    id: str
    items: list[JobItem]
    next: int


ITEMS_PER_ANSWER = 16
MAX_ITEM_INDEX = 2**31


class JobState(JobStatus, frozen=True, kw_only=True):
    """The stored status, plus the result once the job is done."""

    result: Any = None


_queues: dict[str, RedisJobQueue] = {}


def job_queue(request: Request) -> RedisJobQueue:
    url = os.environ.get("REDIS_URL")
    if not url:
        raise NoJobQueueError("jobs need Redis: set REDIS_URL for the service and start `lmlens worker`",
                              retry_after=60)
    if url not in _queues:
        service = getattr(request.app.state, "service", None)
        host = getattr(service, "host", None)
        _queues[url] = RedisJobQueue(host=host)
    return _queues[url]


async def submit_job(request: Request) -> Response:
    from lmlens_http.codec import decode_request, encode_response

    service = request.app.state.service
    payload = await decode_request(request, JobRequest, service.config.max_body_bytes)
    params = await service.check_job(payload.kind, payload.params)  # raises with the item's path
    queue = job_queue(request)
    job_id = await run_in_threadpool(queue.submit, payload.kind, params)
    return encode_response(request, JobAccepted(id=job_id, status="queued"), status=202,
                           headers={"Location": f"/jobs/{job_id}"})


async def job(request: Request) -> Response:
    from lmlens_http.codec import encode_response

    job_id = check_job_id(request.path_params["id"])  # before Redis: "x:result" is no job
    queue = job_queue(request)
    if request.method == "DELETE":
        cancelled = await run_in_threadpool(queue.cancel, job_id)
        return encode_response(request, JobCancelAnswer(id=job_id, cancelled=cancelled))
    status = await run_in_threadpool(queue.status, job_id)
    result = None
    if status["status"] == "done":
        raw = await run_in_threadpool(queue.raw_result, job_id)
        result = unpack_arrays(msgspec.msgpack.decode(raw)) if raw is not None else None
    return encode_response(request, JobState(**status, result=result))


async def job_items(request: Request) -> Response:
    from lmlens.errors import InvalidParamsError
    from lmlens_http.codec import encode_response

    job_id = check_job_id(request.path_params["id"])
    raw_start = request.path_params["start"]
    if not raw_start.isdigit() or int(raw_start) >= MAX_ITEM_INDEX:
        raise InvalidParamsError(f"start must be an item index (0 to {MAX_ITEM_INDEX - 1}), not {raw_start[:40]!r}",
                                 field="start")
    start = int(raw_start)
    queue = job_queue(request)
    found = await run_in_threadpool(queue.items, job_id, start, ITEMS_PER_ANSWER)
    items: list[JobItem] = []
    for index in sorted(found):
        if index != start + len(items):
            break  # only a run without gaps, so that ``next`` never skips an item still to come
        items.append(JobItem(index=index, value=unpack_arrays(msgspec.msgpack.decode(found[index]))))
    following = items[-1].index + 1 if items else start
    return encode_response(request, JobItems(id=job_id, items=items, next=following))


SUBMIT_ERRORS = ("400", "401", "403", "404", "413", "415", "422", "429", "503")
JOB_ERRORS = ("401", "403", "404", "429", "503")


def register(register_route: Callable[..., None]) -> None:
    register_route("/jobs", submit_job, methods=("POST",), request=JobRequest, response=JobAccepted,
                   summary="Queue a job (analyze_batch, or a plugin's) on the workers",
                   status=202, errors=SUBMIT_ERRORS)
    register_route("/jobs/{id}", job, methods=("GET", "DELETE"), response=JobState,
                   summary="A job's status, progress and result; DELETE cancels it",
                   errors=JOB_ERRORS, responses={"DELETE": JobCancelAnswer},
                   path_schema={"id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}})
    register_route("/jobs/{id}/items/{start}", job_items, methods=("GET",), response=JobItems,
                   summary="The items a job has recorded so far (a document's finished windows), from start on",
                   errors=(*JOB_ERRORS, "422"),
                   path_schema={"id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                                "start": {"type": "integer", "minimum": 0, "maximum": MAX_ITEM_INDEX - 1}})
