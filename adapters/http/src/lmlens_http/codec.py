"""Request bodies in, responses out: JSON by default, MessagePack on request.

A client sends MessagePack with ``Content-Type: application/msgpack`` and asks for it
back with ``Accept: application/msgpack``; arrays then travel as packed bytes.

Every body goes through ``decode_request``: a content type is required (JSON or
MessagePack: a web page cannot send either cross-site without a CORS preflight), the
body is bounded, and anything the decoder cannot read (invalid UTF-8, nesting deeper
than ``MAX_DEPTH``, a lone surrogate) is a 400 ``malformed_body``, never a 500.
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
MAX_DEPTH = 64  # no request of ours nests deeper; far below Python's recursion limit


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
        raise BodyTooLargeError(f"the body is {declared} bytes; the limit is {limit}", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the body is over the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_depth_ok(body: bytes, limit: int) -> bool:
    """False when brackets outside strings nest deeper than ``limit`` (one linear scan)."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def decode_bytes(body: bytes, typ: type[T], *, msgpack: bool) -> T:
    kind = "MessagePack" if msgpack else "JSON"
    if not msgpack and not _json_depth_ok(body, MAX_DEPTH):
        raise MalformedBodyError(f"the JSON body nests deeper than {MAX_DEPTH} levels", field="body")
    try:
        value = wire.from_msgpack(body, typ) if msgpack else wire.from_json(body, typ)
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise from_validation(exc) from None
        value = _with_integral_floats(body, typ, msgpack, exc)
    except msgspec.DecodeError as exc:
        raise MalformedBodyError(f"the body is not valid {kind}: {exc}", field="body") from None
    except UnicodeDecodeError as exc:
        raise MalformedBodyError(
            f"the body is not valid {kind}: invalid UTF-8 at byte {exc.start}", field="body"
        ) from None
    except RecursionError:
        raise MalformedBodyError(f"the {kind} body nests too deeply", field="body") from None
    check_unicode(value)
    return value


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def _with_integral_floats(body: bytes, typ: type[T], msgpack: bool, first: msgspec.ValidationError) -> T:
    """JSON Schema counts ``22.0`` as an integer, and so does the service: an integer
    field given an integral float is read as that integer (float fields take integers)."""
    raw = msgspec.msgpack.decode(body) if msgpack else msgspec.json.decode(body)
    try:
        return wire.convert(_integral(raw), typ)
    except msgspec.ValidationError:
        raise from_validation(first) from None


def check_unicode(value: Any, path: str = "") -> None:
    """Refuse strings that cannot be encoded as UTF-8 (JSON's ``"\\ud800"``): they would
    fail later, in the tokenizer or the cache key."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MalformedBodyError(f"the body nests deeper than {MAX_DEPTH} levels", field="body")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedBodyError(
                    "a string holds a lone surrogate (not valid Unicode)", field=where.lstrip(".") or "body"
                ) from None
        elif isinstance(item, dict):
            for key, sub in item.items():
                stack.append((key, where, depth + 1))
                stack.append((sub, f"{where}.{key}", depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, f"{where}[{i}]", depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, msgspec.Struct):
            for name in item.__struct_fields__:
                stack.append((getattr(item, name), f"{where}.{name}", depth + 1))


def body_media(request: Request) -> bool:
    """True for MessagePack, False for JSON; anything else (or nothing) is a 415."""
    raw = request.headers.get("content-type")
    content_type = (raw or "").split(";")[0].strip().lower()
    if content_type in _MSGPACK_TYPES:
        return True
    if content_type == JSON or (content_type.startswith("application/") and content_type.endswith("+json")):
        return False
    shown = content_type or "no content type"
    raise UnsupportedMediaTypeError(f"send {JSON} or {MSGPACK}, not {shown}", field="content-type")


async def decode_request(request: Request, typ: type[T], limit: int) -> T:
    msgpack = body_media(request)
    return decode_bytes(await read_body(request, limit), typ, msgpack=msgpack)
