"""One request -> one shared forward pass -> each method's ``run()``."""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import torch

from lmlens import wire
from lmlens.artifacts import (
    Artifact,
    ArtifactInfo,
    ArtifactStore,
    ArtifactStoreProtocol,
    check_model,
    model_fingerprint,
)
from lmlens.batching import DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, run_many
from lmlens.cache import Cache, MethodKey, cache_key
from lmlens.chunking import DocumentResult
from lmlens.errors import (
    EmptyTextError,
    InvalidParamsError,
    LmlensError,
    MemoryLimitError,
    TextTooLongError,
    UnknownMethodError,
    UnknownModelError,
)
from lmlens.estimate import DEFAULT_FLOPS_PER_SECOND, ProcessingEstimate, estimate, forward_flops
from lmlens.jobs import JobHandle, QueueUnavailableError
from lmlens.method import Method
from lmlens.models import LoadedModel, LoadOptions, ModelStore
from lmlens.plugins import PluginHost
from lmlens.request import Progress, Request, run_request
from lmlens.settings import Settings
from lmlens.streaming import DocumentStream, collect_document
from lmlens.wire import AnalysisResult, Result, Token

__all__ = ["Analyzer", "Progress"]

def _named_artifacts(method: Method, params: Any, loaded: LoadedModel) -> Sequence[tuple[str, str]]:
    """``Method.artifacts(params)``, or ``artifacts(params, loaded)`` when a default depends on the model."""
    assert method.artifacts is not None
    try:
        takes_model = len(inspect.signature(method.artifacts).parameters) >= 2
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        takes_model = False
    if takes_model:
        return method.artifacts(params, loaded)  # type: ignore[call-arg]
    return method.artifacts(params)


