"""Request bodies in, responses out: JSON by default, MessagePack on request.

A client sends MessagePack with ``Content-Type: application/msgpack`` and asks for it
back with ``Accept: application/msgpack``; arrays then travel as packed bytes.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from lmlens import wire
from lmlens_http.errors import (
    BodyTooLargeError,
    MalformedBodyError,
    UnsupportedMediaTypeError,
    from_validation,
)

T = TypeVar("T")

JSON = "application/json"
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


def wants_msgpack(request: Request | None) -> bool:
    if request is None:
        return False
    accept = request.headers.get("accept", "")
    return any(t in accept for t in _MSGPACK_TYPES)


def encode(obj: Any, msgpack: bool) -> bytes:
    return wire.to_msgpack(obj) if msgpack else wire.to_json(obj)


def encode_response(
    request: Request | None, obj: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    msgpack = wants_msgpack(request)
    return Response(encode(obj, msgpack), status, headers, MSGPACK if msgpack else JSON)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_bytes(body: bytes, typ: type[T], *, msgpack: bool) -> T:
    try:
        return wire.from_msgpack(body, typ) if msgpack else wire.from_json(body, typ)
    except msgspec.ValidationError as exc:
        raise from_validation(exc) from None
    except msgspec.DecodeError as exc:
        kind = "MessagePack" if msgpack else "JSON"
        raise MalformedBodyError(f"the body is not valid {kind}: {exc}") from None


async def decode_request(request: Request, typ: type[T], limit: int) -> T:
    content_type = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    msgpack = content_type in _MSGPACK_TYPES
    if not msgpack and content_type not in (JSON, "", "text/plain") and not content_type.endswith("+json"):
        raise UnsupportedMediaTypeError(f"send {JSON} or {MSGPACK}, not {content_type}", field="content-type")
    return decode_bytes(await read_body(request, limit), typ, msgpack=msgpack)
