"""Attention rollout (Abnar and Zuidema 2020), for encoders and decoders alike.

Each layer's heads are fused into one map ``A_l`` ``[q, k]``; with the residual term the
layer's map is ``(A_l + I)`` with rows renormalised (the residual carries as much as
attention does), and the rollout to layer l is ``Ã_l @ ... @ Ã_0``: row q says how much
the state at position q after layer l draws from each input token. Products run in
float64 so that 30 layers of row-stochastic products do not drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

FUSIONS = ("mean", "max", "min")


def fuse_heads(pattern: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """[batch, head, q, k] -> [batch, q, k]."""
    p = pattern.float()
    if how == "mean":
        return p.mean(1)
    if how == "max":
        return p.amax(1)
    return p.amin(1)


def fusion_reducer(how: str) -> partial[torch.Tensor]:
    return partial(fuse_heads, how=how)


def layer_transition(fused: torch.Tensor, residual: bool) -> torch.Tensor:
    """[q, k] fused map -> [q, k] row-stochastic float64 transition of one layer."""
    a = fused.double()
    if residual:
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return a / a.sum(-1, keepdim=True).clamp(min=1e-300)


def attention_rollout(fused: Sequence[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """layer-list of [q, k] -> [layer, q, k] float64: the rollout up to and including each layer."""
    out = []
    total: torch.Tensor | None = None
    for a in fused:
        step = layer_transition(a, residual)
        total = step if total is None else step @ total
        out.append(total)
    return torch.stack(out)
