"""Named hook points, selective capture, and reducers that run inside the hook.

A method declares ``Need``s. Only those points get hooks, and a need with a reducer
keeps only what the reducer returns: entropy per head instead of a
``[batch, head, q_pos, k_pos]`` map. Hooks are removed when the ``Capture`` context
exits, also when the forward pass raises.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from lmlens.architectures import ModuleMap, Tap, point_names
from lmlens.errors import InvalidParamsError

Reducer = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class Need:
    """Capture ``point``; keep ``reducer(tensor)`` if a reducer is given, else the tensor.

    The value lands in ``trace.activations[need.key]``; ``key`` defaults to the point
    name, so give reduced needs a name of their own (``"blocks.3.attn.entropy"``).
    ``keeps`` tells the memory estimate what share of the point's tensor the reducer
    keeps (1.0 for a copy, 0.5 for half the heads); ``None`` means a small summary.
    """

    point: str
    reducer: Reducer | None = None
    name: str | None = None
    keeps: float | None = None

    @property
    def key(self) -> str:
        return self.name or self.point


class StopForward(Exception):
    """Raised inside a hook once every need is captured, to skip the rest of the model."""


class Capture:
    """Context manager that hooks the needed points of one model and collects values."""

    def __init__(self, modules: ModuleMap, needs: Iterable[Need], *, stop_early: bool = False):
        self.modules = modules
        self.by_point: dict[str, list[Need]] = defaultdict(list)
        keys: set[str] = set()
        for need in needs:
            if need.key in keys and need not in self.by_point[need.point]:
                raise InvalidParamsError(f"two different needs share the name {need.key!r}")
            keys.add(need.key)
            if need not in self.by_point[need.point]:
                self.by_point[need.point].append(need)
        self.activations: dict[str, Any] = {}
        self.stop_early = stop_early
        self._pending: set[str] = set()
        self._handles: list[RemovableHandle] = []

    @property
    def needs_patterns(self) -> bool:
        return any(p.endswith(".attn.pattern") for p in self.by_point)

    @property
    def needs_logits(self) -> bool:
        return "logits" in self.by_point

    def __enter__(self) -> Capture:
        self.activations = {}
        self._pending = set(self.by_point)
        try:
            for point, needs in self.by_point.items():
                target = self.modules.resolve(point)
                if target.tap is Tap.INPUT:
                    handle = target.module.register_forward_pre_hook(
                        self._pre_hook(point, needs), with_kwargs=True
                    )
                else:
                    handle = target.module.register_forward_hook(
                        self._hook(point, needs, target.tap)
                    )
                self._handles.append(handle)
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

    def _store(self, point: str, needs: list[Need], tensor: torch.Tensor) -> None:
        for need in needs:
            self.activations[need.key] = tensor if need.reducer is None else need.reducer(tensor)
        self._pending.discard(point)
        if self.stop_early and not self._pending:
            raise StopForward

    def _hook(self, point: str, needs: list[Need], tap: Tap) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if tap is Tap.OUTPUT_1:
                value = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if value is None:
                    raise RuntimeError(
                        f"{point}: the attention module returned no weights; "
                        "the model must run with eager attention"
                    )
            else:
                value = output[0] if isinstance(output, tuple) else output
            self._store(point, needs, value)

        return hook

    def _pre_hook(self, point: str, needs: list[Need]) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            value = args[0] if args else kwargs["hidden_states"]
            self._store(point, needs, value)

        return hook


def all_points(modules: ModuleMap) -> list[str]:
    return point_names(modules.n_layers)
