"""Where analyses come from: an in-process ``Analyzer``, or the lmlens HTTP service.

Both answer with the kernel's wire types (``AnalysisResult`` and the plugins' Result
classes), so the page draws the same either way. Errors come back as ``ServiceError``
(the service's ``{code, message, field}``) or ``ConnectionLost`` (the API is unreachable).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import msgspec

from lmlens import wire
from lmlens.plugins import PluginHost
from lmlens.wire import AnalysisResult
from lmlens_dashboard import jobs
from lmlens_dashboard.jobs import DOCUMENT_JOB, ITEMS_PER_LOOK, POLL_S, JobView

log = logging.getLogger("lmlens_dashboard")

Progress = Callable[[str, str], None]


class ServiceError(Exception):
    """An error the user can act on, with the service's stable code and the field it concerns."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class ConnectionLost(Exception):
    """The HTTP service did not answer (refused, reset, timed out)."""


@dataclass
class Catalogue:
    """What the page offers: models, the default one, and the methods it can draw."""

    models: list[str]
    default_model: str
    methods: dict[str, str]  # name -> description
    undrawable: list[str] = field(default_factory=list)  # methods the service has but this side cannot decode


def offered(method: Any) -> bool:
    """A method gets a checkbox only if it runs on its default params: ``sae_feature`` needs a
    ``feature`` and is reached from the SAE strip's card instead."""
    return not any(f.required for f in msgspec.structs.fields(method.params))


class Backend(Protocol):
    panels: Mapping[str, Callable[..., Any]]
    where: str

    def catalogue(self) -> Catalogue: ...

    def analyze(
        self,
        text: str,
        model: str,
        methods: Sequence[str],
        params: Mapping[str, Any],
        progress: Progress | None = None,
    ) -> AnalysisResult: ...

    def submit_document(
        self, text: str, model: str, methods: Sequence[str], params: Mapping[str, Any], window_size: int
    ) -> str: ...

    def follow_document(self, job_id: str, start: int = 0) -> Iterator[JobView]: ...

    def cancel_document(self, job_id: str) -> bool: ...


def _all_windows(host: PluginHost) -> type[msgspec.Struct]:
    """A window result typed for every installed method (so any job's windows decode)."""
    return jobs.window_type(host, sorted(host.methods))


def _internal(exc: Exception) -> ServiceError:
    log.exception("analysis failed")
    return ServiceError("internal_error", f"{type(exc).__name__}: {exc}")


