"""Long documents through a job queue: a local queue for the in-process dashboard, and
following a job (its progress, and each window as soon as it is recorded) in either mode.

Where the job runs:

- ``--api URL``: on the service's workers (``POST /jobs``, kind ``analyze_document``),
  followed with ``GET /jobs/{id}`` and ``GET /jobs/{id}/items/{start}``.
- in process, with ``REDIS_URL`` set and lmlens-worker installed: on the Dramatiq/Redis
  queue the user configured (``lmlens worker`` must be running), read from Redis directly.
- in process otherwise: ``LocalJobs``, one thread in the dashboard's process that runs
  the same job (the kernel's ``analyze_document``, so the same streaming, the same
  progress messages and the same MessagePack items as on a worker), one job at a time.

Either way a window reaches the page as the item its job recorded, decoded into this
side's plugin Result classes, so the page draws it as it draws any analysis.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec

from lmlens import wire
from lmlens.chunking import Window
from lmlens.errors import InvalidParamsError, LmlensError
from lmlens.jobs import JobCancelled
from lmlens.plugins import PluginHost

log = logging.getLogger("lmlens_dashboard")


class UnknownJobError(LmlensError):
    """As the worker adapter says it: no such job (unknown, or no longer kept)."""

    code = "unknown_job"
    http_status = 404

DOCUMENT_JOB = "analyze_document"
FINAL = {"done", "failed", "cancelled"}
POLL_S = 0.25  # between two looks at a job on Redis or the API
ITEMS_PER_LOOK = 16


@dataclass
class JobView:
    """One look at a job: its state, and the windows recorded since the previous look."""

    id: str
    status: str
    progress: float
    message: str
    error: dict[str, Any] | None = None
    windows: list[Any] = field(default_factory=list)  # WindowResult-shaped, decoded with this side's plugins

    @property
    def final(self) -> bool:
        return self.status in FINAL


def window_type(host: PluginHost, methods: list[str]) -> type[msgspec.Struct]:
    """``WindowResult`` with ``result`` typed for ``methods`` (so its method results decode
    into the plugins' Result classes, as ``AnalysisResult`` does for one text)."""
    classes = [host.methods[m].result for m in methods if m in host.methods]
    typed = wire.result_type(classes)
    return _window_type(typed)


_window_types: dict[type, type[msgspec.Struct]] = {}


def _window_type(typed: type) -> type[msgspec.Struct]:
    if typed not in _window_types:
        _window_types[typed] = msgspec.defstruct(
            "TypedWindowResult",
            [("window", Window), ("n_windows", int), ("offset", int), ("result", typed)],
            kw_only=True, frozen=True,
        )
    return _window_types[typed]


# --- a local queue ------------------------------------------------------------------------


class _LocalJob:
    def __init__(self, job_id: str, kind: str, params: Any) -> None:
        self.id = job_id
        self.kind = kind
        self.params = params
        self.status = "queued"
        self.progress = 0.0
        self.message = "queued"
        self.error: dict[str, Any] | None = None
        self.items: dict[int, bytes] = {}
        self.result: Any = None
        self.cancelled = False
        self.updated = time.time()


class _LocalContext:
    """The ``JobContext`` a job sees here: as on a worker, without Redis."""

    def __init__(self, jobs: LocalJobs, job: _LocalJob) -> None:
        self.jobs = jobs
        self.job = job

    @property
    def analyzer(self) -> Any:
        return self.jobs.analyzer

    def progress(self, fraction: float, message: str) -> None:
        self.jobs._set(self.job, progress=max(0.0, min(1.0, fraction)), message=message)
        if self.job.cancelled:
            raise JobCancelled("the job was cancelled")

    def done_items(self) -> dict[int, bytes]:
        with self.jobs.changed:
            return dict(self.job.items)

    def item_done(self, index: int, value: bytes) -> None:
        with self.jobs.changed:
            self.job.items[index] = value
            self.job.updated = time.time()
            self.jobs.changed.notify_all()


class LocalJobs:
    """Jobs run one at a time on a thread of the dashboard's process, kept while it runs
    (at most ``keep`` finished ones), so a reloaded page follows its job again."""

    def __init__(self, analyzer: Any, keep: int = 32) -> None:
        self.analyzer = analyzer
        self.host: PluginHost = analyzer.plugins
        self.keep = keep
        self.jobs: dict[str, _LocalJob] = {}
        self.changed = threading.Condition()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmlens-local-job")

    def submit(self, kind: str, params: Mapping[str, Any]) -> str:
        job = self.host.job(kind)
        try:
            typed = wire.convert(dict(params), job.params)
        except msgspec.ValidationError as exc:
            raise InvalidParamsError(f"invalid params for job {kind!r}: {exc}", field="params") from None
        record = _LocalJob(uuid.uuid4().hex, kind, typed)
        with self.changed:
            self.jobs[record.id] = record
            finished = [j for j in self.jobs.values() if j.status in FINAL]
            for old in sorted(finished, key=lambda j: j.updated)[: max(0, len(finished) - self.keep)]:
                del self.jobs[old.id]
        self.pool.submit(self._run, record, job.run)
        return record.id

    def _set(self, job: _LocalJob, **fields: Any) -> None:
        with self.changed:
            for name, value in fields.items():
                setattr(job, name, value)
            job.updated = time.time()
            self.changed.notify_all()

    def _run(self, job: _LocalJob, run: Callable[[Any, Any], Any]) -> None:
        if job.cancelled:
            return
        self._set(job, status="running", message="running")
        try:
            value = run(job.params, _LocalContext(self, job))
        except JobCancelled:
            self._set(job, status="cancelled", message="cancelled")
        except LmlensError as exc:
            self._set(job, status="failed", message="failed",
                      error={"code": exc.code, "message": exc.message, "field": exc.field})
        except Exception as exc:  # as a worker records it: one line here, the traceback in the log
            log.exception("local job %s failed", job.id)
            self._set(job, status="failed", message="failed",
                      error={"code": "job_error", "message": f"{type(exc).__name__}: {exc}"[:300]})
        else:
            self._set(job, status="done", progress=1.0, message="done", result=value)

    def _get(self, job_id: str) -> _LocalJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJobError(f"no job {job_id!r} in this dashboard (unknown, or forgotten)", field="job")
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        with self.changed:
            job = self._get(job_id)
            return {"id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress,
                    "message": job.message, "error": job.error}

    def items(self, job_id: str, start: int = 0, limit: int = ITEMS_PER_LOOK) -> dict[int, bytes]:
        with self.changed:
            job = self._get(job_id)
            return {i: job.items[i] for i in range(start, start + limit) if i in job.items}

    def cancel(self, job_id: str) -> bool:
        with self.changed:
            job = self._get(job_id)
            if job.status in FINAL:
                return False
            job.cancelled = True
            if job.status == "queued":
                job.status, job.message = "cancelled", "cancelled by request"
            self.changed.notify_all()
            return True

    def wait(self, job_id: str, seen: float, timeout: float) -> None:
        """Return when the job changed after ``seen`` (its ``updated`` time) or after ``timeout``."""
        with self.changed:
            self.changed.wait_for(lambda: self._get(job_id).updated > seen, timeout=timeout)

    def updated(self, job_id: str) -> float:
        with self.changed:
            return self._get(job_id).updated

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --- following a job ------------------------------------------------------------------------


def follow(
    job_id: str,
    status: Callable[[], dict[str, Any]],
    items: Callable[[int], dict[int, Any]],
    decode: Callable[[Any], Any],
    pause: Callable[[], None],
    start: int = 0,
) -> Iterator[JobView]:
    """Look at a job until it ends, yielding a view whenever something changed; each
    window is in exactly one view, in order (a view holds one window at most, so the page
    puts them on one by one). The status is read before the items: once it reads final,
    every item is already recorded."""
    following = start
    last: tuple[Any, ...] | None = None
    while True:
        state = status()
        found = items(following)
        windows = []
        while following in found:
            windows.append(decode(found[following]))
            following += 1
        view = dict(status=str(state["status"]), progress=float(state.get("progress") or 0.0),
                    message=str(state.get("message") or ""), error=state.get("error"))
        # one window per view, so a burst still grows the page one at a time; the job's
        # final state comes after its last window
        during = {**view, "status": "running", "error": None} if view["status"] in FINAL else view
        for window in windows:
            yield JobView(id=job_id, windows=[window], **during)  # type: ignore[arg-type]
        key = tuple(view.values())[:3]
        if not windows and key != last:
            yield JobView(id=job_id, **view)  # type: ignore[arg-type]
        last = key
        if view["status"] in FINAL and len(found) < ITEMS_PER_LOOK:
            if windows:  # the final state again, after the last window
                yield JobView(id=job_id, **view)  # type: ignore[arg-type]
            return
        if not windows:
            pause()
