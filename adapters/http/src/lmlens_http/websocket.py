"""``WS /ws``: analyses with progress events, one after another on one socket.

The client sends ``{"type": "analyze", "text", "methods", ...}``; the server answers
``progress`` events as the forward pass and each method start and end, then
``complete`` with the result, or ``error`` with {code, message, field}. With a job
queue (lmlens-worker, ``REDIS_URL``), ``{"type": "follow", "job": id}`` streams a
queued job's progress (stage ``job``, with ``fraction``) and then its result. After an
error the socket stays open for the next request. A text frame gets JSON back, a
binary frame is read as MessagePack and answered in MessagePack.

Every event's ``data`` has a human-readable ``message`` (``complete`` too, beside the
result's fields), and a request answered from the cache still gets a ``progress``
event (stage ``cached``) before ``complete``.

A reader task watches the socket the whole time: when the client goes away, the
request in progress is cancelled (the pool then cancels the analysis, which stops at
its next transformer block) and a ``follow`` stops polling Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import anyio.to_thread
import msgspec
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from lmlens.errors import LmlensError
from lmlens_http import codec
from lmlens_http.errors import body_of, request_id_of
from lmlens_http.ratelimit import client_id
from lmlens_http.schemas import ProgressData, WsComplete, WsError, WsFollow, WsJobComplete, WsJobData, WsProgress
from lmlens_http.service import Service

FOLLOW_POLL_S = 0.25
FINAL = {"done", "failed", "cancelled"}
MESSAGE_TYPES = ("analyze", "follow")
INBOX = 32  # messages read ahead while a request runs


class _Kind(msgspec.Struct):
    type: Any = None


class UnknownMessageTypeError(LmlensError):
    code = "unknown_message_type"
    http_status = 422


def progress_message(stage: str, what: str) -> ProgressData:
    """The kernel's ``progress(stage, what)`` as a client reads it.

    ``("start" | "end", method)``, with method "" for the shared forward pass, and
    ``("window", "i/n")`` before each window of a streaming analysis.
    """
    if stage == "window":
        return ProgressData(message=f"window {what}", method=None, stage="window")
    subject = f"method {what}" if what else "forward pass"
    if stage == "start":
        return ProgressData(message=f"{subject} started", method=what or None, stage="start")
    return ProgressData(message=f"{subject} finished", method=what or None, stage="end")


@functools.lru_cache(maxsize=32)
def _complete_type(result_type: type) -> type:
    """The result type with a ``message`` field, so ``data["message"]`` reads on ``complete``."""
    return msgspec.defstruct(  # type: ignore[no-any-return]
        "CompleteData", [("message", str, "")], bases=(result_type,), kw_only=True, frozen=True
    )


def complete_data(result: Any) -> Any:
    names = ", ".join(result.methods) or "no methods"
    how = " (from the cache)" if result.cached else ""
    message = f"analysis complete{how}: {len(result.tokens)} tokens, {names}"
    fields = {name: getattr(result, name) for name in result.__struct_fields__}
    return _complete_type(type(result))(message=message, **fields)


class _Session:
    def __init__(self, websocket: WebSocket, service: Service) -> None:
        self.websocket = websocket
        self.service = service

    async def send(self, message: Any, msgpack: bool) -> None:
        if msgpack:
            await self.websocket.send_bytes(codec.encode(message, True))
        else:
            await self.websocket.send_text(codec.encode(message, False).decode())

    async def handle(self, raw: bytes, msgpack: bool) -> None:
        request_id = None
        try:
            kind = codec.decode_bytes(raw, _Kind, msgpack=msgpack).type
            if kind not in MESSAGE_TYPES:
                shown = "no type" if kind is None else f"type {kind!r}"
                raise UnknownMessageTypeError(
                    f"unknown message {shown}; send one of: " + ", ".join(f'{{"type": "{t}", ...}}' for t in
                                                                         MESSAGE_TYPES)
                    + ' (analyze: text, methods, params, model, id; follow: job, id)',
                    field="type",
                )
            if kind == "follow":
                follow = codec.decode_bytes(raw, WsFollow, msgpack=msgpack)
                request_id = follow.id
                await self.follow(follow.job, request_id, msgpack)
                return
            request = codec.decode_bytes(raw, self.service.types.ws_analyze, msgpack=msgpack)
            request_id = request.id
            limiter = self.service.limiter
            if limiter.enabled:
                await anyio.to_thread.run_sync(limiter.check, client_id(self.websocket))
            prep = self.service.prepare(request.text, request.model, request.methods, request.params)
            await self.run(prep, request_id, msgpack)
        except (WebSocketDisconnect, asyncio.CancelledError):
            raise
        except Exception as exc:
            _, body, _ = body_of(exc, request_id_of(self.websocket))
            await self.send(WsError(data=body, id=request_id), msgpack)

    async def follow(self, job_id: str, request_id: str | None, msgpack: bool) -> None:
        """Send a progress event whenever the job's record changes, then its result.

        Cancelled (and so stops polling) when the socket closes."""
        queue = await anyio.to_thread.run_sync(lambda: self.service.host.pm.hook.job_queue())
        if queue is None:
            from lmlens_http.errors import QueueUnavailableError

            raise QueueUnavailableError("no job queue here: the service needs lmlens-worker and REDIS_URL")
        last = None
        while True:
            status = await anyio.to_thread.run_sync(queue.status, job_id)
            seen = (status["status"], status["progress"], status["message"], status.get("stale"))
            if seen != last:
                last = seen
                stale = " (stale: its worker stopped renewing the lease)" if status.get("stale") else ""
                data = ProgressData(message=f"{status['status']}: {status['message']}{stale}", method=None,
                                    stage="job", fraction=float(status["progress"]))
                await self.send(WsProgress(data=data, id=request_id), msgpack)
            if status["status"] in FINAL:
                break
            await asyncio.sleep(FOLLOW_POLL_S)
        result = await anyio.to_thread.run_sync(queue.result, job_id, 0)  # raises the job's error, if any
        data = WsJobData(message=f"job {job_id} done", job=job_id, result=result)
        body = await anyio.to_thread.run_sync(codec.encode, WsJobComplete(data=data, id=request_id), msgpack)
        await self._send_raw(body, msgpack)

    async def run(self, prep: Any, request_id: str | None, msgpack: bool) -> None:
        events: asyncio.Queue[WsProgress] = asyncio.Queue()
        sent = 0

        def listener(stage: str, method: str) -> None:
            events.put_nowait(WsProgress(data=progress_message(stage, method), id=request_id))

        task = asyncio.ensure_future(self.service.analyze(prep, listener=listener))
        try:
            while not task.done():
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self.send(getter.result(), msgpack)
                    sent += 1
                else:
                    getter.cancel()
            while not events.empty():  # events scheduled before the result arrived
                await self.send(events.get_nowait(), msgpack)
                sent += 1
            result = task.result()
        finally:
            if not task.done():
                task.cancel()  # the client left: stop waiting, and the pool cancels the work
        if sent == 0:  # a cache hit: no pass ran, but the client still hears what happened
            data = ProgressData(message="found in the cache", method=None, stage="cached")
            await self.send(WsProgress(data=data, id=request_id), msgpack)
        body = await anyio.to_thread.run_sync(
            codec.encode, WsComplete(data=complete_data(result), id=request_id), msgpack
        )
        await self._send_raw(body, msgpack)

    async def _send_raw(self, body: bytes, msgpack: bool) -> None:
        if msgpack:
            await self.websocket.send_bytes(body)
        else:
            await self.websocket.send_text(body.decode())


async def analyze_socket(websocket: WebSocket) -> None:
    service: Service = websocket.app.state.service
    await websocket.accept()
    session = _Session(websocket, service)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX)
    closed = asyncio.Event()

    async def read() -> None:
        """Always reading, so a disconnect is seen while a request runs."""
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await inbox.put(message)
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            closed.set()

    async def first(work: asyncio.Future[Any]) -> bool:
        """Wait for ``work`` or the socket closing; True when ``work`` finished first."""
        closing = asyncio.ensure_future(closed.wait())
        try:
            done, _ = await asyncio.wait({work, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        return work in done

    reader = asyncio.ensure_future(read())
    try:
        while True:
            getter = asyncio.ensure_future(inbox.get())
            if not await first(getter):
                getter.cancel()
                return
            message = getter.result()
            data = message.get("bytes")
            raw, msgpack = (data, True) if data is not None else ((message.get("text") or "").encode(), False)
            handler = asyncio.ensure_future(session.handle(raw, msgpack))
            if not await first(handler):
                handler.cancel()  # the client left mid-request: cancel the analysis or the follow
                with contextlib.suppress(BaseException):
                    await handler
                return
            handler.result()
    except WebSocketDisconnect:
        return
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


ROUTES = [WebSocketRoute("/ws", analyze_socket, name="ws")]
