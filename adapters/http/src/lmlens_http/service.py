"""What every way in shares: validation, the allowlist, the cache lookup and the pool.

Routes and the WebSocket call ``prepare`` (cheap checks on the event loop) and then
``analyze``: a cache hit is answered from a thread of its own, so it never waits
behind model work; a miss goes to the bounded pool, where identical requests share
one computation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import msgspec

import lmlens_http
from lmlens import Analyzer, wire
from lmlens.errors import LmlensError
from lmlens.method import Method
from lmlens.models import LoadedModel
from lmlens.plugins import PluginHost
from lmlens.wire import AnalysisResult
from lmlens_http import codec
from lmlens_http.caching import EncodedResponses, build_cache
from lmlens_http.config import ServiceConfig, kernel_settings
from lmlens_http.errors import (
    BatchTooLargeError,
    InvalidRequestError,
    ModelNotAllowedError,
    RequestTimeoutError,
    from_validation,
)
from lmlens_http.pool import AnalysisPool, Listener, Notify
from lmlens_http.ratelimit import build_limiter
from lmlens_http.schemas import HTTP_DEFAULTS, RequestTypes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A validated request: the allowed model, the methods, their params Structs."""

    text: str
    model: str
    methods: list[Method]
    params: dict[str, Any]
    fingerprint: str  # identical requests, identical fingerprint (single flight)