class InProcessBackend:
    """One ``Analyzer`` shared by every browser session (the kernel serialises model work)."""

    def __init__(self, analyzer: Any, models: Sequence[str] | None = None) -> None:
        self.analyzer = analyzer
        host: PluginHost = analyzer.plugins
        self.host = host
        self.panels = host.panels
        self._models = list(models) if models else None
        self.where = "in process"
        self._queue: Any = None

    def warm(self) -> None:
        """Load the default model now, so the first Analyse does not wait for it."""
        self.analyzer.load_model()

    def catalogue(self) -> Catalogue:
        default = self.analyzer.model_spec
        models = self._models or list(self.analyzer.settings.allowed_models or sorted(self.host.aliases))
        if default not in models:
            models.insert(0, default)
        methods = {name: m.description for name, m in sorted(self.host.methods.items()) if offered(m)}
        return Catalogue(models=models, default_model=default, methods=methods)

    def analyze(
        self,
        text: str,
        model: str,
        methods: Sequence[str],
        params: Mapping[str, Any],
        progress: Progress | None = None,
    ) -> AnalysisResult:
        from lmlens.errors import LmlensError

        try:
            result: AnalysisResult = self.analyzer.analyze(
                text, list(methods), dict(params), model=model, progress=progress
            )
        except LmlensError as exc:
            raise ServiceError(exc.code, exc.message, exc.field) from None
        except Exception as exc:  # shown as one line in the page, logged in full here
            raise _internal(exc) from None
        return result

    # --- long documents -------------------------------------------------------------------

    def job_queue(self) -> Any:
        """The user's Dramatiq/Redis queue when there is one (lmlens-worker, ``REDIS_URL``),
        else a queue in this process (``jobs.LocalJobs``)."""
        if self._queue is None:
            self._queue = self.host.pm.hook.job_queue() or jobs.LocalJobs(self.analyzer)
            log.info("long documents go to %s", type(self._queue).__name__)
        return self._queue

    def submit_document(
        self, text: str, model: str, methods: Sequence[str], params: Mapping[str, Any], window_size: int
    ) -> str:
        from lmlens.errors import LmlensError

        try:  # the cheap checks here, so a bad document is refused before it is queued
            self.analyzer.check_text(text, limit=self.analyzer.settings.max_document_chars)
            self.analyzer.resolve_params(self.analyzer.resolve_methods(list(methods)), dict(params))
            job_id: str = self.job_queue().submit(DOCUMENT_JOB, {
                "text": text, "model": model, "methods": list(methods), "params": dict(params),
                "window_size": window_size})
        except LmlensError as exc:
            raise ServiceError(exc.code, exc.message, exc.field) from None
        return job_id

    def follow_document(self, job_id: str, start: int = 0) -> Iterator[JobView]:
        from lmlens.errors import LmlensError

        queue = self.job_queue()
        typed = _all_windows(self.host)
        local = isinstance(queue, jobs.LocalJobs)
        seen = [0.0]

        def status() -> dict[str, Any]:
            if local:
                seen[0] = queue.updated(job_id)
            found: dict[str, Any] = queue.status(job_id)
            return found

        def pause() -> None:
            queue.wait(job_id, seen[0], POLL_S * 8) if local else time.sleep(POLL_S)

        try:
            yield from jobs.follow(job_id, status, lambda at: queue.items(job_id, at, ITEMS_PER_LOOK),
                                   lambda raw: wire.from_msgpack(raw, typed), pause, start)
        except LmlensError as exc:
            raise ServiceError(exc.code, exc.message, exc.field) from None

    def cancel_document(self, job_id: str) -> bool:
        from lmlens.errors import LmlensError

        try:
            return bool(self.job_queue().cancel(job_id))
        except LmlensError as exc:
            raise ServiceError(exc.code, exc.message, exc.field) from None


