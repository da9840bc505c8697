"""A real ``redis-server`` for tests: started on a free port, stoppable and restartable.

Import the fixtures into a ``conftest.py``::

    from lmlens_redis.testing import redis_server  # noqa: F401

When the ``redis-server`` binary is missing but ``REDIS_URL`` is set, the fixture
uses that server instead; it cannot stop an outside server, so outage tests skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process on one port, kept across stop() and start()."""

    def __init__(self, binary: str | None = None, port: int | None = None, url: str | None = None):
        self.binary = binary
        self.port = port or free_port()
        self._url = url
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="lmlens-redis-")

    @property
    def url(self) -> str:
        return self._url or f"redis://127.0.0.1:{self.port}/0"

    @property
    def can_stop(self) -> bool:
        return self.binary is not None

    def start(self, timeout: float = 10.0) -> None:
        if self.binary is None or self.process is not None:
            return
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def start_redis_server() -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.skip("needs the redis-server binary or REDIS_URL")
        server = RedisServer(url=url)
        server.client().flushdb()
        return server
    server = RedisServer(binary)
    server.start()
    return server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty Redis for one test (its own process when the binary is installed)."""
    server = start_redis_server()
    try:
        yield server
    finally:
        server.stop()
