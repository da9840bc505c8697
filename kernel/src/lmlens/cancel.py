"""Stopping model work that nobody waits for any more.

A thread cannot be killed, so work is cancelled cooperatively. The caller (the HTTP
pool, a WebSocket handler, a job) binds a ``CancelToken`` to the thread that runs the
work; every pass through ``run_forward`` checks the bound token before each
transformer block, so a long pass stops within one block, and a method that loops
over extra passes stops before its next pass.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lmlens.errors import LmlensError


class Cancelled(LmlensError):
    """Raised inside the work when its token was cancelled (time limit, client left)."""

    code = "cancelled"
    http_status = 504


class CancelToken:
    """A flag one thread sets and the worker thread checks."""

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
            raise self.error()

    def error(self) -> LmlensError:
        return Cancelled(self.reason)


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


def current() -> CancelToken | None:
    return getattr(_bound, "token", None)


def check_current() -> None:
    """Raise if the current thread's work was cancelled; a no-op without a token."""
    token = current()
    if token is not None:
        token.check()
