"""The long-document part of the page: a file upload analysed through the job queue.

The file (UTF-8 text) becomes an ``analyze_document`` job (see ``lmlens_dashboard.jobs``
for where it runs). A progress bar follows the job, windows done over windows in the
document; each window is put on the page as its job records it (the window selector
grows), and the chosen window is drawn by the same method sections as a typed text: its
overview comes with the job, and what a panel fetches on demand (one attention head) is
asked of the backend for that window's text. The job id goes into the address, so a
reloaded page follows the same job.

Following a job blocks a pool thread (never the page's loop); what it sees goes onto the
page with ``Page.later``.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from bokeh.layouts import column, row
from bokeh.models import Button, Div, FileInput, Select  # type: ignore[attr-defined]

from lmlens.settings import Settings
from lmlens_dashboard import contract
from lmlens_dashboard.backend import ConnectionLost, ServiceError
from lmlens_dashboard.jobs import JobView

if TYPE_CHECKING:
    from lmlens_dashboard.app import Page

MAX_UPLOAD_BYTES = 4 * 1024 * 1024  # the service's default body limit (API_MAX_BODY_BYTES)
WINDOW_SIZES = (64, 128, 256, 512)
DEFAULT_WINDOW = 512
JOB_ID = re.compile(r"[0-9a-f]{32}")
BAR_WIDTH = 480


def read_upload(value: str, *, limit_chars: int, limit_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """The text of an uploaded file (``FileInput.value``: base64), or a ``ServiceError``
    with the code the service gives the same fault: ``malformed_body`` (not UTF-8),
    ``body_too_large``, ``empty_text``, ``text_too_long``."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError("malformed_body", "the upload did not arrive whole (not base64)", "file") from None
    if len(raw) > limit_bytes:
        raise ServiceError("body_too_large", f"the file is {len(raw):,} bytes; the limit is {limit_bytes:,}", "file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServiceError("malformed_body", f"the file is not UTF-8 text: invalid UTF-8 at byte {exc.start}",
                           "file") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is no part of the text
    if not text.strip():
        raise ServiceError("empty_text", "the file is empty or only whitespace", "file")
    if len(text) > limit_chars:
        raise ServiceError("text_too_long", f"the file has {len(text):,} characters; the limit is {limit_chars:,}",
                           "file")
    return text


def progress_html(done: int, total: int | None, message: str) -> str:
    fraction = done / total if total else 0.0
    shown = f"{done} / {total} windows ({fraction:.0%})" if total else f"{done} windows"
    return (f"<div style='display:flex;align-items:center;gap:8px'>"
            f"<div class='lmlens-bar' style='width:{BAR_WIDTH}px;height:14px;background:#e6e6e6;border-radius:3px'>"
            f"<div style='width:{fraction * 100:.1f}%;height:100%;background:#1f77b4;border-radius:3px'></div></div>"
            f"<span>{shown} &mdash; {html.escape(message)}</span></div>")


