"""One request -> one shared forward pass -> each method's ``run()``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
import torch

from lmlens import wire
from lmlens.cache import Cache, MethodKey, cache_key
from lmlens.capture import Need
from lmlens.chunking import DocumentResult
from lmlens.errors import (
    EmptyTextError,
    InvalidParamsError,
    LmlensError,
    MemoryLimitError,
    MethodFailedError,
    TextTooLongError,
    UnknownModelError,
)
from lmlens.estimate import DEFAULT_FLOPS_PER_SECOND, ProcessingEstimate, estimate, forward_flops
from lmlens.forward import run_forward
from lmlens.jobs import JobHandle
from lmlens.method import Method, Trace
from lmlens.models import LoadedModel, LoadOptions, ModelStore
from lmlens.plugins import PluginHost
from lmlens.settings import Settings
from lmlens.streaming import DocumentStream, collect_document
from lmlens.wire import AnalysisResult, ModelRef, Result, Token

Progress = Callable[[str, str], None]
"""``progress(stage, what)``: ("start" | "end", method name, or "" for the shared pass), and
("window", "i/n") before each window of a streaming analysis."""


class Analyzer:
    """The Python way in.

    >>> analyzer = Analyzer()                       # default model: smollm2-135m
    >>> result = analyzer.analyze("The cat sat on the mat", methods=["attention"])
    >>> result.methods["attention"].patterns.shape  # [layer, head, q_pos, k_pos]
    """

    def __init__(
        self,
        model: str | LoadedModel | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        settings: Settings | None = None,
        plugins: PluginHost | None = None,
        cache: Cache | None = None,
        store: ModelStore | None = None,
        model_name: str | None = None,
    ) -> None:
        """``model_name`` is the product description's spelling of ``model``."""
        if model_name is not None:
            if model is not None:
                raise InvalidParamsError("give model or model_name, not both", field="model_name")
            model = model_name
        self.settings = settings or Settings.from_env()
        self.plugins = plugins or PluginHost()
        self.cache = cache
        self.store = store or ModelStore(self.settings.model_lru_size)
        self.device = device or self.settings.device
        self.dtype = dtype or self.settings.dtype
        self._model: LoadedModel | None = model if isinstance(model, LoadedModel) else None
        self._flops_per_second: dict[str, float] = {}
        self.model_spec = model if isinstance(model, str) else self.settings.default_model

    # --- models ------------------------------------------------------------------------

    def load_options(self) -> LoadOptions:
        return LoadOptions(
            device=self.device,
            dtype=self.dtype,
            cache_dir=self.settings.cache_path,
            aliases=dict(self.plugins.aliases),
            architectures=list(self.plugins.architectures),
            allow_hub=self.settings.allowed_models is None,
        )

    def load_model(self, spec: str | None = None) -> LoadedModel:
        """The model for ``spec`` (default: this analyzer's model), loaded once and kept."""
        if spec is None and self._model is not None:
            return self._model
        spec = spec or self.model_spec
        allowed = self.settings.allowed_models
        if allowed is not None and spec not in allowed:
            raise UnknownModelError(
                f"model {spec!r} is not allowed here; choose one of: {', '.join(allowed)}", field="model"
            )

        def load(spec: str, options: LoadOptions) -> LoadedModel:
            loaded = self.plugins.pm.hook.load_model(spec=spec, options=options)
            assert loaded is not None, "the kernel's loader always answers"
            return loaded  # type: ignore[no-any-return]

        return self.store.get_or_load(spec, self.load_options(), load)

    @property
    def model(self) -> LoadedModel:
        return self.load_model()

    # --- validation --------------------------------------------------------------------

    def check_text(self, text: object, *, limit: int | None = None) -> str:
        limit = limit or self.settings.max_text_chars
        if not isinstance(text, str):
            raise InvalidParamsError(f"text must be a string, not {type(text).__name__}", field="text")
        if not text.strip():
            raise EmptyTextError("text is empty or only whitespace", field="text")
        if len(text) > limit:
            raise TextTooLongError(f"text has {len(text)} characters; the limit is {limit}", field="text")
        return text

    def resolve_methods(self, methods: object) -> list[Method]:
        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, (list, tuple)) or not all(isinstance(m, str) for m in methods):
            raise InvalidParamsError("methods must be a list of method names", field="methods")
        if not methods:
            raise InvalidParamsError("ask for at least one method", field="methods")
        return [self.plugins.method(name) for name in dict.fromkeys(methods)]

    def resolve_params(
        self, methods: Sequence[Method], params: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        params = dict(params or {})
        names = {m.name for m in methods}
        for key in params:
            if key not in names:
                raise InvalidParamsError(
                    f"params given for {key!r}, which is not among the requested methods",
                    field=f"params.{key}",
                )
        resolved = {}
        for method in methods:
            raw = params.get(method.name, {})
            if isinstance(raw, method.params):
                resolved[method.name] = raw
                continue
            try:
                resolved[method.name] = wire.convert(raw, method.params)
            except msgspec.ValidationError as exc:
                raise InvalidParamsError(
                    f"invalid params for {method.name}: {exc}", field=f"params.{method.name}"
                ) from None
        return resolved

    def tokenize(self, loaded: LoadedModel, text: str) -> tuple[torch.Tensor, list[Token]]:
        encoded = loaded.tokenizer(
            text, return_offsets_mapping=True, add_special_tokens=True, return_tensors="pt"
        )
        input_ids = encoded["input_ids"]  # [1, pos]
        limit = min(self.settings.max_sequence_length, loaded.info.max_positions or 10**9)
        n = int(input_ids.shape[1])
        if n > limit:
            raise TextTooLongError(
                f"text is {n} tokens long; the limit for {loaded.name} is {limit} "
                "(use chunked or streaming analysis for longer documents)",
                field="text",
            )
        ids = input_ids[0].tolist()
        pieces = loaded.tokenizer.convert_ids_to_tokens(ids)
        offsets = encoded["offset_mapping"][0].tolist()
        tokens = [
            Token(id=i, piece=str(p), text=text[s:e], start=int(s), end=int(e))
            for i, p, (s, e) in zip(ids, pieces, offsets, strict=True)
        ]
        return input_ids, tokens

    # --- analysis ----------------------------------------------------------------------

    def analyze(
        self,
        text: str,
        methods: Sequence[str] | str = ("attention",),
        params: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        progress: Progress | None = None,
        use_cache: bool = True,
    ) -> AnalysisResult:
        """Analyse ``text`` with every method in ``methods`` over one forward pass."""
        text = self.check_text(text)
        chosen = self.resolve_methods(list(methods) if not isinstance(methods, str) else methods)
        resolved = self.resolve_params(chosen, params)
        loaded = self.load_model(model)
        input_ids, tokens = self.tokenize(loaded, text)
        self.check_memory(self._estimate(loaded, chosen, resolved, n_tokens=len(tokens)))

        key = None
        if self.cache is not None and use_cache:
            key = self.cache_key(text, loaded, chosen, resolved)
            hit = self.cache.get(key)
            if hit is not None:
                result = wire.from_msgpack(hit, wire.result_type(m.result for m in chosen))
                return msgspec.structs.replace(result, cached=True)

        result = self._run_pass(loaded, text, input_ids, tokens, chosen, resolved, progress)
        if key is not None and self.cache is not None:
            self.cache.set(key, wire.to_msgpack(result))
        return result

    def _run_pass(
        self,
        loaded: LoadedModel,
        text: str,
        input_ids: torch.Tensor,  # [1, pos]
        tokens: list[Token],
        chosen: Sequence[Method],
        resolved: Mapping[str, Any],
        progress: Progress | None,
    ) -> AnalysisResult:
        timings: dict[str, float] = {}
        needs: list[Need] = []
        for method in chosen:
            needs.extend(method.needs(loaded.info, resolved[method.name]))
        notify = progress or (lambda stage, method: None)
        notify("start", "")
        started = time.perf_counter()
        activations = run_forward(loaded, needs, input_ids=input_ids) if needs else {}
        elapsed = time.perf_counter() - started
        timings["forward"] = elapsed * 1000
        if needs:
            self._flops_per_second[loaded.name] = forward_flops(loaded.info, len(tokens)) / max(elapsed, 1e-6)
        notify("end", "")
        trace = Trace(
            model=loaded, text=text, tokens=tokens, input_ids=input_ids, activations=activations, cache=self.cache
        )
        results: dict[str, Result] = {}
        for method in chosen:
            notify("start", method.name)
            started = time.perf_counter()
            results[method.name] = self._run_method(method, trace, resolved[method.name])
            timings[method.name] = (time.perf_counter() - started) * 1000
            notify("end", method.name)
        return AnalysisResult(
            model=ModelRef(name=loaded.name, revision=loaded.revision, family=loaded.info.family),
            text=text,
            tokens=tokens,
            methods=results,
            timings_ms=timings,
        )

    # --- memory ------------------------------------------------------------------------

    def _estimate(
        self,
        loaded: LoadedModel,
        chosen: Sequence[Method],
        resolved: dict[str, Any],
        *,
        n_tokens: int,
        window_size: int | None = None,
        stride: int | None = None,
    ) -> ProcessingEstimate:
        return estimate(
            loaded.info,
            chosen,
            resolved,
            n_tokens=n_tokens,
            window_size=window_size,
            stride=stride,
            limit_gb=self.settings.memory_limit_gb,
            flops_per_second=self._flops_per_second.get(loaded.name, DEFAULT_FLOPS_PER_SECOND),
        )

    @staticmethod
    def check_memory(found: ProcessingEstimate) -> ProcessingEstimate:
        """Refuse, with advice, an analysis whose estimate exceeds MEMORY_LIMIT_GB."""
        if not found.fits:
            mem = found.memory_estimate_gb
            raise MemoryLimitError(
                f"this analysis needs an estimated {mem.total_gb:.3g} GB (attention {mem.attention_gb:.3g}, "
                f"activations {mem.activations_gb:.3g}, gradients {mem.gradients_gb:.3g}, weights "
                f"{mem.weights_gb:.3g}); the limit is {found.limit_gb:.3g} GB (MEMORY_LIMIT_GB). Use streaming "
                "analysis with a smaller window_size, keep fewer attention maps (layers, heads, patterns=false), "
                "or drop methods",
                field="text",
            )
        return found

    def estimate_processing_requirements(
        self,
        text: str,
        methods: Sequence[str] | str = ("attention",),
        params: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        window_size: int | None = None,
        stride: int | None = None,
    ) -> ProcessingEstimate:
        """Memory (weights, activations, attention, gradients, total) and time, before any work."""
        text = self.check_text(text, limit=self.settings.max_document_chars)
        chosen = self.resolve_methods(list(methods) if not isinstance(methods, str) else methods)
        resolved = self.resolve_params(chosen, params)
        loaded = self.load_model(model)
        n_tokens = len(self.tokenize_document(loaded, text)[0])
        return self._estimate(loaded, chosen, resolved, n_tokens=n_tokens, window_size=window_size, stride=stride)

    # --- long documents ----------------------------------------------------------------

    def tokenize_document(self, loaded: LoadedModel, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character spans of a whole document, without special tokens."""
        encoded = loaded.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        return list(encoded["input_ids"]), [(int(s), int(e)) for s, e in encoded["offset_mapping"]]

    def analyze_document_streaming(
        self,
        document: str,
        methods: Sequence[str] | str = ("attention",),
        params: Mapping[str, Any] | None = None,
        *,
        window_size: int = 512,
        stride: int = 256,
        model: str | None = None,
        progress: Progress | None = None,
    ) -> DocumentStream:
        """Iterate for one ``WindowResult`` per window, each as soon as it is computed.

        Everything is validated (and the memory estimate checked) before the first
        window runs. Breaking out of the loop stops the work: nothing runs ahead of the
        consumer. ``progress("window", "i/n")`` is called before each window.
        """
        return DocumentStream(
            self, document, methods, params, window_size=window_size, stride=stride, model=model, progress=progress
        )

    def analyze_efficient(
        self,
        text: str,
        methods: Sequence[str] | str = ("attention",),
        params: Mapping[str, Any] | None = None,
        *,
        use_chunking: bool = True,
        max_length: int = 4096,
        stride: int | None = None,
        keep_windows: bool = False,
        model: str | None = None,
        progress: Progress | None = None,
    ) -> DocumentResult:
        """Analyse a text of any length in windows of at most ``max_length`` tokens.

        Returns the document-level result: per-token fields stitched onto the
        document's tokens (``stitch_rule`` says how), and with ``keep_windows`` every
        window's full result. Without ``use_chunking`` the text must fit in one pass.
        A ``max_length`` above what the model and MAX_SEQUENCE_LENGTH allow is clamped
        to that limit; ``window_size`` and ``notes`` in the result say so.
        """
        stream = DocumentStream(
            self, text, methods, params, window_size=max_length, stride=stride,
            model=model, progress=progress, clamp_window=True,
        )
        if not use_chunking and len(stream) > 1:
            raise TextTooLongError(
                f"text is {len(stream.ids)} tokens long and use_chunking is off; the window is "
                f"{stream.window_size} tokens (max_length {max_length})",
                field="text",
            )
        return collect_document(stream, keep_windows=keep_windows)

    # --- jobs --------------------------------------------------------------------------

    def submit(self, kind: str, params: Mapping[str, Any] | None = None) -> JobHandle:
        """Queue long work (``analyze_batch``, or a plugin's job) on the workers.

        The params are validated here; a malformed payload never reaches a worker.
        """
        job = self.plugins.job(kind)
        try:
            wire.convert(dict(params or {}), job.params)
        except msgspec.ValidationError as exc:
            raise InvalidParamsError(f"invalid params for job {kind!r}: {exc}", field="params") from None
        queue = self.plugins.pm.hook.job_queue()
        if queue is None:
            raise InvalidParamsError(
                "no job queue: install lmlens-worker and set REDIS_URL, then start `lmlens worker`", field="kind"
            )
        return JobHandle(queue, queue.submit(kind, dict(params or {})))

    @staticmethod
    def _encoded_params(name: str, params: Any) -> bytes:
        try:
            return wire.to_msgpack(params)
        except OverflowError:
            raise InvalidParamsError(
                f"invalid params for {name}: an integer does not fit in 64 bits", field=f"params.{name}"
            ) from None

    # --- pictures ----------------------------------------------------------------------

    def visualize(
        self,
        result: AnalysisResult | Result,
        method: str | None = None,
        save_path: str | None = None,
        **options: Any,
    ) -> Any:
        """Draw ``result.methods[method]`` with the panel its plugin registered.

        ``result`` is the whole analysis, or one method's result (``result["attention"]``;
        ``method`` then defaults to its kind). Returns the Bokeh layout; with ``save_path``
        the panel also writes it (``.html``: a standalone page with BokehJS inlined, so it
        opens offline; ``.png``: static image).
        """
        if isinstance(result, Result):
            kind = type(result).__struct_config__.tag
            method = method or (kind if isinstance(kind, str) else None)
            owner = wire.owner_of(result)
            if owner is None:
                owner = wire.detached_analysis(result, method or "result")
            result = owner
        if not isinstance(result, AnalysisResult):
            raise InvalidParamsError(
                f"visualize takes an analysis result or one method's result, not {type(result).__name__}",
                field="result",
            )
        if method is None:
            raise InvalidParamsError("name the method to draw", field="method")
        if method not in result.methods:
            raise InvalidParamsError(
                f"the result has no {method!r} analysis; it has: {', '.join(result.methods)}",
                field="method",
            )
        panel = self.plugins.panels.get(method)
        if panel is None:
            raise InvalidParamsError(f"no installed plugin draws {method!r} results", field="method")
        return panel(result, save_path=save_path, **options)

    def visualize_attention(
        self, result: AnalysisResult | Result, layer: int = 0, head: int = 0, save_path: str | None = None
    ) -> Any:
        """The attention pattern of one head as an interactive heatmap.

        ``result`` is the analysis or its attention result (``results["attention"]``).
        """
        return self.visualize(result, "attention", save_path=save_path, layer=layer, head=head)

    def _run_method(self, method: Method, trace: Trace, params: Any) -> Result:
        try:
            result = method.run(trace, params)
        except LmlensError:
            raise
        except Exception as exc:
            raise MethodFailedError(
                f"method {method.name!r} failed: {type(exc).__name__}: {exc}", field="methods"
            ) from exc
        if not isinstance(result, method.result):
            raise MethodFailedError(
                f"method {method.name!r} returned {type(result).__name__}, "
                f"not {method.result.__name__}"
            )
        return result

    def cache_key(
        self, text: str, loaded: LoadedModel, methods: Iterable[Method], params: Mapping[str, Any]
    ) -> str:
        """The cache key of an analysis: text, model and revision, plugin versions, params."""
        keys = []
        for method in methods:
            owner = self.plugins.method_owner.get(method.name, "")
            keys.append(
                MethodKey(
                    method=method.name,
                    plugin=owner,
                    plugin_version=self.plugins.plugin_version(owner),
                    method_version=method.version,
                    params=msgspec.Raw(self._encoded_params(method.name, params[method.name])),
                )
            )
        return cache_key(text, loaded.name, loaded.revision, keys)
