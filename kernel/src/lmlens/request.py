"""One prepared request, the same for every way in.

``Analyzer.prepare`` builds a ``Request`` once: the text checked, methods resolved,
every method's params validated and planned (before any model work), the model
loaded, the artifacts the params name checked against it, the text tokenized and the
memory estimate checked. ``analyze``, the estimate, streaming windows, batches, the
HTTP service and the WebSocket all run such a request; the cache key is computed from
it in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from lmlens.capture import Need
from lmlens.errors import LmlensError, MethodFailedError
from lmlens.forward import run_forward
from lmlens.method import Method, Plan, Trace
from lmlens.wire import AnalysisResult, ModelRef, Result, Token

if TYPE_CHECKING:
    from lmlens.artifacts import Artifact
    from lmlens.cache import Cache
    from lmlens.estimate import ProcessingEstimate
    from lmlens.models import LoadedModel

Progress = Callable[[str, str], None]
"""``progress(stage, what)``: ("start" | "end", method name, or "" for the shared pass), and
("window", "i/n") before each window of a streaming analysis."""

SEP = "/"  # need keys are namespaced per method: "<method>/<key>"


@dataclass(frozen=True)
class Request:
    """Everything decided before the model runs."""

    text: str
    methods: tuple[Method, ...]
    params: Mapping[str, Any]
    plans: Mapping[str, Plan]
    loaded: LoadedModel
    input_ids: torch.Tensor | None  # [1, pos]; None for a document (windows bring their own)
    tokens: list[Token] | None
    estimate: ProcessingEstimate | None
    artifact_hashes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    def window(self, text: str, input_ids: torch.Tensor, tokens: list[Token]) -> Request:
        """The same request over one window of a document."""
        return replace(self, text=text, input_ids=input_ids, tokens=tokens)

    def shared_needs(self) -> list[Need]:
        """Every method's needs, with keys namespaced by method."""
        needs: list[Need] = []
        for method in self.methods:
            for need in self.plans[method.name].needs:
                needs.append(replace(need, name=f"{method.name}{SEP}{need.key}"))
        return needs


def _method_view(activations: Mapping[str, Any], method: str) -> dict[str, Any]:
    prefix = method + SEP
    return {k[len(prefix) :]: v for k, v in activations.items() if k.startswith(prefix)}


def run_request(
    request: Request,
    *,
    cache: Cache | None,
    resolve_artifact: Callable[[str, str], Artifact] | None,
    progress: Progress | None = None,
    on_forward: Callable[[float], None] | None = None,
) -> AnalysisResult:
    """The shared pass, then each method's ``run`` on its own view of the trace."""
    assert request.input_ids is not None and request.tokens is not None, "a document runs by windows"
    notify = progress or (lambda stage, method: None)
    timings: dict[str, float] = {}
    needs = request.shared_needs()
    notify("start", "")
    started = time.perf_counter()
    activations = run_forward(request.loaded, needs, input_ids=request.input_ids) if needs else {}
    elapsed = time.perf_counter() - started
    timings["forward"] = elapsed * 1000
    if needs and on_forward is not None:
        on_forward(elapsed)
    notify("end", "")
    return method_results(
        request, activations, timings, cache=cache, resolve_artifact=resolve_artifact, progress=progress
    )


def method_results(
    request: Request,
    activations: Mapping[str, Any],
    timings: dict[str, float],
    *,
    cache: Cache | None,
    resolve_artifact: Callable[[str, str], Artifact] | None,
    progress: Progress | None = None,
) -> AnalysisResult:
    """Each method's ``run`` on its own view of a captured pass (keys ``"<method>/<key>"``)."""
    assert request.input_ids is not None and request.tokens is not None, "a document runs by windows"
    notify = progress or (lambda stage, method: None)
    results: dict[str, Result] = {}
    for method in request.methods:
        notify("start", method.name)
        started = time.perf_counter()
        trace = Trace(
            model=request.loaded,
            text=request.text,
            tokens=request.tokens,
            input_ids=request.input_ids,
            activations=_method_view(activations, method.name),
            cache=cache,
            state=request.plans[method.name].state,
            resolve_artifact=resolve_artifact,
        )
        results[method.name] = run_method(method, trace, request.params[method.name])
        timings[method.name] = (time.perf_counter() - started) * 1000
        notify("end", method.name)
    loaded = request.loaded
    return AnalysisResult(
        model=ModelRef(name=loaded.name, revision=loaded.revision, family=loaded.info.family),
        text=request.text,
        tokens=request.tokens,
        methods=results,
        timings_ms=timings,
    )


def run_method(method: Method, trace: Trace, params: Any) -> Result:
    try:
        result = method.run(trace, params)
    except LmlensError:
        raise
    except Exception as exc:
        raise MethodFailedError(f"method {method.name!r} failed: {type(exc).__name__}: {exc}", field="methods") from exc
    if not isinstance(result, method.result):
        raise MethodFailedError(
            f"method {method.name!r} returned {type(result).__name__}, not {method.result.__name__}"
        )
    return result


def methods_list(methods: Sequence[str] | str | object) -> object:
    return [methods] if isinstance(methods, str) else methods
