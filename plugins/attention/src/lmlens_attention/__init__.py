"""lmlens-attention: attention patterns and per-head entropy.

``attention`` keeps the full patterns only for the layers and heads asked for, and
reduces every other map to per-head entropy inside the hook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
import numpy as np
import torch

from lmlens import InvalidParamsError, Method, ModelInfo, Need, Result, Trace, hookimpl
from lmlens.wire import Float32Array

__version__ = "0.1.0"


class AttentionParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    layers: list[int] | None = None  # None: every layer; negative counts from the end
    heads: list[int] | None = None  # None: every head
    patterns: bool = True  # keep the full [q_pos, k_pos] maps (entropy is always kept)


class AttentionResult(Result, frozen=True, kw_only=True, tag="attention"):
    layers: list[int]
    heads: list[int]
    patterns: Float32Array | None  # [layer, head, q_pos, k_pos], rows sum to 1
    entropy: Float32Array  # [layer, head], nats, mean over query positions


def attention_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """[batch, head, q_pos, k_pos] -> [batch, head]: mean over queries of -sum p log p."""
    return torch.special.entr(pattern.float()).sum(-1).mean(-1)


def _pick(values: list[int] | None, size: int, what: str) -> list[int]:
    if values is None:
        return list(range(size))
    picked = []
    for v in values:
        if not -size <= v < size:
            raise InvalidParamsError(
                f"{what} {v} does not exist; the model has {size} {what}s",
                field=f"params.attention.{what}s",
            )
        picked.append(v % size)
    return list(dict.fromkeys(picked))


def _needs(info: ModelInfo, params: AttentionParams) -> Sequence[Need]:
    layers = _pick(params.layers, info.n_layers, "layer")
    _pick(params.heads, info.n_heads, "head")
    needs = []
    for layer in layers:
        point = f"blocks.{layer}.attn.pattern"
        needs.append(Need(point, attention_entropy, name=f"attention.entropy.{layer}"))
        if params.patterns:
            needs.append(Need(point))
    return needs


def _run(trace: Trace, params: AttentionParams) -> AttentionResult:
    info = trace.model.info
    layers = _pick(params.layers, info.n_layers, "layer")
    heads = _pick(params.heads, info.n_heads, "head")
    head_index = torch.tensor(heads)
    entropy = torch.stack([trace[f"attention.entropy.{layer}"][0] for layer in layers])
    patterns = None
    if params.patterns:
        maps = [trace[f"blocks.{layer}.attn.pattern"][0] for layer in layers]
        stacked = torch.stack(maps) if len(heads) == info.n_heads else torch.stack(
            [m.index_select(0, head_index) for m in maps]
        )
        patterns = stacked.float().numpy(force=True)
    return AttentionResult(
        layers=layers,
        heads=heads,
        patterns=patterns,
        entropy=entropy.index_select(1, head_index).numpy(force=True).astype(np.float32),
    )


ATTENTION = Method(
    name="attention",
    description="attention patterns [layer, head, q, k] and per-head entropy",
    params=AttentionParams,
    result=AttentionResult,
    needs=_needs,
    run=_run,
    version=__version__,
)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    register(ATTENTION)
