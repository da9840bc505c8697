"""What a method is, and what it gets to work with."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from lmlens.wire import Result, Token

if TYPE_CHECKING:
    import torch

    from lmlens.artifacts import Artifact
    from lmlens.cache import Cache
    from lmlens.capture import Need
    from lmlens.models import LoadedModel, ModelInfo


@dataclass(frozen=True)
class Trace:
    """One captured forward pass, shared by every method of a request.

    ``activations`` maps a need's name to what its hook kept: the tensor, or what
    the need's reducer returned. Tensors are in their documented shapes with the
    batch dimension of 1 kept.
    """

    model: LoadedModel
    text: str
    tokens: list[Token]
    input_ids: torch.Tensor  # [1, pos]
    activations: Mapping[str, Any]
    cache: Cache | None = None  # the analyzer's result cache, for what is worth sharing (probe scores)
    state: Any = None  # what this method's plan() handed over (Plan.state)
    resolve_artifact: Callable[[str, str], Artifact] | None = None

    def __getitem__(self, name: str) -> Any:
        return self.activations[name]

    def artifact(self, kind: str, name: str) -> Artifact:
        """A fitted artifact, checked against this trace's model and memoised by content hash."""
        if self.resolve_artifact is None:
            raise RuntimeError("this trace was built without an artifact store")
        return self.resolve_artifact(kind, name)


@dataclass(frozen=True)
class Plan:
    """What a method decided once per request: the needs of the shared pass, and any
    state it wants back in ``run`` (``trace.state``), such as buffers or resolved options.

    Need keys are the method's own: the kernel namespaces them, so two methods may both
    name a need ``"entropy"``.
    """

    needs: Sequence[Need] = ()
    state: Any = None


@dataclass(frozen=True, kw_only=True)
class Method:
    """An analysis method a plugin offers.

    ``needs(info, params)`` says which hook points (and reducers) the shared forward
    pass must capture for this method; ``run(trace, params)`` turns them into a
    ``result`` Struct. When no requested method needs ``logits``, the kernel runs the
    base model only and skips the LM head.

    For long documents: ``token_fields`` names the result's per-token array fields and
    the axis that runs over the window's tokens (``{"bits": 0}``), so windowed results
    can be stitched back onto the document; ``extra_bytes(info, params, n_tokens)``
    estimates memory the method uses beyond its captured needs (gradients, batched
    extra passes), for the memory estimate.

    For batches of texts: ``batchable=True`` says the method's shared-pass needs may be
    captured from a padded batch of texts (``Analyzer.analyze_batch``). The kernel then
    hands each of the method's reducers (and kept tensors) one text's row with the
    padding stripped, in the same shapes as an unbatched pass (batch of 1), and calls
    ``run`` once per text with that text's trace; extra passes inside ``run`` stay per
    text. Say so only when the result does not depend on anything but the captured
    values (to float32 tolerance: batched products may round differently) and the
    trace. A request with any method that is not batchable runs its texts one by one.
    """

    name: str
    description: str
    params: type[msgspec.Struct]
    result: type[Result]
    run: Callable[[Trace, Any], Result]
    # needs(info, params) -> [Need]; optional when ``plan`` is given
    needs: Callable[[ModelInfo, Any], Sequence[Need]] | None = None
    version: str = "0"
    tags: tuple[str, ...] = field(default_factory=tuple)
    token_fields: Mapping[str, int] = field(default_factory=dict)
    extra_bytes: Callable[[ModelInfo, Any, int], float] | None = None
    # plan(info, params) -> Plan, called once per request instead of needs() when given
    plan: Callable[[ModelInfo, Any], Plan] | None = None
    # artifacts(params) -> [(kind, name)]: the fitted artifacts these params use; checked
    # against the model before any work, and their content hashes enter the cache key.
    # artifacts(params, loaded) is called instead when it takes two arguments (a default
    # that depends on the model).
    artifacts: Callable[..., Sequence[tuple[str, str]]] | None = None
    # the shared-pass needs may come from a padded batch of texts (see above)
    batchable: bool = False

    def __post_init__(self) -> None:
        if self.needs is None and self.plan is None:
            raise TypeError(f"method {self.name!r} gives neither needs nor plan")

    def make_plan(self, info: ModelInfo, params: Any) -> Plan:
        if self.plan is not None:
            return self.plan(info, params)
        assert self.needs is not None, "checked in __post_init__"
        return Plan(needs=tuple(self.needs(info, params)))
