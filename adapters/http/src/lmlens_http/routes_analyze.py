"""``POST /analyze`` and ``POST /analyze/batch``."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lmlens_http import codec
from lmlens_http.service import Service


async def analyze(request: Request) -> Response:
    service: Service = request.app.state.service
    body = await codec.decode_request(request, service.types.analyze, service.config.max_body_bytes)
    prep = service.prepare(body.text, body.model, body.methods, body.params)
    msgpack = codec.wants_msgpack(request)
    encoded = await service.analyze_encoded(prep, msgpack)
    return Response(encoded, media_type=codec.MSGPACK if msgpack else codec.JSON)


async def analyze_batch(request: Request) -> Response:
    service: Service = request.app.state.service
    body = await codec.decode_request(request, service.types.batch, service.config.max_body_bytes)
    if len(body.texts) > service.config.max_batch_size:
        queue = await anyio.to_thread.run_sync(lambda: service.host.pm.hook.job_queue())
        if queue is not None:
            return await _batch_as_job(request, service, body, queue)
    preps = service.prepare_batch(body)
    results = await service.analyze_batch(preps, body.batch_size)
    msgpack = codec.wants_msgpack(request)
    encoded = await anyio.to_thread.run_sync(
        codec.encode, service.types.batch_result(results=results), msgpack
    )
    return Response(encoded, media_type=codec.MSGPACK if msgpack else codec.JSON)


async def _batch_as_job(request: Request, service: Service, body: Any, queue: Any) -> Response:
    """A batch over MAX_BATCH_SIZE becomes an ``analyze_batch`` job: 202 and its id."""
    for i, text in enumerate(body.texts):  # the same checks as a synchronous batch, before queueing
        service.prepare(text, body.model, body.methods, body.params, text_field=f"texts[{i}]")
    params = {"texts": list(body.texts), "methods": list(body.methods), "params": msgspec.to_builtins(body.params),
              "model": body.model or service.default_model}
    job_id = await anyio.to_thread.run_sync(queue.submit, "analyze_batch", params)
    accepted = {"id": job_id, "status": "queued", "texts": len(body.texts), "location": f"/jobs/{job_id}"}
    return codec.encode_response(request, accepted, status=202, headers={"Location": f"/jobs/{job_id}"})


ROUTES = [
    Route("/analyze", analyze, methods=["POST"], name="analyze"),
    Route("/analyze/batch", analyze_batch, methods=["POST"], name="analyze_batch"),
]
