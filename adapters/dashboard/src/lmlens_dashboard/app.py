"""The page: a form, then one section per method, drawn by that method's registered panel.

Model work runs in a thread pool, never on the server's event loop; finished work is put
on the page with ``doc.add_next_tick_callback``. The page knows no method by name: what a
section shows, which selectors it has and what it fetches on demand come from the panel
(see ``lmlens_dashboard.contract``).
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import bokeh.plotting  # noqa: F401  # loaded with the page, not on the first drawing
import msgspec
from bokeh.core.validation import silence
from bokeh.core.validation.warnings import EMPTY_LAYOUT
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (  # type: ignore[attr-defined]  # bokeh's stubs omit lazily exported models
    Button,
    CheckboxGroup,
    ColumnDataSource,
    CustomJS,
    Div,
    Select,
    TextAreaInput,
)

from lmlens.wire import AnalysisResult
from lmlens_dashboard import contract
from lmlens_dashboard.backend import Backend, Catalogue, ConnectionLost, ServiceError
from lmlens_dashboard.upload import DocumentJobs

log = logging.getLogger("lmlens_dashboard")
silence(EMPTY_LAYOUT, True)  # sections and panel holders start empty and fill as results arrive

ERROR_STYLE = {"color": "#b00020", "font-size": "13px"}
MAX_LINK_CHARS = 8000  # browsers and proxies cut longer addresses
DETAIL_CACHE_SIZE = 16  # (text, model, method, params) results kept per session: one head each for attention


@dataclass
class Request:
    texts: list[str]
    model: str
    methods: list[str]

    def query(self) -> str:
        values = {"text": self.texts[0], "model": self.model, "methods": ",".join(self.methods)}
        if len(self.texts) > 1:
            values["compare"] = self.texts[1]
        return urlencode(values)


@dataclass
class Section:
    method: str
    root: Any
    controls: Any
    holders: list[Any]
    error: Div
    row: Any = None
    selects: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, list[Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    stamp: int = 0


def _first(arguments: Mapping[str, list[bytes]], name: str) -> str | None:
    values = arguments.get(name)
    return values[0].decode("utf-8", "replace") if values else None


class Page:
    """One browser session's page and state."""

    def __init__(self, doc: Document, backend: Backend, executor: Executor) -> None:
        self.doc = doc
        self.backend = backend
        self.executor = executor
        self.catalogue: Catalogue | None = None
        self.request: Request | None = None
        self.overviews: list[AnalysisResult] = []
        self.sections: dict[str, Section] = {}
        self.detail_cache: OrderedDict[tuple[str, str, str, str], AnalysisResult] = OrderedDict()
        self.generation = 0
        self.lock = threading.Lock()
        self.retry_action: Callable[[], None] | None = None
        self.quiet = False
        self.clock = threading.local()  # per worker thread: seconds spent waiting for the backend

        self.text = TextAreaInput(title="Text", rows=5, width=720, name="text", css_classes=["lmlens-text"],
                                  placeholder="Type or paste a text")
        self.text_error = self._error_div("error-text")
        self.compare = TextAreaInput(title="Compare with (optional: drawn side by side)", rows=3, width=720,
                                     name="compare", css_classes=["lmlens-compare"])
        self.compare_error = self._error_div("error-compare")
        self.model = Select(title="Model", width=240, name="model", css_classes=["lmlens-model"])
        self.model_error = self._error_div("error-model")
        self.methods = CheckboxGroup(labels=[], active=[], inline=True, name="methods",
                                     css_classes=["lmlens-methods"])
        self.methods_note = Div(text="", name="methods-note", styles={"color": "#666", "font-size": "12px"})
        self.methods_error = self._error_div("error-methods")
        self.analyse = Button(label="Analyse", button_type="primary", width=120, name="analyse",
                              css_classes=["lmlens-analyse"])
        self.status = Div(text="", name="status", css_classes=["lmlens-status"], width=600)
        self.error = self._error_div("error-general")
        self.retry = Button(label="Retry", button_type="warning", width=90, visible=False, name="retry",
                            css_classes=["lmlens-retry"])
        self.share = Div(text="", name="share", css_classes=["lmlens-share"])
        # the address bar follows the last analysis, so copying it shares the same view
        self.share.js_on_change("tags", CustomJS(code="""
            const q = cb_obj.tags.length ? cb_obj.tags[0] : null;
            if (q !== null) { window.history.replaceState(null, '', window.location.pathname + '?' + q); }
        """))
        self.panels = column(name="panels", css_classes=["lmlens-panels"])
        header = Div(text=f"<h2 style='margin:4px 0'>lmlens</h2><span style='color:#666'>analysing "
                          f"{html.escape(backend.where)}</span>", name="header")
        self.analyse.on_click(lambda: self.start_analysis())
        self.retry.on_click(lambda: self._retry())
        form = column(
            header, self.text, self.text_error, self.compare, self.compare_error,
            row(column(self.model, self.model_error), column(Div(text="<b>Methods</b>"), self.methods,
                                                             self.methods_note, self.methods_error)),
            row(self.analyse, self.retry, self.status), self.error, self.share,
        )
        self.documents = DocumentJobs(self)
        doc.title = "lmlens dashboard"
        doc.add_root(column(form, self.documents.root, self.panels, name="root"))

        arguments: Mapping[str, list[bytes]] = {}
        http_request = getattr(doc.session_context, "request", None)  # None outside a server session
        if http_request is not None:
            arguments = http_request.arguments
        self.load_catalogue(arguments)
        self.documents.resume(arguments)

    @staticmethod
    def _error_div(name: str) -> Div:
        return Div(text="", name=name, css_classes=["lmlens-" + name], styles=ERROR_STYLE, visible=False)

    # --- catalogue ------------------------------------------------------------------------

    def load_catalogue(self, arguments: Mapping[str, list[bytes]] | None = None) -> None:
        try:
            catalogue = self.backend.catalogue()
        except ConnectionLost as exc:
            self.lost(str(exc), lambda: self.load_catalogue(arguments))
            return
        except ServiceError as exc:
            self.show_error(exc, 0)
            return
        self.catalogue = catalogue
        self.model.options = list(catalogue.models)
        wanted_model = _first(arguments or {}, "model")
        self.model.value = wanted_model if wanted_model in catalogue.models else catalogue.default_model
        names = list(catalogue.methods)
        self.methods.labels = names
        wanted = (_first(arguments or {}, "methods") or "").split(",")
        active = [names.index(m) for m in wanted if m in names]
        if not active and not (arguments or {}).get("methods"):
            active = [names.index("attention")] if "attention" in names else [0] if names else []
        self.methods.active = active
        if catalogue.undrawable:
            self.methods_note.text = ("on the service, no panel here: " + ", ".join(catalogue.undrawable))
        text = _first(arguments or {}, "text")
        if text:
            self.text.value = text
            self.compare.value = _first(arguments or {}, "compare") or ""
            self.start_analysis()
            missing = [m for m in wanted if m and m not in names]
            if missing:  # a link from a dashboard with more plugins: say what is not drawn here
                self.show_error(ServiceError("unknown_method", f"not installed here: {', '.join(missing)}",
                                             "methods"), 0)

    # --- messages -----------------------------------------------------------------------

    def clear_errors(self) -> None:
        for div in (self.text_error, self.compare_error, self.model_error, self.methods_error, self.error):
            div.text = ""
            div.visible = False
        self.retry.visible = False

    def show_error(self, exc: ServiceError, side: int) -> None:
        where = exc.field or ""
        if where.startswith("text"):
            div = self.compare_error if side == 1 else self.text_error
        elif where.startswith("model"):
            div = self.model_error
        elif where.startswith(("methods", "params")):
            div = self.methods_error
        else:
            div = self.error
        div.text = f"{html.escape(exc.message)} <code>{html.escape(exc.code)}</code>"
        div.visible = True

    def lost(self, message: str, again: Callable[[], None]) -> None:
        self.error.text = html.escape(message) + " &mdash; the connection to the API is lost."
        self.error.visible = True
        self.retry_action = again
        self.retry.visible = True
        self.status.text = ""
        self.analyse.disabled = False

    def _retry(self) -> None:
        again, self.retry_action = self.retry_action, None
        self.clear_errors()
        if self.catalogue is None:
            self.load_catalogue({})
        elif again is not None:
            again()

    def later(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the page's thread (a Bokeh document is changed from its own loop only)."""
        try:
            self.doc.add_next_tick_callback(lambda: fn(*args))
        except Exception:  # the session has gone: nothing to draw on
            log.debug("session closed before a result arrived")

    # --- analysis -----------------------------------------------------------------------

    def start_analysis(self) -> None:
        if self.catalogue is None:
            return
        self.clear_errors()
        texts = [self.text.value]
        if self.compare.value.strip():
            texts.append(self.compare.value)
        methods = [self.methods.labels[i] for i in sorted(self.methods.active)]
        request = Request(texts=texts, model=self.model.value, methods=methods)
        with self.lock:
            self.generation += 1
            generation = self.generation
        self.analyse.disabled = True
        self.status.text = "analysing&hellip;"
        self.executor.submit(self._analyse, generation, request)

    def _progress(self, generation: int, side: int, stage: str, what: str) -> None:
        label = what or "forward pass"
        prefix = f"text {side + 1}: " if self.request is None or len(self.request.texts) > 1 else ""
        message = f"{prefix}{'running' if stage == 'start' else 'finished'} {html.escape(label)}"
        self.later(self._set_status, generation, message)

    def _set_status(self, generation: int, message: str) -> None:
        if generation == self.generation:
            self.status.text = message

    def _ask(self, *args: Any, **kwargs: Any) -> AnalysisResult:
        """``backend.analyze``, its time added to this thread's model clock."""
        start = time.perf_counter()
        try:
            return self.backend.analyze(*args, **kwargs)
        finally:
            self.clock.model = getattr(self.clock, "model", 0.0) + time.perf_counter() - start

    def _timings(self, start: float) -> str:
        """'model 1.23 s, page 0.05 s': the backend's share and the page's own (drawing) share."""
        model = getattr(self.clock, "model", 0.0)
        return f"model {model:.2f} s, page {time.perf_counter() - start - model:.2f} s"

    def _analyse(self, generation: int, request: Request) -> None:
        """Worker thread: the overview of every method, then each panel's detail, then drawings."""
        side = 0
        start = time.perf_counter()
        self.clock.model = 0.0
        try:
            overviews = []
            for side, text in enumerate(request.texts):
                params = {m: contract.overview_params(self.backend.panels.get(m)) for m in request.methods}
                params = {m: p for m, p in params.items() if p}
                overviews.append(self._ask(
                    text, request.model, request.methods, params,
                    progress=lambda stage, what, side=side: self._progress(generation, side, stage, what)))
            drawings = {}
            plans = {}
            for method in request.methods:
                plans[method] = self._plan(method, overviews[0])
                drawings[method] = self._draw_all(method, request, overviews, plans[method][1])
        except ConnectionLost as exc:
            self.later(self._lost_during, generation, str(exc), request)
            return
        except ServiceError as exc:
            self.later(self._failed, generation, exc, side)
            return
        except Exception as exc:  # a bug shows as one line in the page, in full in the log
            log.exception("the analysis failed")
            self.later(self._failed, generation, ServiceError("internal_error", f"{type(exc).__name__}: {exc}"), side)
            return
        self.later(self._show, generation, request, overviews, plans, drawings, self._timings(start))

    def _plan(self, method: str, overview: AnalysisResult) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        """The selectors for ``method`` and the options to draw with (kept from before when still valid;
        options set by a selection in the drawing start empty: they belonged to the previous drawing)."""
        panel = self.backend.panels.get(method)
        found = overview.methods.get(method)
        choices = contract.controls(panel, found) if found is not None else {}
        previous = self.sections[method].options if method in self.sections else {}
        options = {name: previous.get(name) if previous.get(name) in values else values[0]
                   for name, values in choices.items()}
        options.update({name: None for name in contract.selections(panel) if name not in options})
        return choices, options

    def _draw_all(self, method: str, request: Request, overviews: Sequence[AnalysisResult],
                  options: Mapping[str, Any]) -> list[Any]:
        """One drawing per side: a Bokeh layout, or an error message (str)."""
        panel = self.backend.panels.get(method)
        if panel is None:
            return [f"no panel is registered for {method!r}; its result is in the API answer" for _ in overviews]
        drawings: list[Any] = []
        asked = contract.detail_request(panel, method, options)
        refused = self._refused(method, asked[0]) if asked is not None else None
        if refused is not None:
            return [refused for _ in overviews]
        for side, overview in enumerate(overviews):
            result = overview
            if asked is not None:
                found = self._detail(side, asked[0], request, asked[1])
                # another method's answer goes beside the overview's; this method's own replaces it
                result = found if asked[0] == method else msgspec.structs.replace(
                    overview, methods={**overview.methods, **found.methods})
            try:
                drawings.append(panel(result, **options))
            except ServiceError:
                raise
            except Exception as exc:  # a panel's complaint (InvalidParamsError, ...) stays in its section
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                drawings.append(str(message))
        return drawings

    def _refused(self, method: str, other: str) -> str | None:
        """Why a panel of ``method`` may not ask ``other`` (None: it may): same plugin only."""
        if other == method:
            return None
        owners = getattr(getattr(self.backend, "host", None), "method_owner", {})
        if other not in owners or owners.get(other) != owners.get(method):
            return f"the {method} panel asked for {other!r}, which is not a method of its plugin"
        return None

    def _detail(self, side: int, method: str, request: Request, params: dict[str, Any]) -> AnalysisResult:
        key = (request.texts[side], request.model, method, json.dumps(params, sort_keys=True))
        with self.lock:
            hit = self.detail_cache.get(key)
            if hit is not None:
                self.detail_cache.move_to_end(key)
                return hit
        result = self._ask(request.texts[side], request.model, [method], {method: params})
        with self.lock:
            self.detail_cache[key] = result
            while len(self.detail_cache) > DETAIL_CACHE_SIZE:
                self.detail_cache.popitem(last=False)
        return result

    # --- on the page's thread -------------------------------------------------------------

    def _lost_during(self, generation: int, message: str, request: Request) -> None:
        if generation == self.generation:
            self.lost(message, self.start_analysis)

    def _failed(self, generation: int, exc: ServiceError, side: int) -> None:
        if generation != self.generation:
            return
        self.show_error(exc, side)
        self.status.text = "failed"
        self.analyse.disabled = False

    def _show(self, generation: int, request: Request, overviews: list[AnalysisResult],
              plans: dict[str, tuple[dict[str, list[Any]], dict[str, Any]]], drawings: dict[str, list[Any]],
              timings: str = "") -> None:
        if generation != self.generation:
            return
        self.request = request
        self.overviews = overviews
        sections = []
        for method in request.methods:
            choices, options = plans[method]
            section = self._section(method, choices, options, len(overviews))
            self._place(section, drawings[method])
            sections.append(section.root)
        self.panels.children = sections
        n_tokens = ", ".join(str(len(o.tokens)) for o in overviews)
        self.status.text = f"done: {n_tokens} tokens on {html.escape(request.model)} ({timings})"
        self.analyse.disabled = False
        query = request.query()
        if len(query) <= MAX_LINK_CHARS:
            self.share.text = f'<a href="?{html.escape(query)}">link to this analysis</a>'
            self.share.tags = [query]
        else:
            self.share.text = f"(the text is too long for a link: {len(query)} characters over {MAX_LINK_CHARS})"

    def _section(self, method: str, choices: dict[str, list[Any]], options: dict[str, Any], sides: int) -> Section:
        """The method's section, made once per page and reused (models keep their names and ids)."""
        section = self.sections.get(method)
        if section is None:
            title = Div(text=f"<h3 style='margin:8px 0 2px 0'>{html.escape(method)}</h3>")
            section = Section(method=method, root=None, controls=row(), holders=[],
                              error=self._error_div(f"error-section-{method}"))
            section.row = row()
            section.root = column(title, section.controls, section.error, section.row, name=f"section-{method}",
                                  css_classes=[f"lmlens-section-{method}"])
            self.sections[method] = section
        while len(section.holders) < sides:
            side = len(section.holders)
            section.holders.append(column(name=f"panel-{method}-{side}", css_classes=[f"lmlens-panel-{method}-{side}"]))
        section.row.children = section.holders[:sides]
        section.stamp += 1  # a redraw still on its way belongs to the previous analysis
        section.choices, section.options = choices, dict(options)
        self.quiet = True  # setting values from here is not the user choosing
        try:
            for name, values in choices.items():
                select = section.selects.get(name)
                if select is None:
                    select = Select(title=name, width=130, name=f"control-{method}-{name}",
                                    css_classes=[f"lmlens-control-{method}-{name}"])
                    select.on_change("value", lambda _a, _o, new, name=name: self._changed(section, name, new))
                    section.selects[name] = select
                select.options = [str(v) for v in values]
                select.value = str(options[name])
            section.controls.children = [section.selects[name] for name in choices]
        finally:
            self.quiet = False
        return section

    def _place(self, section: Section, drawings: Sequence[Any]) -> None:
        messages = []
        for holder, drawing in zip(section.holders, drawings, strict=False):
            if isinstance(drawing, str):
                messages.append(drawing)
                holder.children = []
            else:
                holder.children = [drawing]
                self._listen(section, drawing)
        section.error.text = html.escape("; ".join(dict.fromkeys(messages)))
        section.error.visible = bool(messages)

    def _listen(self, section: Section, drawing: Any) -> None:
        """A selection in the drawing's named sources sets the panel's option (``panel.selections``)."""
        for name, source_name in contract.selections(self.backend.panels.get(section.method)).items():
            source = drawing.select_one({"type": ColumnDataSource, "name": source_name})
            if source is None or name not in source.data:
                continue

            def picked(_attr: str, _old: Any, new: list[int], source: Any = source, name: str = name) -> None:
                values = source.data[name]
                value: Any = values[new[0]] if new and new[0] < len(values) else None
                self._set_option(section, name, value.item() if hasattr(value, "item") else value)  # numpy -> Python

            source.selected.on_change("indices", picked)

    # --- selectors ----------------------------------------------------------------------

    def _changed(self, section: Section, name: str, new: str) -> None:
        if self.quiet:
            return
        values = section.choices.get(name, [])
        picked = next((v for v in values if str(v) == new), None)
        if picked is not None:
            self._set_option(section, name, picked)

    def _set_option(self, section: Section, name: str, value: Any) -> None:
        """Draw ``section`` again with option ``name`` set to ``value`` (a selector's or a selection's)."""
        if self.request is None or section.options.get(name, object()) == value:
            return
        section.options[name] = value
        self._draw_again(section)

    def _draw_again(self, section: Section) -> None:
        if self.request is None:
            return
        section.stamp += 1
        self.status.text = f"drawing {html.escape(section.method)}&hellip;"
        self.executor.submit(self._redraw, self.generation, section, section.stamp, dict(section.options),
                             self.request, list(self.overviews))

    def _redraw(self, generation: int, section: Section, stamp: int, options: dict[str, Any],
                request: Request, overviews: list[AnalysisResult]) -> None:
        try:
            start = time.perf_counter()
            self.clock.model = 0.0
            drawings = self._draw_all(section.method, request, overviews, options)
        except ConnectionLost as exc:
            self.later(self._lost_during_redraw, generation, str(exc), section)
            return
        except ServiceError as exc:
            self.later(self._failed, generation, exc, 0)
            return
        except Exception as exc:
            log.exception("a redraw failed")
            self.later(self._failed, generation, ServiceError("internal_error", f"{type(exc).__name__}: {exc}"), 0)
            return
        self.later(self._redrawn, generation, section, stamp, drawings, self._timings(start))

    def _lost_during_redraw(self, generation: int, message: str, section: Section) -> None:
        if generation == self.generation:
            self.lost(message, lambda: self._draw_again(section))

    def _redrawn(self, generation: int, section: Section, stamp: int, drawings: list[Any], timings: str = "") -> None:
        if generation != self.generation or stamp != section.stamp:
            return  # a newer choice is on its way
        self._place(section, drawings)
        self.status.text = f"done: {html.escape(section.method)} redrawn ({timings})"


def make_document(backend: Backend, executor: Executor) -> Callable[[Document], None]:
    def build(doc: Document) -> None:
        Page(doc, backend, executor)

    return build
