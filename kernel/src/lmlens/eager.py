"""Eager attention that writes its pattern where the capture asks: no copy of the maps.

A method that keeps full attention maps (``attention`` with ``patterns=True``) wants
them in one ``[layer, head, q, k]`` buffer. Copying each layer's map into that buffer
after the model made it costs a pass over 283 MB of fresh memory on SmolLM2 at 512
tokens: about a fifth of the forward pass on one thread. Here the scores are computed
straight into the buffer's slot, and the softmax runs in place there, so the map the
model attends with *is* the kept one.

It is registered with transformers' attention interface as ``lmlens_eager`` and used
only for the families whose own eager attention it reproduces operation for operation
(``FAMILIES``: scaled ``q k^T``, an additive mask, a float32 softmax, ``p v``); other
families run their own eager attention and the capture copies as before. Where no
destination is set for a module (a layer whose map nobody keeps) it allocates, as the
family's own code does. The destination is an attribute of the attention module, set
by the capture for one pass under the model's lock and removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

NAME = "lmlens_eager"
DESTINATION = "_lmlens_pattern_into"  # module attribute: shape -> tensor (or None) for this pass
FAMILIES = frozenset({"llama", "mistral", "qwen2"})  # eager attention identical to llama's

Destination = Callable[[torch.Size], "torch.Tensor | None"]


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """[batch, kv_head, pos, d] -> [batch, kv_head * groups, pos, d], as the families do."""
    if groups == 1:
        return states
    b, h, n, d = states.shape
    return states[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, head, q, d]
    key: torch.Tensor,  # [batch, kv_head, k, d]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # additive, broadcastable to [batch, head, q, k]
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    groups = int(getattr(module, "num_key_value_groups", 1))
    key_states = _repeat_kv(key, groups)
    value_states = _repeat_kv(value, groups)
    shape = torch.Size((query.shape[0], query.shape[1], query.shape[2], key_states.shape[2]))
    into: Destination | None = getattr(module, DESTINATION, None)
    if query.dtype != torch.float32:  # the families' order: softmax in float32, then back
        weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    else:
        out = into(shape) if into is not None else None
        if out is None:
            weights = torch.matmul(query, key_states.transpose(2, 3))
        else:
            weights = torch.matmul(query, key_states.transpose(2, 3), out=out)
        weights.mul_(scaling)  # in place: the same operations as ``q k^T * scaling + mask``
        if attention_mask is not None:
            weights.add_(attention_mask)
        torch.softmax(weights, dim=-1, out=weights)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value_states)
    return output.transpose(1, 2).contiguous(), weights


def supports(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in FAMILIES and hasattr(model, "set_attn_implementation")


_registered = False


def register() -> None:
    """Make ``lmlens_eager`` known to transformers (once per process)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    _registered = True