class Service:
    def __init__(self, config: ServiceConfig, host: PluginHost | None = None) -> None:
        self.config = config
        self.version = lmlens_http.__version__
        self.route_errors: dict[str, str] = {}  # plugin -> why its routes were refused
        self.host = host or PluginHost()
        self.settings = kernel_settings(config)
        self.cache = build_cache(config)
        self.default_model = self.settings.default_model
        allowed = list(self.host.aliases) if config.models is None else list(config.models)
        self.allowed = list(dict.fromkeys([*allowed, self.default_model]))
        # the kernel refuses anything else too (and never fetches from the hub then)
        self.settings = msgspec.structs.replace(self.settings, allowed_models=self.allowed)
        self.analyzer = Analyzer(settings=self.settings, plugins=self.host, cache=self.cache.cache)
        self.pool = AnalysisPool(config.pool_workers, config.queue_size, config.request_timeout_s)
        self.responses = EncodedResponses(config.response_memo_mb * 2**20, config.cache_ttl)
        self.limiter = build_limiter(config.rate_limit, config.rate_window_s, self.cache.link)
        # Which spec resolved to which model, without keeping evicted models alive.
        self._loaded: weakref.WeakValueDictionary[str, LoadedModel] = weakref.WeakValueDictionary()
        self.api_keys_enabled = bool(config.api_keys or config.api_key_file)
        self.warming: threading.Thread | None = None  # the startup load of the default model (warm)
        self.types = RequestTypes(
            self.host.methods, wire.result_type(m.result for m in self.host.methods.values())
        )

    # --- validation (on the event loop: no I/O, no model work) ---------------------------

    def prepare(
        self,
        text: str,
        model: str | None,
        methods: Sequence[str],
        params: Any,
        *,
        text_field: str = "text",
        model_field: str = "model",
    ) -> Prepared:
        spec = model or self.default_model
        if spec not in self.allowed:
            message = f"model {spec!r} is not served here; choose one of: {', '.join(self.allowed)}"
            unknown = [m for m in methods if isinstance(m, str) and m not in self.host.methods]
            if unknown:  # say everything the request got wrong at once (the seed's body names both)
                message += (f". Also, methods {', '.join(map(repr, unknown))} are not installed; installed "
                            f"methods: {', '.join(sorted(self.host.methods))}")
            raise ModelNotAllowedError(message, field=model_field)
        try:
            text = self.analyzer.check_text(text)
        except LmlensError as exc:
            exc.field = text_field
            raise
        chosen = self.analyzer.resolve_methods(list(methods))
        given = dict(params) if isinstance(params, dict) else self.types.params_dict(params)
        for name, overrides in HTTP_DEFAULTS.items():  # summaries, not full maps, unless asked
            if name in methods and name not in given:
                given[name] = dict(overrides)
        resolved = self.analyzer.resolve_params(chosen, given)
        encoded_params = []
        for method in chosen:
            try:
                encoded_params.append([method.name, wire.to_msgpack(resolved[method.name])])
            except OverflowError:
                # JSON allows any integer; the cache key (MessagePack) holds 64 bits
                raise InvalidRequestError(
                    "a number is out of the 64-bit range", field=f"params.{method.name}"
                ) from None
        fingerprint = hashlib.sha256(wire.to_msgpack([spec, text, encoded_params])).hexdigest()
        return Prepared(text, spec, chosen, resolved, fingerprint)

    def prepare_batch(self, request: Any) -> list[Prepared]:
        if len(request.texts) > self.config.max_batch_size:
            raise BatchTooLargeError(
                f"{len(request.texts)} texts; the limit is {self.config.max_batch_size}",
                field="texts",
            )
        if request.batch_size is not None and request.batch_size > self.config.max_batch_size:
            raise InvalidRequestError(
                f"batch_size is at most {self.config.max_batch_size}", field="batch_size"
            )
        return [
            self.prepare(text, request.model, request.methods, request.params, text_field=f"texts[{i}]")
            for i, text in enumerate(request.texts)
        ]

    async def check_job(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """Every check ``/analyze`` makes, for a job's params, before anything is queued.

        Returns the params to queue (an ``analyze_batch`` gets the model and the HTTP
        defaults filled in). Field paths point into the job request (``params.texts[3]``).
        All the kernel calls are here, so moving to the kernel's prepared requests is one edit.
        """
        job = self.host.job(kind)
        if kind == "analyze_batch":
            texts = params.get("texts")
            if isinstance(texts, list) and len(texts) > self.config.max_job_texts:
                raise BatchTooLargeError(
                    f"{len(texts)} texts in one job; the limit is {self.config.max_job_texts} (API_MAX_JOB_TEXTS): "
                    "split the batch into several jobs",
                    field="params.texts",
                )
        if kind == "analyze_batch" and isinstance(params.get("params"), dict):
            # as on /analyze, a method's params given as null are not given
            params = {**params, "params": {k: v for k, v in params["params"].items() if v is not None}}
        try:
            typed = wire.convert(params, job.params)
        except msgspec.ValidationError as exc:
            raise from_validation(exc, prefix="params") from None
        if kind == "analyze_document":
            return self._check_document_job(typed)
        if kind != "analyze_batch":
            model = params.get("model")
            if isinstance(model, str) and model not in self.allowed:
                raise ModelNotAllowedError(
                    f"model {model!r} is not served here; choose one of: {', '.join(self.allowed)}",
                    field="params.model",
                )
            return params
        if "methods" in params and not typed.methods:
            raise InvalidRequestError("ask for at least one method", field="params.methods")
        methods = list(typed.methods) or self.analyzer.default_methods()
        method_params = {name: dict(value) for name, value in typed.params.items()}
        for name, overrides in HTTP_DEFAULTS.items():
            if name in methods:
                method_params[name] = {**overrides, **method_params.get(name, {})}
        if not typed.texts:
            raise InvalidRequestError("give at least one text", field="params.texts")
        at = 0
        try:
            first = self.prepare(typed.texts[0], typed.model, methods, method_params, text_field="texts[0]")
            for at in range(1, len(typed.texts)):
                self.analyzer.check_text(typed.texts[at])  # the same model, methods and params
        except LmlensError as exc:
            field = f"texts[{at}]" if exc.field == "text" else exc.field
            exc.field = f"params.{field}" if field else "params"
            raise
        await self.check_plan(first, field_prefix="params.", texts=typed.texts)
        return {"texts": list(typed.texts), "methods": [m.name for m in first.methods],
                "params": msgspec.to_builtins(first.params), "model": first.model}

    def _check_document_job(self, typed: Any) -> dict[str, Any]:
        """An ``analyze_document`` job: the document (up to MAX_DOCUMENT_CHARS), the model
        allowlist, the methods and their params, as ``/analyze`` checks them; the checks
        that need the model (window size, memory) run in the job, before its first window."""
        spec = typed.model or self.default_model
        if spec not in self.allowed:
            raise ModelNotAllowedError(
                f"model {spec!r} is not served here; choose one of: {', '.join(self.allowed)}", field="params.model"
            )
        try:
            self.analyzer.check_text(typed.text, limit=self.analyzer.settings.max_document_chars)
            methods = list(typed.methods) or self.analyzer.default_methods()
            given = {name: dict(value) for name, value in typed.params.items()}
            for name, overrides in HTTP_DEFAULTS.items():  # summaries, not full maps, unless asked
                if name in methods and name not in given:
                    given[name] = dict(overrides)
            resolved = self.analyzer.resolve_params(self.analyzer.resolve_methods(methods), given)
        except LmlensError as exc:
            exc.field = f"params.{exc.field}" if exc.field else "params"
            raise
        return {**msgspec.to_builtins(typed), "model": spec, "methods": methods,
                "params": msgspec.to_builtins(resolved)}

    async def check_plan(self, prep: Prepared, *, field_prefix: str = "", texts: Sequence[str] = ()) -> None:
        """The checks that need the model, in the pool, before work is queued elsewhere:
        the kernel's ``Analyzer.prepare`` (every method's plan on the loaded model: layer and
        head ranges, artifacts, the memory estimate) and the token count of every text in
        ``texts`` (errors name ``texts[i]``)."""

        def plan(notify: Notify) -> None:
            loaded = self.load(prep.model)
            try:  # the kernel's own plan step: every method's plan, artifacts, tokens, memory
                self.analyzer.prepare(prep.text, [m.name for m in prep.methods], prep.params, model=prep.model)
            except LmlensError as exc:
                if texts and exc.field == "text":
                    exc.field = "texts[0]"
                raise
            for i, text in enumerate(texts[1:], 1):
                try:
                    self.analyzer.tokenize(loaded, text)
                except LmlensError as exc:
                    exc.field = f"texts[{i}]"
                    raise

        try:
            await self.pool.run(None, plan, measured=False)
        except LmlensError as exc:
            if field_prefix and exc.field and not isinstance(exc, RequestTimeoutError):
                exc.field = field_prefix + exc.field
            raise

    # --- cache (in a thread: Redis is I/O) -----------------------------------------------

    def cache_key(self, prep: Prepared) -> str | None:
        """The analyzer's own key for ``prep`` (so a hit here is a hit there), once the
        model has been loaded here; before that the pool loads it and the analyzer asks."""
        loaded = self._loaded.get(prep.model)
        if loaded is None:
            return None
        return self.analyzer.cache_key(prep.text, loaded, prep.methods, prep.params)

    def cached(self, prep: Prepared, key: str | None = None) -> AnalysisResult | None:
        key = key or self.cache_key(prep)
        hit = self.cache.cache.get(key) if key is not None else None
        if hit is None:
            return None
        result = wire.from_msgpack(hit, wire.result_type(m.result for m in prep.methods))
        return msgspec.structs.replace(result, cached=True)

    def _cached_encoded(self, prep: Prepared, key: str | None, msgpack: bool) -> bytes | None:
        result = self.cached(prep, key)
        if result is None or key is None:
            return None
        body = codec.encode(result, msgpack)
        self.responses.put((key, msgpack), body)
        return body

    # --- model work (in the pool) ----------------------------------------------------------

    def load(self, spec: str) -> LoadedModel:
        loaded = self.analyzer.load_model(spec)
        self._loaded[spec] = loaded
        return loaded

    def _load_for_pool(self, spec: str, notify: Notify) -> LoadedModel:
        return self.load(spec)

    def compute(self, prep: Prepared, notify: Notify) -> AnalysisResult:
        self.load(prep.model)
        return self.analyzer.analyze(
            prep.text,
            [m.name for m in prep.methods],
            prep.params,
            model=prep.model,
            progress=notify,
        )

    def _compute_many(self, preps: list[Prepared], notify: Notify) -> list[AnalysisResult]:
        return [self.compute(prep, notify) for prep in preps]

    async def analyze(self, prep: Prepared, listener: Listener | None = None) -> AnalysisResult:
        hit = await anyio.to_thread.run_sync(self.cached, prep)
        if hit is not None:
            return hit
        return await self.pool.run(
            prep.fingerprint, lambda notify: self.compute(prep, notify), listener=listener
        )

    async def analyze_encoded(self, prep: Prepared, msgpack: bool) -> bytes:
        key = self.cache_key(prep)
        if key is not None:
            body = self.responses.get((key, msgpack))  # hot hit: no thread, no I/O
            if body is not None:
                return body
        body = await anyio.to_thread.run_sync(self._cached_encoded, prep, key, msgpack)
        if body is not None:
            return body
        result = await self.pool.run(prep.fingerprint, lambda notify: self.compute(prep, notify))
        return await anyio.to_thread.run_sync(codec.encode, result, msgpack)  # big arrays: off the loop

    async def analyze_batch(self, preps: list[Prepared], batch_size: int | None) -> list[AnalysisResult]:
        """Chunks of ``batch_size`` texts, each one pool job, at most ``workers`` at a time."""
        batch_size = batch_size or min(8, self.config.max_batch_size)
        chunks = [preps[i : i + batch_size] for i in range(0, len(preps), batch_size)]
        gate = asyncio.Semaphore(self.pool.workers)

        async def run(chunk: list[Prepared]) -> list[AnalysisResult]:
            async with gate:
                key = hashlib.sha256("".join(p.fingerprint for p in chunk).encode()).hexdigest()
                return await self.pool.run(key, functools.partial(self._compute_many, chunk))

        tasks = [asyncio.ensure_future(run(chunk)) for chunk in chunks]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one chunk failed: the others' answers are not wanted
                task.cancel()
            raise
        return [r for chunk_results in results for r in chunk_results]

    def warm(self) -> threading.Thread | None:
        """Start loading the default model in a background thread (``warm_default``) when
        ``preload`` is empty (preloaded models are the operator's choice: a warm load would
        delay them and could evict one from the model store). The server listens at once,
        and the first request finds the model loaded, or waits for this load (the store
        loads a spec once) instead of starting its own. A failed load is logged; the next
        request that needs the model loads it again and answers with the error's code."""
        if not self.config.warm_default or self.config.preload:
            return None
        thread = threading.Thread(target=self._warm, name="lmlens-warm", daemon=True)
        thread.start()
        self.warming = thread
        return thread

    def _warm(self) -> None:
        try:
            self.load(self.default_model)
        except Exception as exc:
            log.warning("loading the default model %r at startup failed: %s", self.default_model, exc)

    async def preload(self) -> None:
        for spec in self.config.preload:
            if spec not in self.allowed:
                raise ModelNotAllowedError(f"preload model {spec!r} is not in the allowlist", field="preload")
            await self.pool.run(None, functools.partial(self._load_for_pool, spec), timeout_s=600, measured=False)

    def loaded_models(self) -> list[str]:
        return sorted(self._loaded.keys())

    def close(self) -> None:
        self.pool.shutdown()
        if self.cache.link is not None:
            self.cache.link.close()
