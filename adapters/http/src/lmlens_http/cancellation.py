"""Stopping model work that nobody waits for any more.

A thread cannot be killed, so work is cancelled cooperatively: each job carries a
``CancelToken``; the worker thread binds it, and the work checks it between stages
(the analyzer's progress callback) and before every transformer block (a forward
pre-hook installed once per model), so a long forward pass stops within one block.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lmlens.models import LoadedModel
from lmlens_http.errors import RequestTimeoutError


class RequestCancelled(RequestTimeoutError):
    """Raised inside the worker when its request timed out (or every client left)."""


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "the request was cancelled"

    def cancel(self, reason: str | None = None) -> None:
        if reason:
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise RequestCancelled(self.reason)


_bound = threading.local()


@contextmanager
def bound(token: CancelToken) -> Iterator[None]:
    """Make ``token`` the current thread's token while the work runs."""
    previous = getattr(_bound, "token", None)
    _bound.token = token
    try:
        yield
    finally:
        _bound.token = previous


def check_current() -> None:
    token: CancelToken | None = getattr(_bound, "token", None)
    if token is not None:
        token.check()


_checked_models: weakref.WeakSet[Any] = weakref.WeakSet()
_install_lock = threading.Lock()


def install_block_checks(loaded: LoadedModel) -> None:
    """Check the current token before each block of ``loaded``; once per model.

    The hook is a no-op on threads without a token, so the model stays usable
    outside the service (and costs one attribute lookup per block).
    """
    with _install_lock:
        if loaded.model in _checked_models:
            return

        def before_block(module: Any, args: Any) -> None:
            check_current()

        for block in loaded.modules.blocks:
            block.register_forward_pre_hook(before_block)
        _checked_models.add(loaded.model)
