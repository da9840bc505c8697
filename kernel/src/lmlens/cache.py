"""Result cache: the key, the protocol, and the in-process LRU default.

The key covers the text, the model and its revision, each requested method with its
plugin's name and version, and the method's parameters, so that a plugin upgrade
never serves a stale result. The Redis adapter implements the same protocol.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Protocol

import msgspec


class Cache(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...


class MethodKey(msgspec.Struct, frozen=True, array_like=True):
    method: str
    plugin: str
    plugin_version: str
    method_version: str
    params: msgspec.Raw
    artifacts: list[str] = []  # content hashes of the fitted artifacts the params use


def cache_key(text: str, model: str, revision: str, methods: list[MethodKey]) -> str:
    payload = msgspec.msgpack.encode([text, model, revision, sorted(methods, key=lambda m: m.method)])
    return "lmlens:result:" + hashlib.sha256(payload).hexdigest()


class MemoryCache:
    """A thread-safe LRU of encoded results with an optional TTL per entry."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            value, expires = item
            if expires is not None and expires < time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        expires = time.monotonic() + ttl if ttl else None
        with self._lock:
            self._data[key] = (value, expires)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
