"""``POST /analyze`` and ``POST /analyze/batch``.

While the analysis runs the route also listens for the client going away: then it
stops waiting, and the pool cancels the work nobody waits for (it stops at the next
transformer block)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lmlens_http import codec
from lmlens_http.errors import BatchTooLargeError
from lmlens_http.service import Service

T = TypeVar("T")
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, the access log does


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it if the client disconnects first (the body is read by now)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientGone


async def analyze(request: Request) -> Response:
    service: Service = request.app.state.service
    body = await codec.decode_request(request, service.types.analyze, service.config.max_body_bytes)
    prep = service.prepare(body.text, body.model, body.methods, body.params)
    msgpack = codec.wants_msgpack(request)
    try:
        encoded = await unless_disconnected(request, service.analyze_encoded(prep, msgpack))
    except ClientGone:
        return Response(status_code=CLIENT_GONE)
    return Response(encoded, media_type=codec.MSGPACK if msgpack else codec.JSON)


async def analyze_batch(request: Request) -> Response:
    service: Service = request.app.state.service
    body = await codec.decode_request(request, service.types.batch, service.config.max_body_bytes)
    if len(body.texts) > service.config.max_batch_size:
        queue = await anyio.to_thread.run_sync(lambda: service.host.pm.hook.job_queue())
        if queue is not None:
            return await _batch_as_job(request, service, body, queue)
    preps = service.prepare_batch(body)
    try:
        results = await unless_disconnected(request, service.analyze_batch(preps, body.batch_size))
    except ClientGone:
        return Response(status_code=CLIENT_GONE)
    msgpack = codec.wants_msgpack(request)
    encoded = await anyio.to_thread.run_sync(
        codec.encode, service.types.batch_result(results=results), msgpack
    )
    return Response(encoded, media_type=codec.MSGPACK if msgpack else codec.JSON)


async def _batch_as_job(request: Request, service: Service, body: Any, queue: Any) -> Response:
    """A batch over MAX_BATCH_SIZE becomes an ``analyze_batch`` job: 202 and its id."""
    limit = service.config.max_job_texts
    if len(body.texts) > limit:
        raise BatchTooLargeError(f"{len(body.texts)} texts; the limit for one request is {limit} "
                                 "(API_MAX_JOB_TEXTS): split the batch", field="texts")
    # the same checks as a synchronous batch, before queueing: params once, then every text
    first = service.prepare(body.texts[0], body.model, body.methods, body.params, text_field="texts[0]")
    for i, text in enumerate(body.texts[1:], 1):
        try:
            service.analyzer.check_text(text)
        except Exception as exc:
            exc.field = f"texts[{i}]"  # type: ignore[attr-defined]
            raise
    await service.check_plan(first, texts=body.texts)
    params = {"texts": list(body.texts), "methods": [m.name for m in first.methods],
              "params": {name: msgspec.to_builtins(value) for name, value in first.params.items()},
              "model": first.model}
    job_id = await anyio.to_thread.run_sync(queue.submit, "analyze_batch", params)
    accepted = {"id": job_id, "status": "queued", "texts": len(body.texts), "location": f"/jobs/{job_id}"}
    return codec.encode_response(request, accepted, status=202, headers={"Location": f"/jobs/{job_id}"})


ROUTES = [
    Route("/analyze", analyze, methods=["POST"], name="analyze"),
    Route("/analyze/batch", analyze_batch, methods=["POST"], name="analyze_batch"),
]
