"""``WS /ws``: analyses with progress events, one after another on one socket.

The client sends ``{"type": "analyze", "text", "methods", ...}``; the server answers
``progress`` events as the forward pass and each method start and end, then
``complete`` with the result, or ``error`` with {code, message, field}. With a job
queue (lmlens-worker, ``REDIS_URL``), ``{"type": "follow", "job": id}`` streams a
queued job's progress (stage ``job``, with ``fraction``) and then its result. After an
error the socket stays open for the next request. A text frame gets JSON back, a
binary frame is read as MessagePack and answered in MessagePack.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio.to_thread
import msgspec
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from lmlens.errors import LmlensError
from lmlens_http import codec
from lmlens_http.errors import body_of
from lmlens_http.ratelimit import client_id
from lmlens_http.schemas import ProgressData, WsComplete, WsError, WsFollow, WsJobComplete, WsProgress
from lmlens_http.service import Service

FOLLOW_POLL_S = 0.25
FINAL = {"done", "failed", "cancelled"}


class _Kind(msgspec.Struct):
    type: str = ""


class NoJobQueueError(LmlensError):
    code = "no_job_queue"
    http_status = 503


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
            _, body, _ = body_of(exc)
            await self.send(WsError(data=body, id=request_id), msgpack)

    async def follow(self, job_id: str, request_id: str | None, msgpack: bool) -> None:
        """Send a progress event whenever the job's record changes, then its result."""
        queue = await anyio.to_thread.run_sync(lambda: self.service.host.pm.hook.job_queue())
        if queue is None:
            raise NoJobQueueError("no job queue here: the service needs lmlens-worker and REDIS_URL")
        last = None
        while True:
            status = await anyio.to_thread.run_sync(queue.status, job_id)
            seen = (status["status"], status["progress"], status["message"])
            if seen != last:
                last = seen
                data = ProgressData(message=f"{status['status']}: {status['message']}", method=None, stage="job",
                                    fraction=float(status["progress"]))
                await self.send(WsProgress(data=data, id=request_id), msgpack)
            if status["status"] in FINAL:
                break
            await asyncio.sleep(FOLLOW_POLL_S)
        result = await anyio.to_thread.run_sync(queue.result, job_id, 0)  # raises the job's error, if any
        await self.send(WsJobComplete(data=result, id=request_id), msgpack)

    async def run(self, prep: Any, request_id: str | None, msgpack: bool) -> None:
        events: asyncio.Queue[WsProgress] = asyncio.Queue()

        def listener(stage: str, method: str) -> None:
            events.put_nowait(WsProgress(data=progress_message(stage, method), id=request_id))

        task = asyncio.ensure_future(self.service.analyze(prep, listener=listener))
        try:
            while not task.done():
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self.send(getter.result(), msgpack)
                else:
                    getter.cancel()
            while not events.empty():  # events scheduled before the result arrived
                await self.send(events.get_nowait(), msgpack)
            result = task.result()
        finally:
            if not task.done():
                task.cancel()  # the client left: stop waiting, and the pool may cancel the work
        body = await anyio.to_thread.run_sync(codec.encode, WsComplete(data=result, id=request_id), msgpack)
        if msgpack:
            await self.websocket.send_bytes(body)
        else:
            await self.websocket.send_text(body.decode())


async def analyze_socket(websocket: WebSocket) -> None:
    service: Service = websocket.app.state.service
    await websocket.accept()
    session = _Session(websocket, service)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                await session.handle(data, msgpack=True)
            else:
                await session.handle((message.get("text") or "").encode(), msgpack=False)
    except WebSocketDisconnect:
        return


ROUTES = [WebSocketRoute("/ws", analyze_socket, name="ws")]