class ApiBackend:
    """A client of the lmlens HTTP service: the dashboard holds no model.

    Results travel as MessagePack and decode into this side's plugin Result classes, so
    only methods whose plugin is installed here too are offered (the others are listed).
    """

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 120.0,
                 host: PluginHost | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}", "X-API-Key": api_key} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.host = host or PluginHost()
        self.panels = self.host.panels
        self.where = f"API {self.url}"
        self.headers = headers
        self.timeout = timeout
        self.use_websocket = True  # progress events come over WS /ws; POST /analyze when it is refused

    def close(self) -> None:
        self.client.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionLost(f"no answer from the lmlens API at {self.url} ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: httpx.Response) -> ServiceError:
        try:
            msgpack = "msgpack" in response.headers.get("content-type", "")
            body = (msgspec.msgpack if msgpack else msgspec.json).decode(response.content)
            return ServiceError(str(body["code"]), str(body["message"]), body.get("field"))
        except Exception:
            return ServiceError(f"http_{response.status_code}", response.text[:300] or response.reason_phrase)

    def catalogue(self) -> Catalogue:
        rows = msgspec.json.decode(self._request("GET", "/models").content)
        plugins = msgspec.json.decode(self._request("GET", "/plugins").content)
        models = [row["name"] for row in rows]
        default = next((row["name"] for row in rows if row.get("default")), models[0] if models else "")
        remote = [m for info in plugins if not info.get("error") for m in info.get("methods", [])]
        known = {m: self.host.methods[m] for m in sorted(remote) if m in self.host.methods}
        methods = {m: method.description for m, method in known.items() if offered(method)}
        undrawable = sorted(m for m in remote if m not in self.host.methods)
        return Catalogue(models=models, default_model=default, methods=methods, undrawable=undrawable)

    def analyze(
        self,
        text: str,
        model: str,
        methods: Sequence[str],
        params: Mapping[str, Any],
        progress: Progress | None = None,
    ) -> AnalysisResult:
        classes = []
        for name in methods:
            known = self.host.methods.get(name)
            if known is None:
                raise ServiceError("unknown_method", f"method {name!r} has no plugin installed beside the dashboard",
                                   "methods")
            classes.append(known.result)
        body = {"text": text, "model": model, "methods": list(methods), "params": dict(params)}
        typed = wire.result_type(classes)
        if progress is not None and self.use_websocket:
            done = self._analyze_ws(body, typed, progress)
            if done is not None:
                return done
        response = self._request("POST", "/analyze", content=msgspec.json.encode(body),
                                 headers={"content-type": "application/json", "accept": "application/msgpack"})
        try:
            return wire.from_msgpack(response.content, typed)
        except msgspec.DecodeError as exc:
            raise ServiceError("bad_response", f"the API answered what this dashboard cannot read: {exc}") from None

    def _analyze_ws(
        self, body: dict[str, Any], typed: type[AnalysisResult], progress: Progress
    ) -> AnalysisResult | None:
        """One analysis over ``WS /ws`` (MessagePack frames), passing its progress events on.

        ``None`` when the service refuses the socket (an older service, a proxy): the
        caller then asks ``POST /analyze``, without progress.
        """
        from websockets.exceptions import InvalidHandshake, WebSocketException
        from websockets.sync.client import connect

        url = "ws" + self.url[len("http"):] + "/ws"
        complete = msgspec.defstruct("Complete", [("type", str), ("data", typed)], kw_only=True)
        try:
            with connect(url, additional_headers=self.headers, open_timeout=10, max_size=None,
                         proxy=None) as socket:
                socket.send(msgspec.msgpack.encode({"type": "analyze", "id": "dashboard", **body}))
                while True:
                    raw = socket.recv(timeout=self.timeout)
                    frame = msgspec.msgpack.decode(raw if isinstance(raw, bytes) else raw.encode(), type=_Frame)
                    if frame.type == "progress" and frame.data.get("stage") in ("start", "end"):
                        progress(str(frame.data["stage"]), str(frame.data.get("method") or ""))
                    elif frame.type == "error":
                        raise ServiceError(str(frame.data["code"]), str(frame.data["message"]), frame.data.get("field"))
                    elif frame.type == "complete":
                        data = raw if isinstance(raw, bytes) else raw.encode()
                        return wire.from_msgpack(data, complete).data  # type: ignore[attr-defined,no-any-return]
        except InvalidHandshake:
            log.info("the service refused WS /ws; analysing over POST /analyze")
            self.use_websocket = False
            return None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ConnectionLost(f"no answer from the lmlens API at {self.url} ({type(exc).__name__})") from None

    # --- long documents -------------------------------------------------------------------

    def submit_document(
        self, text: str, model: str, methods: Sequence[str], params: Mapping[str, Any], window_size: int
    ) -> str:
        for name in methods:
            if name not in self.host.methods:
                raise ServiceError("unknown_method", f"method {name!r} has no plugin installed beside the dashboard",
                                   "methods")
        body = {"kind": DOCUMENT_JOB, "params": {"text": text, "model": model, "methods": list(methods),
                                                 "params": dict(params), "window_size": window_size}}
        response = self._request("POST", "/jobs", content=msgspec.json.encode(body),
                                 headers={"content-type": "application/json"})
        return str(msgspec.json.decode(response.content)["id"])

    def follow_document(self, job_id: str, start: int = 0) -> Iterator[JobView]:
        answer = msgspec.defstruct("ItemsAnswer", [("items", list[msgspec.defstruct(  # type: ignore[misc]
            "Item", [("index", int), ("value", _all_windows(self.host))])])])

        def status() -> dict[str, Any]:
            found: dict[str, Any] = msgspec.json.decode(self._request("GET", f"/jobs/{job_id}").content)
            return found

        def items(at: int) -> dict[int, Any]:
            response = self._request("GET", f"/jobs/{job_id}/items/{at}", headers={"accept": "application/msgpack"})
            try:
                decoded = wire.from_msgpack(response.content, answer)
            except msgspec.DecodeError as exc:
                raise ServiceError("bad_response", f"the API answered what this dashboard cannot read: {exc}") from None
            return {item.index: item.value for item in decoded.items}  # type: ignore[attr-defined]

        yield from jobs.follow(job_id, status, items, lambda value: value, lambda: time.sleep(POLL_S), start)

    def cancel_document(self, job_id: str) -> bool:
        return bool(msgspec.json.decode(self._request("DELETE", f"/jobs/{job_id}").content)["cancelled"])


class _Frame(msgspec.Struct):
    type: str = ""
    data: dict[str, Any] = {}