# Seed verbs and the plugin that brings each, for a helpful AttributeError.
_VERB_PLUGINS = {
    "train_sae": "lmlens-sae (plugins/sae)",
    "predict_failure_probability": "lmlens-failure (plugins/failure)",
    "train_failure_predictor": "lmlens-failure (plugins/failure)",
    "generate_failure_data": "lmlens-failure (plugins/failure)",
    "evaluate_failure_predictor": "lmlens-failure (plugins/failure)",
    "detect_anomalies": "lmlens-anomaly (plugins/anomaly)",
    "fit_anomaly_detector": "lmlens-anomaly (plugins/anomaly)",
}


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
        self._artifact_store: ArtifactStoreProtocol | None = None
        self._artifact_memo: dict[tuple[str, str, str], Artifact] = {}
        self._memo_lock = threading.Lock()
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
        if isinstance(methods, tuple):
            methods = list(methods)
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

    def tokenize(self, loaded: LoadedModel, text: str, *, check: bool = True) -> tuple[torch.Tensor, list[Token]]:
        encoded = loaded.tokenizer(
            text, return_offsets_mapping=True, add_special_tokens=True, return_tensors="pt"
        )
        input_ids = encoded["input_ids"]  # [1, pos]
        limit = self.token_limit(loaded)
        n = int(input_ids.shape[1])
        if check and n > limit:
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

    # --- one request path --------------------------------------------------------------

    def prepare(
        self,
        text: str,
        methods: Sequence[str] | str,
        params: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        document: bool = False,
        window_size: int | None = None,
        stride: int | None = None,
        check: bool = True,
    ) -> Request:
        """Validate and plan a request once, before any model work.

        In order: the text, the method names, every method's params (converted and then
        planned, so a bad parameter of any method is refused before anything runs), the
        model (and the allowlist), the artifacts the params name (present, and fitted on
        this model), the tokens (``document=True``: the whole document without special
        tokens, for windows), and the memory estimate (refused with advice when ``check``).
        """
        limit = self.settings.max_document_chars if document else None
        text = self.check_text(text, limit=limit)
        chosen = self.resolve_methods(methods)
        resolved = self.resolve_params(chosen, params)
        loaded = self.load_model(model)
        plans = {}
        for method in chosen:
            try:
                plans[method.name] = method.make_plan(loaded.info, resolved[method.name])
            except LmlensError:
                raise
            except (TypeError, ValueError) as exc:
                raise InvalidParamsError(
                    f"invalid params for {method.name}: {exc}", field=f"params.{method.name}"
                ) from None
        hashes = self._check_artifacts(loaded, chosen, resolved)
        token_limit = self.token_limit(loaded)
        if document:
            input_ids, tokens = None, None
            n_tokens = len(self.tokenize_document(loaded, text)[0])
        else:
            input_ids, tokens = self.tokenize(loaded, text, check=check)
            n_tokens = len(tokens)
        needs = [need for m in chosen for need in plans[m.name].needs]
        found = estimate(
            loaded.info,
            chosen,
            resolved,
            n_tokens=n_tokens,
            window_size=window_size,
            stride=stride,
            limit_gb=self.settings.memory_limit_gb,
            flops_per_second=self._flops_per_second.get(loaded.name, DEFAULT_FLOPS_PER_SECOND),
            needs=needs,
            token_limit=token_limit,
        )
        if check:
            self.check_memory(found)
        return Request(
            text=text,
            methods=tuple(chosen),
            params=resolved,
            plans=plans,
            loaded=loaded,
            input_ids=input_ids,
            tokens=tokens,
            estimate=found,
            artifact_hashes=hashes,
        )

    def run(self, request: Request, *, progress: Progress | None = None, use_cache: bool = True) -> AnalysisResult:
        """Run a prepared request: the cache, else one shared pass and each method."""
        key = None
        if self.cache is not None and use_cache:
            key = self.request_key(request)
            hit = self.cache.get(key)
            if hit is not None:
                result = wire.from_msgpack(hit, wire.result_type(m.result for m in request.methods))
                return msgspec.structs.replace(result, cached=True)
        result = self.run_uncached(request, progress=progress)
        if key is not None and self.cache is not None:
            self.cache.set(key, wire.to_msgpack(result))
        return result

    def run_uncached(self, request: Request, *, progress: Progress | None = None) -> AnalysisResult:
        loaded = request.loaded
        n = len(request.tokens or [])

        def measured(seconds: float) -> None:
            self._flops_per_second[loaded.name] = forward_flops(loaded.info, n) / max(seconds, 1e-6)

        return run_request(
            request,
            cache=self.cache,
            resolve_artifact=self._artifact_resolver(loaded),
            progress=progress,
            on_forward=measured,
        )

    def analyze(
        self,
        text: str,
        methods: Sequence[str] | str | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        progress: Progress | None = None,
        use_cache: bool = True,
    ) -> AnalysisResult:
        """Analyse ``text`` with every method in ``methods`` over one forward pass."""
        request = self.prepare(text, self.default_methods() if methods is None else methods, params, model=model)
        return self.run(request, progress=progress, use_cache=use_cache)

    def analyze_batch(
        self,
        texts: Sequence[str],
        methods: Sequence[str] | str | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        use_cache: bool = True,
        on_result: Callable[[int, AnalysisResult], None] | None = None,
    ) -> list[AnalysisResult]:
        """Analyse many texts with the same methods; one result per text, in order.

        Every text is prepared (validated, planned) before any model work. Texts whose
        methods are all ``batchable`` share padded passes of up to ``batch_size`` texts of
        similar length (at most ``max_tokens`` padded tokens, and no more than one text may
        have: MAX_SEQUENCE_LENGTH and the model's positions); each result equals
        ``analyze(text)`` to float32 tolerance. ``batch_size=1`` analyses text by text.
        ``on_result(index, result)`` is called as each result is ready (cached ones first).
        """
        if not isinstance(texts, (list, tuple)):
            raise InvalidParamsError("texts must be a list of strings", field="texts")
        if batch_size < 1 or max_tokens < 1:
            raise InvalidParamsError("batch_size and max_tokens must be at least 1", field="batch_size")
        chosen = self.default_methods() if methods is None else methods
        requests = []
        for index, text in enumerate(texts):
            try:
                requests.append(self.prepare(text, chosen, params, model=model))
            except LmlensError as exc:
                if exc.field == "text":
                    exc.field = f"texts[{index}]"
                raise
        results: list[AnalysisResult | None] = [None] * len(requests)
        keys: list[str | None] = [None] * len(requests)
        pending = []
        for index, request in enumerate(requests):
            if self.cache is not None and use_cache:
                keys[index] = key = self.request_key(request)
                hit = self.cache.get(key)
                if hit is not None:
                    decoded = wire.from_msgpack(hit, wire.result_type(m.result for m in request.methods))
                    results[index] = msgspec.structs.replace(decoded, cached=True)
                    if on_result is not None:
                        on_result(index, results[index])  # type: ignore[arg-type]
                    continue
            pending.append(index)

        def finished(position: int, result: AnalysisResult) -> None:
            index = pending[position]
            results[index] = result
            key = keys[index]
            if key is not None and self.cache is not None:
                self.cache.set(key, wire.to_msgpack(result))
            if on_result is not None:
                on_result(index, result)

        def measured(seconds: float, rows: int, length: int) -> None:
            loaded = requests[pending[0]].loaded
            flops = rows * forward_flops(loaded.info, length)
            self._flops_per_second[loaded.name] = flops / max(seconds, 1e-6)

        if pending:
            loaded = requests[pending[0]].loaded
            run_many(
                [requests[i] for i in pending],
                cache=self.cache,
                resolve_artifact=self._artifact_resolver(loaded),
                batch_size=batch_size,
                # a padded pass never holds more tokens than one text may have
                max_tokens=min(max_tokens, self.token_limit(loaded)),
                on_forward=measured,
                on_result=finished,
            )
        return [r for r in results if r is not None]

    def default_methods(self) -> list[str]:
        """When no method is named: every installed method tagged ``default``, else the first installed."""
        tagged = [name for name, m in self.plugins.methods.items() if "default" in m.tags]
        if tagged:
            return tagged
        if not self.plugins.methods:
            raise UnknownMethodError("no analysis method is installed; install a plugin", field="methods")
        return [sorted(self.plugins.methods)[0]]

    def token_limit(self, loaded: LoadedModel) -> int:
        return min(self.settings.max_sequence_length, loaded.info.max_positions or 10**9)

    # --- memory ------------------------------------------------------------------------

    @staticmethod
    def check_memory(found: ProcessingEstimate) -> ProcessingEstimate:
        """Refuse, with advice, an analysis whose estimate exceeds MEMORY_LIMIT_GB."""
        mem = found.memory_estimate_gb
        if mem.total_gb > found.limit_gb:
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
        methods: Sequence[str] | str | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        window_size: int | None = None,
        stride: int | None = None,
    ) -> ProcessingEstimate:
        """Memory (weights, activations, attention, gradients, total) and time, before any work.

        ``fits`` is False, with ``reasons``, for exactly the work ``analyze`` (no window) or
        streaming (with ``window_size``) would refuse.
        """
        request = self.prepare(
            text,
            self.default_methods() if methods is None else methods,
            params,
            model=model,
            document=True,
            window_size=window_size,
            stride=stride,
            check=False,
        )
        assert request.estimate is not None
        return request.estimate

    # --- fitted artifacts --------------------------------------------------------------

    @property
    def artifact_store(self) -> ArtifactStoreProtocol:
        """Where fitted artifacts live (a plugin may provide a shared store)."""
        if self._artifact_store is None:
            builtins = list(self.plugins.artifact_dirs)
            store = self.plugins.pm.hook.artifact_store(settings=self.settings, builtins=builtins)
            if store is None:
                root = os.environ.get("LMLENS_ARTIFACT_DIR") or self.settings.cache_path / "artifacts"
                store = ArtifactStore(root, builtins)
            self._artifact_store = store
        return self._artifact_store

    def artifacts(self, kind: str | None = None, *, model: str | None = None) -> list[ArtifactInfo]:
        """Fitted artifacts with their metrics; ``model`` limits them to one model's (loads it)."""
        fingerprint = model_fingerprint(self.load_model(model)) if model is not None else None
        return self.artifact_store.list(kind=kind, model=fingerprint)

    def save_artifact(self, artifact: Artifact) -> ArtifactInfo:
        return self.artifact_store.save(artifact)

    def delete_artifact(self, kind: str, name: str) -> bool:
        return self.artifact_store.delete(kind, name)

    def load_artifact(self, kind: str, name: str, *, model: str | None = None) -> Artifact:
        """An artifact, refused with ``artifact_model_mismatch`` unless fitted on ``model``."""
        return self._artifact_resolver(self.load_model(model))(kind, name)

    def new_artifact(self, loaded: LoadedModel, kind: str, name: str, **fields: Any) -> Artifact:
        """An artifact bound to ``loaded`` (its fingerprint and name); fill in the rest."""
        return Artifact(kind=kind, name=name, model=model_fingerprint(loaded), model_name=loaded.name, **fields)

    def _artifact_resolver(self, loaded: LoadedModel) -> Callable[[str, str], Artifact]:
        def resolve(kind: str, name: str) -> Artifact:
            info = self.artifact_store.info(kind, name)
            check_model(info, loaded)
            memo_key = (info.kind, info.name, info.content_hash)
            with self._memo_lock:
                found = self._artifact_memo.get(memo_key)
            if found is None:
                found = self.artifact_store.load(kind, name)
                with self._memo_lock:
                    self._artifact_memo[memo_key] = found
            return found

        return resolve

    def _check_artifacts(
        self, loaded: LoadedModel, methods: Sequence[Method], params: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        hashes: dict[str, tuple[str, ...]] = {}
        for method in methods:
            if method.artifacts is None:
                continue
            found = []
            for kind, name in _named_artifacts(method, params[method.name], loaded):
                info = self.artifact_store.info(kind, name)
                check_model(info, loaded)
                found.append(info.content_hash)
            hashes[method.name] = tuple(found)
        return hashes

    def __getattr__(self, name: str) -> Any:
        """Verbs that plugins add (``train_sae``, ``detect_anomalies``, ...)."""
        if name.startswith("_"):
            raise AttributeError(name)
        verb = self.plugins.verbs.get(name)
        if verb is None:
            known = ", ".join(sorted(self.plugins.verbs)) or "none"
            hint = _VERB_PLUGINS.get(name)
            more = f"; it comes with {hint}" if hint else ""
            raise AttributeError(f"Analyzer has no attribute or plugin verb {name!r}{more} (installed verbs: {known})")
        return functools.partial(verb, self)

    # --- long documents ----------------------------------------------------------------

    def tokenize_document(self, loaded: LoadedModel, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character spans of a whole document, without special tokens."""
        encoded = loaded.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        return list(encoded["input_ids"]), [(int(s), int(e)) for s, e in encoded["offset_mapping"]]

    def analyze_document_streaming(
        self,
        document: str,
        methods: Sequence[str] | str | None = None,
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
            self,
            document,
            self.default_methods() if methods is None else methods,
            params,
            window_size=window_size,
            stride=stride,
            model=model,
            progress=progress,
        )

    def analyze_efficient(
        self,
        text: str,
        methods: Sequence[str] | str | None = None,
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
            self, text, self.default_methods() if methods is None else methods, params,
            window_size=max_length, stride=stride,
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
            raise QueueUnavailableError(
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

        ``result`` is the analysis or its attention result (``results["attention"]``). A
        convenience over ``visualize``; it needs the attention plugin (lmlens-attention).
        """
        if "attention" not in self.plugins.methods:
            installed = ", ".join(sorted(self.plugins.methods)) or "none"
            raise UnknownMethodError(
                "visualize_attention needs the attention plugin: pip install lmlens-attention "
                f"(installed methods: {installed})",
                field="methods",
            )
        return self.visualize(result, "attention", save_path=save_path, layer=layer, head=head)

    def cache_key(
        self, text: str, loaded: LoadedModel, methods: Sequence[Method], params: Mapping[str, Any]
    ) -> str:
        """The cache key of an analysis (prefer ``request_key`` for a prepared request)."""
        hashes = self._check_artifacts(loaded, methods, params)
        return self._key(text, loaded, methods, params, hashes)

    def request_key(self, request: Request) -> str:
        """Text, model and revision, plugin and method versions, params, artifact content hashes."""
        return self._key(request.text, request.loaded, request.methods, request.params, request.artifact_hashes)

    def _key(
        self,
        text: str,
        loaded: LoadedModel,
        methods: Sequence[Method],
        params: Mapping[str, Any],
        hashes: Mapping[str, tuple[str, ...]],
    ) -> str:
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
                    artifacts=list(hashes.get(method.name, ())),
                )
            )
        return cache_key(text, loaded.name, loaded.revision, keys)
