"""What makes the service safe to expose: API keys, allowed origins, request ids.

- **API keys** (``LMLENS_API_KEYS``, or ``LMLENS_API_KEY_FILE`` with one sha256 hex
  digest a line): when any is configured, every route except ``/health`` needs
  ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, the WebSocket included;
  rate limits then count per key instead of per address. Only digests are kept in
  memory and compared in constant time.
- **Origins** (``LMLENS_ALLOWED_ORIGINS``, empty by default): a request that carries an
  ``Origin`` header (a browser page) is refused with 403 unless the origin is listed;
  listed origins get CORS headers. Together with the content-type rule (bodies must
  be JSON or MessagePack) a web page cannot drive a local service.
- **Request ids**: every response carries ``X-Request-ID``; an unexpected failure is
  logged with it and answered 500 ``internal_error`` with the id, never the exception.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmlens_http.config import ConfigError, ServiceConfig
from lmlens_http.errors import OriginNotAllowedError, UnauthorizedError, body_of

log = logging.getLogger(__name__)

OPEN_PATHS = {"/health"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The configured keys, as sha256 digests."""

    def __init__(self, keys: list[str], key_file: str = "") -> None:
        digests = [digest(k) for k in keys if k]
        if key_file:
            try:
                lines = Path(key_file).read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read the API key file {key_file}: {exc.strerror}",
                                  field="api_key_file") from None
            for number, line in enumerate(lines, 1):
                line = line.split("#", 1)[0].strip().lower().removeprefix("sha256:")
                if not line:
                    continue
                if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
                    raise ConfigError(f"{key_file}:{number} is not a sha256 hex digest", field="api_key_file")
                digests.append(line)
        self.digests = list(dict.fromkeys(digests))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def identify(self, headers: Headers) -> str:
        """The key's short digest (the client's id for rate limits); raise when no key matches."""
        presented = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if presented is None and auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
        if not presented:
            raise UnauthorizedError("this service needs an API key: send Authorization: Bearer <key> "
                                    "or X-API-Key: <key>", field="authorization")
        given = digest(presented)
        found = False
        for known in self.digests:  # every digest compared: no early exit to time
            found |= hmac.compare_digest(given, known)
        if not found:
            raise UnauthorizedError("the API key is not valid", field="authorization")
        return "key:" + given[:16]


class GuardMiddleware:
    """Request id, origin check and API key for every HTTP request and WebSocket."""

    def __init__(self, app: ASGIApp, config: ServiceConfig) -> None:
        self.app = app
        self.keys = ApiKeys(config.api_keys, config.api_key_file)
        self.origins = set(config.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        headers = Headers(scope=scope)
        try:
            origin = headers.get("origin")
            if origin is not None and origin not in self.origins:
                raise OriginNotAllowedError(f"requests from origin {origin!r} are not allowed "
                                            "(LMLENS_ALLOWED_ORIGINS)", field="origin")
            if self.keys.enabled and scope["path"] not in OPEN_PATHS:
                state["client"] = self.keys.identify(headers)
        except (OriginNotAllowedError, UnauthorizedError) as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": exc.code})
            else:
                await self._error(scope, send, exc, request_id)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # the last net: log it, answer 500 with the id
            if started:
                log.error("error after the response started (request id %s)", request_id, exc_info=exc)
                return
            await self._error(scope, send, exc, request_id)

    @staticmethod
    async def _error(scope: Scope, send: Send, exc: BaseException, request_id: str) -> None:
        from lmlens_http.codec import encode

        status, body, extra = body_of(exc, request_id)
        headers = Headers(scope=scope)
        msgpack = "msgpack" in headers.get("accept", "")
        payload = encode(body, msgpack)
        raw: list[Any] = [
            (b"content-type", b"application/msgpack" if msgpack else b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", request_id.encode()),
            *((k.lower().encode(), v.encode()) for k, v in extra.items()),
        ]
        if status == 401:
            raw.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
