"""``POST /analyze`` and ``POST /analyze/batch``."""

from __future__ import annotations

import anyio.to_thread
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
    preps = service.prepare_batch(body)
    results = await service.analyze_batch(preps, body.batch_size)
    msgpack = codec.wants_msgpack(request)
    encoded = await anyio.to_thread.run_sync(
        codec.encode, service.types.batch_result(results=results), msgpack
    )
    return Response(encoded, media_type=codec.MSGPACK if msgpack else codec.JSON)


ROUTES = [
    Route("/analyze", analyze, methods=["POST"], name="analyze"),
    Route("/analyze/batch", analyze_batch, methods=["POST"], name="analyze_batch"),
]
