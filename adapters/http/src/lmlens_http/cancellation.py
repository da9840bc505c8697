"""Stopping model work that nobody waits for any more.

The kernel owns cancellation (``lmlens.cancel``): each job carries a token bound to
the thread that runs it, ``run_forward`` checks it before every transformer block,
and the analyzer's progress callback checks it between stages. The service's token
raises ``RequestCancelled``, a 504 ``timeout``.
"""

from __future__ import annotations

from lmlens.cancel import CancelToken as KernelCancelToken
from lmlens.cancel import bound, check_current
from lmlens.errors import LmlensError
from lmlens_http.errors import RequestTimeoutError

__all__ = ["CancelToken", "RequestCancelled", "bound", "check_current"]


class RequestCancelled(RequestTimeoutError):
    """Raised inside the worker when its request timed out (or every client left)."""


class CancelToken(KernelCancelToken):
    def error(self) -> LmlensError:
        return RequestCancelled(self.reason)
