"""Run the real service in a test: uvicorn on a free port, in a thread.

    with running(create_app(config)) as server:
        httpx.get(server.url + "/health")
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, app: Any, server: Any, port: int) -> None:
        self.app = app
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"

    @property
    def service(self) -> Any:
        return self.app.state.service

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


@contextmanager
def running(app: Any, timeout: float = 60.0) -> Iterator[Server]:
    """Serve ``app`` until the block ends; startup (the lifespan, preloads) finishes first."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            ws="websockets-sansio", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield Server(app, server, port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def tiny_config(**overrides: Any) -> Any:
    """Tiny models only, tiny-gpt2 preloaded, no rate limit: fast and deterministic."""
    from lmlens_http.config import ServiceConfig

    values: dict[str, Any] = {"models": ["tiny-gpt2", "tiny-llama", "tiny-bert"],
                              "default_model": "tiny-gpt2", "preload": ["tiny-gpt2"], "rate_limit": 0}
    values.update(overrides)
    return ServiceConfig(**values)
