"""Every failure becomes an ``ErrorBody`` {code, message, field} with a fitting status.

Kernel errors carry their own code and status. msgspec validation errors become 422
``invalid_request`` with the field path taken from msgspec's message
(``$.params.attention`` -> ``params.attention``). The service adds its own few codes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from lmlens.errors import LmlensError
from lmlens.wire import ErrorBody

log = logging.getLogger(__name__)


class MalformedBodyError(LmlensError):
    code = "malformed_body"
    http_status = 400


class InvalidRequestError(LmlensError):
    code = "invalid_request"
    http_status = 422


class BodyTooLargeError(LmlensError):
    code = "body_too_large"
    http_status = 413


class UnsupportedMediaTypeError(LmlensError):
    code = "unsupported_media_type"
    http_status = 415


class ModelNotAllowedError(LmlensError):
    code = "model_not_allowed"
    http_status = 403


class BatchTooLargeError(LmlensError):
    code = "batch_too_large"
    http_status = 413


class OverloadedError(LmlensError):
    """The pool's queue is full; the client should come back after ``retry_after`` seconds."""

    code = "overloaded"
    http_status = 503

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(LmlensError):
    code = "timeout"
    http_status = 504


class QueueUnavailableError(LmlensError):
    """The job queue (Redis) cannot be reached now; the client should retry later."""

    code = "queue_unavailable"
    http_status = 503

    def __init__(self, message: str, *, retry_after: int = 5, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


class UnauthorizedError(LmlensError):
    code = "unauthorized"
    http_status = 401


class OriginNotAllowedError(LmlensError):
    code = "origin_not_allowed"
    http_status = 403


class RateLimitedError(LmlensError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(?:missing required field|unknown field) `(?P<name>[^`]+)`")


def validation_field(message: str, prefix: str = "") -> str | None:
    """The dotted field path a msgspec validation message points at."""
    path = ""
    at = _AT.search(message)
    if at:
        path = at.group("path").lstrip(".")
    named = _NAMED.search(message)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    if prefix:
        path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
    return path or None


def from_validation(exc: msgspec.ValidationError, prefix: str = "") -> InvalidRequestError:
    message = str(exc)
    return InvalidRequestError(_AT.sub("", message), field=validation_field(message, prefix))


# 5xx codes whose messages come from inside (exceptions of torch, Redis, a plugin): the
# client gets the code, a short message and the request id; the log gets the detail.
_OPAQUE = {"method_failed", "model_load_failed"}


def body_of(exc: BaseException, request_id: str | None = None) -> tuple[int, ErrorBody, dict[str, str]]:
    """(status, body, extra headers) for any exception."""
    headers: dict[str, str] = {}
    ref = f" (request id {request_id})" if request_id else ""
    if isinstance(exc, msgspec.ValidationError):
        exc = from_validation(exc)
    if isinstance(exc, LmlensError):
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if exc.http_status >= 500 and exc.code in _OPAQUE:
            log.error("%s%s: %s", exc.code, ref, exc.message, exc_info=exc)
            message = {
                "method_failed": "a method failed on the server",
                "model_load_failed": "the model could not be loaded on the server",
            }[exc.code]
            return exc.http_status, ErrorBody(code=exc.code, message=message + ref, field=exc.field), headers
        return exc.http_status, ErrorBody(code=exc.code, message=exc.message, field=exc.field), headers
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return exc.status_code, ErrorBody(code=code, message=str(exc.detail)), dict(exc.headers or {})
    log.error("unexpected error%s", ref, exc_info=exc)
    return 500, ErrorBody(code="internal_error", message="internal server error" + ref), headers


def request_id_of(request: Any) -> str | None:
    state = request.scope.get("state") if request is not None else None
    return state.get("request_id") if isinstance(state, dict) else None


def error_response(request: Request | None, exc: BaseException) -> Response:
    from lmlens_http.codec import encode_response  # the codec imports the errors above

    status, body, headers = body_of(exc, request_id_of(request))
    return encode_response(request, body, status=status, headers=headers)


async def handle_exception(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


EXCEPTION_HANDLERS = {
    LmlensError: handle_exception,
    msgspec.ValidationError: handle_exception,
    HTTPException: handle_exception,
}
"""Anything else reaches ``security.GuardMiddleware``, which logs it with the request id
and answers 500 without dropping the connection (Starlette's own last handler re-raises)."""
