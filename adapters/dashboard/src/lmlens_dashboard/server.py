"""Serve the page with Bokeh's server (what ``bokeh serve`` runs), in the foreground or a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler

from lmlens_dashboard.app import make_document
from lmlens_dashboard.backend import Backend

WORKERS = 2  # analyses at once; the kernel serialises passes on one model anyway


def application(backend: Backend, executor: ThreadPoolExecutor) -> Application:
    return Application(FunctionHandler(make_document(backend, executor)))


def _server(apps: Mapping[str, Application], port: int, address: str, origins: Sequence[str], io_loop: Any) -> Any:
    from bokeh.server.server import Server

    return Server(dict(apps), io_loop=io_loop, port=port, address=address,
                  allow_websocket_origin=list(origins) or None,
                  websocket_max_message_size=64 * 1024 * 1024)


def serve(backend: Backend, *, port: int = 5006, address: str = "127.0.0.1",
          origins: Sequence[str] = (), show: bool = False) -> None:
    """Serve until interrupted (the ``lmlens dashboard`` command)."""
    from tornado.ioloop import IOLoop

    warm = getattr(backend, "warm", None)
    if warm is not None:
        analyzer = getattr(backend, "analyzer", None)
        print(f"lmlens dashboard: loading {getattr(analyzer, 'model_spec', 'the model')} ...", flush=True)
        warm()
    executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="dashboard")
    origins = list(origins) or [f"localhost:{port}", f"127.0.0.1:{port}", f"{address}:{port}"]
    server = _server({"/": application(backend, executor)}, port, address, origins, IOLoop.current())
    server.start()
    print(f"lmlens dashboard: http://{'localhost' if address in ('127.0.0.1', '0.0.0.0') else address}:{server.port}/"
          f"  ({backend.where})", flush=True)
    if show:
        server.io_loop.add_callback(server.show, "/")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


class Running:
    def __init__(self, server: Any, loop: Any, thread: threading.Thread) -> None:
        self.server = server
        self.loop = loop
        self.thread = thread
        self.port = int(server.port)
        self.url = f"http://127.0.0.1:{self.port}"


@contextmanager
def running(backends: Mapping[str, Backend], timeout: float = 60.0) -> Iterator[Running]:
    """Serve one page per path (``{"/": backend, "/other": backend2}``) on a free port in a thread."""
    from tornado.ioloop import IOLoop

    executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="dashboard")
    started = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            asyncio.set_event_loop(asyncio.new_event_loop())
            loop = IOLoop.current()
            apps = {path: application(backend, executor) for path, backend in backends.items()}
            server = _server(apps, 0, "127.0.0.1", ["*"], loop)
            server.start()
            box.update(server=server, loop=loop)
        except BaseException as exc:
            box["error"] = exc
            started.set()
            return
        started.set()
        loop.start()

    thread = threading.Thread(target=run, daemon=True, name="bokeh-dashboard")
    thread.start()
    if not started.wait(timeout) or "error" in box:
        raise RuntimeError(f"the dashboard server did not start: {box.get('error')}")
    handle = Running(box["server"], box["loop"], thread)
    try:
        yield handle
    finally:
        def stop() -> None:
            handle.server.stop()
            handle.loop.stop()

        handle.loop.add_callback(stop)
        thread.join(timeout=10)
        executor.shutdown(wait=False, cancel_futures=True)
