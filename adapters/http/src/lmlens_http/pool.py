"""The bounded pool that runs model work off the event loop.

- At most ``workers`` jobs run at once and ``queue_size`` wait; one more is refused
  with ``OverloadedError`` (503 + Retry-After) instead of piling up.
- Identical requests in flight share one job (single flight): the second caller
  waits for the first one's result and its progress events.
- Each caller waits at most ``timeout_s``; a caller that gives up gets a 504, and
  when no caller is left the job's token is cancelled, so queued work never starts
  and running work stops at its next check.
"""

from __future__ import annotations

import asyncio
import collections
import math
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from lmlens_http.cancellation import CancelToken, bound
from lmlens_http.errors import OverloadedError, RequestTimeoutError

T = TypeVar("T")
Listener = Callable[[str, str], None]
"""``listener(stage, method)``, called on the event loop."""
Notify = Callable[[str, str], None]
"""``notify(stage, method)``, called from the worker thread."""


class PoolStats(msgspec.Struct, frozen=True, kw_only=True):
    workers: int
    queue_size: int
    running: int
    queued: int
    in_flight_keys: int
    rejected: int
    timed_out: int
    shared: int  # callers that joined an identical job instead of starting one


@dataclass(eq=False)
class _Job(Generic[T]):
    key: str | None
    token: CancelToken = field(default_factory=CancelToken)
    listeners: list[Listener] = field(default_factory=list)
    waiters: int = 0
    future: asyncio.Future[T] | None = None


class AnalysisPool:
    def __init__(self, workers: int = 2, queue_size: int = 16, timeout_s: float = 60.0) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="lmlens-analysis")
        self._jobs: dict[str, _Job[Any]] = {}
        self._admitted = 0
        self._running = 0
        self._lock = threading.Lock()
        self._mean_s = 1.0  # typical recent job duration, for Retry-After (1 s until one is measured)
        self._durations: collections.deque[float] = collections.deque(maxlen=16)
        self._rejected = self._timed_out = self._shared = 0

    def stats(self) -> PoolStats:
        return PoolStats(
            workers=self.workers,
            queue_size=self.queue_size,
            running=self._running,
            queued=max(0, self._admitted - self._running),
            in_flight_keys=len(self._jobs),
            rejected=self._rejected,
            timed_out=self._timed_out,
            shared=self._shared,
        )

    def retry_after(self) -> int:
        """Seconds until the work already admitted has drained: the jobs queued or running,
        times the median of the recent service times, over the workers. (The time until one slot
        frees is much shorter, but a client admitted then would wait behind the queue.)"""
        ahead = max(1, self._admitted)
        return max(1, min(600, math.ceil(self._mean_s * ahead / self.workers)))

    async def run(
        self,
        key: str | None,
        work: Callable[[Notify], T],
        *,
        listener: Listener | None = None,
        timeout_s: float | None = None,
        measured: bool = True,
    ) -> T:
        """Run ``work(notify)`` in the pool, or join the identical job already running.

        ``measured``: its duration counts toward the service time behind Retry-After
        (not for model loads and checks, which are not analyses)."""
        job = self._jobs.get(key) if key is not None else None
        if job is None or job.token.cancelled:
            job = self._start(key, work, measured)
        else:
            self._shared += 1
        assert job.future is not None
        if listener is not None:
            job.listeners.append(listener)
        job.waiters += 1
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            self._timed_out += 1
            raise RequestTimeoutError(
                f"the analysis took longer than {timeout:g} s and was cancelled"
            ) from None
        finally:
            job.waiters -= 1
            if listener is not None:
                job.listeners.remove(listener)
            if job.waiters == 0 and not job.future.done():
                job.token.cancel("every client waiting for this analysis gave up")

    def _start(self, key: str | None, work: Callable[[Notify], T], measured: bool = True) -> _Job[T]:
        if self._admitted >= self.workers + self.queue_size:
            self._rejected += 1
            raise OverloadedError(
                f"the server is busy ({self._admitted} analyses running or queued); retry later",
                retry_after=self.retry_after(),
            )
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(key)

        def broadcast(stage: str, method: str) -> None:
            for listener in list(job.listeners):
                listener(stage, method)

        def notify(stage: str, method: str) -> None:
            job.token.check()  # a cancelled job stops between stages
            if job.listeners:
                loop.call_soon_threadsafe(broadcast, stage, method)

        def runner() -> T:
            job.token.check()  # cancelled while queued: never start
            with self._lock:
                self._running += 1
            started = time.perf_counter()
            try:
                with bound(job.token):
                    return work(notify)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self._running -= 1
                    if measured and not job.token.cancelled:  # cancelled work ran short: no sample
                        self._durations.append(elapsed)
                        # the median of the recent ones: one slow first call does not skew it
                        self._mean_s = statistics.median(self._durations)

        self._admitted += 1
        job.future = asyncio.wrap_future(self._executor.submit(runner), loop=loop)
        job.future.add_done_callback(lambda future: self._finish(job, future))
        if key is not None:
            self._jobs[key] = job
        return job

    def _finish(self, job: _Job[Any], future: asyncio.Future[Any]) -> None:
        self._admitted -= 1
        if job.key is not None and self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        if not future.cancelled():
            future.exception()  # retrieved here, so a job nobody awaits logs nothing

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            job.token.cancel("the server is shutting down")
        self._executor.shutdown(wait=False, cancel_futures=True)
