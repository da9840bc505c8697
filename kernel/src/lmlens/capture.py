"""Named hook points: selective capture (reads) and patches (writes).

A method declares ``Need``s. Only those points get hooks, and a need with a reducer
keeps only what the reducer returns: entropy per head instead of a
``[batch, head, q_pos, k_pos]`` map. A ``Patch`` replaces an activation during the
pass (ablation, steering, activation patching, an SAE's reconstruction); reads at the
same point see the patched value. Hooks are removed when the ``Capture`` context
exits, also when the forward pass raises. Only the kernel registers torch hooks, and
only inside ``run_forward``, which holds the model's lock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.hooks import RemovableHandle

from lmlens.architectures import HookTarget, ModuleMap, Tap
from lmlens.cancel import check_current, current
from lmlens.eager import DESTINATION
from lmlens.errors import InvalidParamsError

if TYPE_CHECKING:
    from lmlens.models import LoadedModel

Reducer = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class Need:
    """Capture ``point``; keep ``reducer(tensor)`` if a reducer is given, else the tensor.

    The value lands in ``trace.activations[need.key]``; ``key`` defaults to the point
    name, so give reduced needs a name of their own (``"blocks.3.attn.entropy"``).
    ``keeps`` tells the memory estimate what share of the point's tensor the reducer
    keeps (1.0 for a copy, 0.5 for half the heads); ``None`` means a small summary.

    ``into(shape)`` is a hint for ``blocks.{i}.attn.pattern``: a tensor of that shape
    (or ``None``) where the model may compute the map itself, so a reducer that keeps
    the map finds it already in place (``tensor.data_ptr()`` tells) and copies nothing.
    Only the families ``lmlens.eager`` reproduces take the hint; for the others the
    reducer gets the model's own tensor, as without it.
    """

    point: str
    reducer: Reducer | None = None
    name: str | None = None
    keeps: float | None = None
    into: Callable[[torch.Size], torch.Tensor | None] | None = None

    @property
    def key(self) -> str:
        return self.name or self.point


@dataclass(frozen=True)
class PatchContext:
    """What a patch function knows about the pass it edits."""

    point: str
    layer: int | None
    loaded: LoadedModel
    input_ids: torch.Tensor | None  # [batch, pos] when the pass was given token ids


PatchFn = Callable[[torch.Tensor, PatchContext], torch.Tensor]


@dataclass(frozen=True)
class Patch:
    """Replace the activation at ``point`` with ``fn(activation, context)`` during a pass.

    ``fn`` receives the activation in the point's documented shape (batch first, for
    ``blocks.{i}.attn.heads`` ``[batch, pos, head, d_head]``) and returns the
    replacement of the same shape. It sees the whole batch, so per-row edits (one
    ablation per row) use a mask or index the rows. At ``blocks.{i}.resid_pre`` a
    patch may also widen a batch of one row to ``n`` rows: the blocks below ran once,
    and masks and position embeddings made for one row broadcast. Attention patterns
    are read-only.
    """

    point: str
    fn: PatchFn


class StopForward(Exception):
    """Raised inside a hook once every need is captured, to skip the rest of the model."""


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value  # type: ignore[no-any-return]


class Capture:
    """Context manager that hooks the needed and patched points of one model."""

    def __init__(
        self,
        modules: ModuleMap,
        needs: Iterable[Need],
        *,
        patches: Iterable[Patch] = (),
        stop_early: bool = False,
        loaded: LoadedModel | None = None,
        input_ids: torch.Tensor | None = None,
    ):
        self.modules = modules
        self.by_point: dict[str, list[Need]] = defaultdict(list)
        keys: set[str] = set()
        for need in needs:
            if need.key in keys and need not in self.by_point[need.point]:
                raise InvalidParamsError(f"two different needs share the name {need.key!r}")
            keys.add(need.key)
            if need not in self.by_point[need.point]:
                self.by_point[need.point].append(need)
        self.patches: dict[str, list[Patch]] = defaultdict(list)
        for patch in patches:
            if patch.point.endswith(".attn.pattern"):
                raise InvalidParamsError(
                    f"{patch.point}: attention patterns are read-only; patch blocks.N.attn.heads instead",
                    field="point",
                )
            self.patches[patch.point].append(patch)
        self.loaded = loaded
        self.input_ids = input_ids
        self.activations: dict[str, Any] = {}
        self.stop_early = stop_early
        self._pending: set[str] = set()
        self._handles: list[RemovableHandle] = []
        self._destinations: list[torch.nn.Module] = []

    @property
    def needs_patterns(self) -> bool:
        return any(p.endswith(".attn.pattern") for p in self.by_point)

    @property
    def needs_logits(self) -> bool:
        return "logits" in self.by_point or "logits" in self.patches

    def __enter__(self) -> Capture:
        self.activations = {}
        self._pending = set(self.by_point)
        try:
            for point in dict.fromkeys([*self.patches, *self.by_point]):
                self._install(point, self.modules.resolve(point))
            self._set_destinations()
            if current() is not None:  # cancellation: check before every block
                for block in self.modules.blocks:
                    self._handles.append(block.register_forward_pre_hook(lambda m, a: check_current()))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._destinations:
            if hasattr(module, DESTINATION):
                delattr(module, DESTINATION)
        self._destinations.clear()

    def _set_destinations(self) -> None:
        """Hand each pattern point's ``into`` hint to its attention module for this pass."""
        for point, needs in self.by_point.items():
            into = next((need.into for need in needs if need.into is not None), None)
            if into is None or not point.endswith(".attn.pattern"):
                continue
            module = self.modules.resolve(point).module
            setattr(module, DESTINATION, into)
            self._destinations.append(module)

    def _install(self, point: str, target: HookTarget) -> None:
        needs = self.by_point.get(point, [])
        patches = self.patches.get(point, [])
        if target.tap in (Tap.INPUT, Tap.HEADS):
            hook = self._pre_hook(point, target, needs, patches)
            self._handles.append(target.module.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            self._handles.append(target.module.register_forward_hook(self._hook(point, target, needs, patches)))

    def _patched(self, point: str, target: HookTarget, patches: list[Patch], value: torch.Tensor) -> torch.Tensor:
        if not patches:
            return value
        assert self.loaded is not None, "patches need the loaded model"
        context = PatchContext(point=point, layer=target.layer, loaded=self.loaded, input_ids=self.input_ids)
        for patch in patches:
            new = patch.fn(value, context)
            if not isinstance(new, torch.Tensor):
                raise TypeError(f"patch at {point} returned {type(new).__name__}, not a tensor")
            widened = target.tap is Tap.INPUT and value.shape[0] == 1 and new.shape[1:] == value.shape[1:]
            if new.shape != value.shape and not widened:
                raise ValueError(f"patch at {point} changed the shape {tuple(value.shape)} -> {tuple(new.shape)}")
            value = new
        return value

    def _store(self, point: str, needs: list[Need], tensor: torch.Tensor) -> None:
        for need in needs:
            self.activations[need.key] = tensor if need.reducer is None else need.reducer(tensor)
        if needs:
            self._pending.discard(point)
            if self.stop_early and not self._pending:
                raise StopForward

    def _hook(self, point: str, target: HookTarget, needs: list[Need], patches: list[Patch]) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if target.tap is Tap.OUTPUT_1:
                value = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if value is None:
                    raise RuntimeError(
                        f"{point}: the attention module returned no weights; "
                        "the model must run with eager attention"
                    )
                self._store(point, needs, value)
                return None
            value = _first(output)
            new = self._patched(point, target, patches, value)
            self._store(point, needs, new)
            if new is value:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def _pre_hook(self, point: str, target: HookTarget, needs: list[Need], patches: list[Patch]) -> Callable[..., Any]:
        heads = target.tap is Tap.HEADS
        n_heads = self.modules_heads() if heads else 0

        def hook(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
            value = args[0] if args else kwargs["hidden_states"]
            if heads:  # [batch, pos, heads * d_head] -> [batch, pos, head, d_head]
                value = value.unflatten(-1, (n_heads, -1))
            new = self._patched(point, target, patches, value)
            self._store(point, needs, new)
            if new is value:
                return None
            if heads:
                new = new.flatten(-2)
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return hook

    def modules_heads(self) -> int:
        if self.loaded is not None:
            return self.loaded.info.n_heads
        config: Any = getattr(self.modules.model, "config", None)
        return int(getattr(config, "num_attention_heads", getattr(config, "n_head", 0)))