class DocumentJobs:
    """One page's upload, its job, and the windows that have arrived."""

    def __init__(self, page: Page) -> None:
        self.page = page
        backend_settings = getattr(getattr(page.backend, "analyzer", None), "settings", None)
        self.limit_chars = (backend_settings or Settings.from_env()).max_document_chars
        self.file = FileInput(accept=".txt,.md,.text,.log,.csv,.json,text/plain", name="upload",
                              css_classes=["lmlens-upload"], title="File (UTF-8 text)")
        self.file_note = Div(text="", name="upload-note", styles={"color": "#666", "font-size": "12px"})
        self.error = page._error_div("error-upload")
        self.window_size = Select(title="Window (tokens)", options=[str(w) for w in WINDOW_SIZES],
                                  value=str(DEFAULT_WINDOW), width=120, name="window-size",
                                  css_classes=["lmlens-window-size"])
        self.start_button = Button(label="Analyse document", button_type="primary", width=160, disabled=True,
                                   name="analyse-document", css_classes=["lmlens-analyse-document"])
        self.cancel_button = Button(label="Cancel", button_type="warning", width=90, visible=False,
                                    name="cancel-document", css_classes=["lmlens-cancel-document"])
        self.bar = Div(text="", name="job-progress", css_classes=["lmlens-job-progress"], visible=False,
                       width=BAR_WIDTH + 320)
        self.windows = Select(title="Window", options=[], width=260, visible=False, name="job-window",
                              css_classes=["lmlens-job-window"])
        self.strip = Div(text="", name="job-windows", css_classes=["lmlens-job-windows"])
        self.file.on_change("value", lambda _a, _o, new: self.uploaded(new))
        self.start_button.on_click(lambda: self.start())
        self.cancel_button.on_click(lambda: self.cancel())
        self.windows.on_change("value", lambda _a, _o, new: self._picked(new))
        self.root = column(
            Div(text="<b>Long document</b> <span style='color:#666;font-size:12px'>a UTF-8 text file, analysed in "
                     "windows through the job queue; each window appears as it finishes</span>"),
            row(self.file, self.window_size, self.start_button, self.cancel_button), self.file_note, self.error,
            self.bar, row(self.windows, self.strip), name="document", css_classes=["lmlens-document"])

        self.document: str | None = None
        self.job_id: str | None = None
        self.model = ""
        self.methods: list[str] = []
        self.results: list[Any] = []  # the job's windows so far, in order
        self.total: int | None = None
        self.status = ""
        self.shown: int | None = None
        self.stamp = 0  # the job being followed; views of an older one are dropped
        self.started = 0.0
        self.first_window_s: float | None = None
        self.quiet = False

    # --- the file ---------------------------------------------------------------------------

    def uploaded(self, value: str) -> None:
        self.error.visible = False
        try:
            self.document = read_upload(value, limit_chars=self.limit_chars)
        except ServiceError as exc:
            self.document = None
            self.start_button.disabled = True
            self.file_note.text = ""
            self._error(exc)
            return
        self.file_note.text = f"{len(self.document):,} characters ready"
        self.start_button.disabled = False

    def _error(self, exc: ServiceError) -> None:
        self.error.text = f"{html.escape(exc.message)} <code>{html.escape(exc.code)}</code>"
        self.error.visible = True

    # --- the job ------------------------------------------------------------------------------

    def start(self) -> None:
        page = self.page
        if self.document is None:
            self._error(ServiceError("empty_text", "choose a text file first", "file"))
            return
        page.clear_errors()
        self.error.visible = False
        if self.job_id is not None and self.cancel_button.visible:
            self.cancel()  # one job per page: the one it no longer follows would hold the queue
        methods = [page.methods.labels[i] for i in sorted(page.methods.active)]
        params = {m: contract.overview_params(page.backend.panels.get(m)) for m in methods}
        params = {m: p for m, p in params.items() if p}
        self._reset(model=page.model.value, methods=methods)
        self.start_button.disabled = True
        self.status = "submitting"
        self._bar()
        page.executor.submit(self._submit, self.stamp, self.document, self.model, list(methods), params,
                             int(self.window_size.value))

    def cancel(self) -> None:
        """Ask the backend to stop the job (it stops before its next window)."""
        if self.job_id is None:
            return
        self.cancel_button.visible = False
        self.page.executor.submit(self._cancel, self.stamp, self.job_id)

    def _cancel(self, stamp: int, job_id: str) -> None:
        try:
            self.page.backend.cancel_document(job_id)
        except ConnectionLost as exc:
            self.page.later(self._lost, stamp, str(exc), job_id)
        except ServiceError as exc:
            self.page.later(self._refused, stamp, exc)

    def resume(self, arguments: Mapping[str, list[bytes]]) -> None:
        """Follow the job named in the address (``?job=...``), from its first window."""
        values = arguments.get("job")
        job_id = values[0].decode("ascii", "replace") if values else ""
        if not JOB_ID.fullmatch(job_id):
            return
        page = self.page
        self._reset(model=page.model.value, methods=[page.methods.labels[i] for i in sorted(page.methods.active)])
        self.job_id = job_id
        self.status = "following"
        self._bar()
        # from the first tick on, not from here: callbacks that a pool thread adds while the
        # session is still being made can be lost (seen in Chromium: 2 of 11 windows arrived)
        page.later(self._follow_on, self.stamp, job_id)

    def _reset(self, *, model: str, methods: list[str]) -> None:
        self.stamp += 1
        self.model, self.methods = model, methods
        self.results, self.total, self.shown, self.job_id = [], None, None, None
        self.started, self.first_window_s = time.perf_counter(), None
        self.quiet = True
        try:
            self.windows.options, self.windows.value, self.windows.visible = [], "", False
        finally:
            self.quiet = False
        self.strip.text = ""

    def _submit(self, stamp: int, text: str, model: str, methods: list[str], params: dict[str, Any],
                window_size: int) -> None:
        """Pool thread: queue the job, then follow it."""
        try:
            job_id = self.page.backend.submit_document(text, model, methods, params, window_size)
        except ConnectionLost as exc:
            self.page.later(self._lost, stamp, str(exc), None)
            return
        except ServiceError as exc:
            self.page.later(self._refused, stamp, exc)
            return
        self.page.later(self._accepted, stamp, job_id)
        self._follow(stamp, job_id, 0)

    def _follow(self, stamp: int, job_id: str, start: int) -> None:
        """Pool thread: every change of the job onto the page, until it ends or a newer job starts."""
        try:
            for view in self.page.backend.follow_document(job_id, start):
                if stamp != self.stamp:
                    return
                self.page.later(self._update, stamp, view)
        except ConnectionLost as exc:
            self.page.later(self._lost, stamp, str(exc), job_id)
        except ServiceError as exc:
            self.page.later(self._refused, stamp, exc)
        except Exception as exc:  # a bug: one line here, the traceback in the log
            import logging

            logging.getLogger("lmlens_dashboard").exception("following job %s failed", job_id)
            self.page.later(self._refused, stamp, ServiceError("internal_error", f"{type(exc).__name__}: {exc}"))

    # --- on the page's thread -------------------------------------------------------------------

    def _accepted(self, stamp: int, job_id: str) -> None:
        if stamp != self.stamp:
            return
        self.job_id = job_id
        self.status = "queued"
        self.cancel_button.visible = True
        self._bar()
        # the address names the job: a reload, or a colleague on the same service, follows it
        self.page.share.text = f'<a href="?{html.escape(self._query())}">link to this job</a>'
        self.page.share.tags = [self._query()]

    def _query(self) -> str:
        return urlencode({"job": self.job_id or "", "model": self.model, "methods": ",".join(self.methods)})

    def _refused(self, stamp: int, exc: ServiceError) -> None:
        if stamp != self.stamp:
            return
        self._error(exc)
        self.status = "failed"
        self._bar()
        self.start_button.disabled = self.document is None

    def _lost(self, stamp: int, message: str, job_id: str | None) -> None:
        if stamp != self.stamp:
            return
        if job_id is None:
            self.page.lost(message, self.start)
        else:  # follow on from the next window
            self.page.lost(message, lambda: self._follow_on(stamp, job_id))
        self.start_button.disabled = self.document is None

    def _follow_on(self, stamp: int, job_id: str) -> None:
        self.page.executor.submit(self._follow, stamp, job_id, len(self.results))

    def _update(self, stamp: int, view: JobView) -> None:
        if stamp != self.stamp:
            return
        self.status = view.message or view.status
        for window in view.windows:
            self._add(window)
        if view.status == "failed":
            error = view.error or {}
            self._error(ServiceError(str(error.get("code") or "job_failed"),
                                     str(error.get("message") or "the job failed"), error.get("field")))
        elif view.status == "cancelled":
            self._error(ServiceError("job_cancelled", "the job was cancelled"))
        if view.status == "done":
            took = time.perf_counter() - self.started
            first = f", the first after {self.first_window_s:.1f} s" if self.first_window_s is not None else ""
            self.status = f"done: {len(self.results)} windows in {took:.1f} s{first}"
        if view.final:
            self.start_button.disabled = self.document is None
        self.cancel_button.visible = not view.final
        self._bar()

    def _add(self, window: Any) -> None:
        if window.window.index != len(self.results):
            return  # already here (a retry that followed on from an earlier window)
        if self.first_window_s is None:
            self.first_window_s = time.perf_counter() - self.started
        self.results.append(window)
        self.total = window.n_windows
        w = window.window
        label = f"window {w.index + 1}: tokens {w.start}\u2013{w.end - 1}"
        self.quiet = True
        try:
            self.windows.options = [*self.windows.options, (str(w.index), label)]
            self.windows.visible = True
            if self.shown is None:
                self.windows.value = str(w.index)
        finally:
            self.quiet = False
        chips = "".join(
            f"<span title='tokens {r.window.start}\u2013{r.window.end - 1}' style='display:inline-block;"
            f"margin:1px;padding:1px 5px;border-radius:3px;background:#cfe3f3;font-size:12px'>{r.window.index + 1}"
            f"</span>" for r in self.results)
        self.strip.text = f"<div style='margin-top:22px'>{chips}</div>"
        if self.shown is None:
            self.show(w.index)

    def _bar(self) -> None:
        done = len(self.results)
        self.bar.text = progress_html(done, self.total, self.status)
        self.bar.tags = [done, self.total or 0]
        self.bar.visible = True

    def _picked(self, value: str) -> None:
        if self.quiet or not value.isdigit() or int(value) >= len(self.results):
            return
        self.show(int(value))

    def show(self, index: int) -> None:
        """Draw window ``index`` in the method sections (in the pool; placed at the next tick)."""
        from lmlens_dashboard.app import Request

        page = self.page
        self.shown = index
        window = self.results[index]
        request = Request(texts=[window.result.text], model=self.model, methods=list(self.methods))
        with page.lock:
            page.generation += 1
            generation = page.generation
        page.status.text = f"drawing window {index + 1}&hellip;"
        page.executor.submit(self._draw, generation, request, window)

    def _draw(self, generation: int, request: Any, window: Any) -> None:
        page = self.page
        overview = window.result
        try:
            plans = {m: page._plan(m, overview) for m in request.methods}
            drawings = {m: page._draw_all(m, request, [overview], plans[m][1]) for m in request.methods}
        except ConnectionLost as exc:
            page.later(self._lost_draw, generation, str(exc), window.window.index)
            return
        except ServiceError as exc:
            page.later(page._failed, generation, exc, 0)
            return
        page.later(self._drawn, generation, request, window, plans, drawings)

    def _lost_draw(self, generation: int, message: str, index: int) -> None:
        if generation == self.page.generation:
            self.page.lost(message, lambda: self.show(index))

    def _drawn(self, generation: int, request: Any, window: Any, plans: dict[str, Any],
               drawings: dict[str, list[Any]]) -> None:
        page = self.page
        if generation != page.generation:
            return
        page.request = request
        page.overviews = [window.result]
        sections = []
        for method in request.methods:
            choices, options = plans[method]
            section = page._section(method, choices, options, 1)
            page._place(section, drawings[method])
            sections.append(section.root)
        page.panels.children = sections
        w = window.window
        page.status.text = (f"window {w.index + 1} of {window.n_windows}: document tokens {w.start}\u2013{w.end - 1} "
                            f"on {html.escape(request.model)}")
