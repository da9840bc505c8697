"""Long-running work: what a job is, and what it may ask of the worker running it.

Plugins offer jobs through ``register_jobs``; a queue adapter (``lmlens-worker``)
runs them. A job's ``run(params, context)`` reports progress through the context,
records per-item results so that a retried job resumes where it stopped, and checks
for cancellation between items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from lmlens.errors import LmlensError


class UnknownJobKindError(LmlensError):
    code = "unknown_job_kind"


class QueueUnavailableError(LmlensError):
    """No job queue is configured or reachable (install lmlens-worker, set REDIS_URL)."""

    code = "queue_unavailable"
    http_status = 503


class JobCancelled(LmlensError):
    code = "job_cancelled"
    http_status = 409


class JobContext(Protocol):
    def progress(self, fraction: float, message: str) -> None:
        """Report progress in [0, 1]; raises JobCancelled if the job was cancelled."""

    def done_items(self) -> dict[int, bytes]:
        """Items finished by earlier attempts of this job (index -> encoded value)."""

    def item_done(self, index: int, value: bytes) -> None:
        """Record one finished item, so that a retry skips it."""

    @property
    def analyzer(self) -> Any:
        """An Analyzer shared by the jobs of this worker process (models stay loaded)."""


@dataclass(frozen=True)
class Job:
    """A kind of long-running work. ``params`` is validated at submission."""

    kind: str
    description: str
    params: type[msgspec.Struct]
    run: Callable[[Any, JobContext], Any]


class JobQueue(Protocol):
    """What a queue adapter offers to ``Analyzer.submit``."""

    def submit(self, kind: str, params: dict[str, Any]) -> str: ...

    def status(self, job_id: str) -> dict[str, Any]: ...

    def result(self, job_id: str, timeout: float | None = None) -> Any: ...

    def cancel(self, job_id: str) -> bool: ...


class JobHandle:
    """Returned by ``Analyzer.submit``: follow one job."""

    def __init__(self, queue: JobQueue, job_id: str) -> None:
        self.queue = queue
        self.id = job_id

    def status(self) -> dict[str, Any]:
        return self.queue.status(self.id)

    def result(self, timeout: float | None = None) -> Any:
        return self.queue.result(self.id, timeout=timeout)

    def cancel(self) -> bool:
        return self.queue.cancel(self.id)

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"
