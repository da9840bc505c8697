"""Run one captured forward pass on a loaded model.

The analyzer uses it for the shared pass; methods that need more (gradients,
ablations, batched probe inputs) call it for their extra passes, so that every pass
gets the same hook handling, attention switching and early stop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch

from lmlens.capture import Capture, Need, StopForward
from lmlens.models import LoadedModel


def run_forward(
    loaded: LoadedModel,
    needs: Iterable[Need],
    *,
    input_ids: torch.Tensor | None = None,  # [batch, pos]
    inputs_embeds: torch.Tensor | None = None,  # [batch, pos, d_model]
    attention_mask: torch.Tensor | None = None,  # [batch, pos]
    grad: bool = False,
    stop_early: bool = True,
) -> dict[str, Any]:
    """Run the model once and return ``{need.key: value}`` for every need.

    The LM head runs only when ``logits`` is needed; with ``stop_early`` the pass stops
    at the last needed hook point. Patterns switch the model to eager attention for
    this pass; otherwise it runs with SDPA.
    """
    needs = list(needs)
    capture = Capture(loaded.modules, needs, stop_early=stop_early)
    target = loaded.model if capture.needs_logits else loaded.base_model
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds.to(loaded.device)
    else:
        assert input_ids is not None, "give input_ids or inputs_embeds"
        kwargs["input_ids"] = input_ids.to(loaded.device)
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(loaded.device)
    context = torch.enable_grad() if grad else torch.inference_mode()
    with loaded._attn_lock:
        loaded.set_eager_attention(capture.needs_patterns)
        with context, capture, contextlib.suppress(StopForward):
            target(**kwargs)
    missing = [n.key for n in needs if n.key not in capture.activations]
    if missing:
        raise RuntimeError(f"the forward pass did not reach {', '.join(missing)}")
    return capture.activations
