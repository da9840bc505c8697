"""The one way a pass runs over a loaded model.

The analyzer's shared pass and every extra pass a method runs (ablations, integrated
gradients, occlusion, splicing an SAE's reconstruction, generation steps) go through
``run_forward``, which owns:

- the model's lock: hooks are registered, the pass runs and the hooks come off while
  the lock is held, so another thread never sees the model half-patched;
- the LM head only when ``logits`` are needed, and an early stop after the last needed point;
- eager attention only when a pattern is needed;
- cancellation: the thread's bound ``CancelToken`` is checked before every block;
- hook removal on every exit path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch

from lmlens.capture import Capture, Need, Patch, StopForward
from lmlens.models import LoadedModel


def run_forward(
    loaded: LoadedModel,
    needs: Iterable[Need],
    *,
    input_ids: torch.Tensor | None = None,  # [batch, pos]
    inputs_embeds: torch.Tensor | None = None,  # [batch, pos, d_model]
    attention_mask: torch.Tensor | None = None,  # [batch, pos]
    patches: Iterable[Patch] = (),
    grad: bool = False,
    stop_early: bool = True,
) -> dict[str, Any]:
    """Run the model once and return ``{need.key: value}`` for every need.

    ``patches`` edit activations during this pass only. With ``grad=True`` the pass
    records the autograd graph (differentiate with respect to ``inputs_embeds`` or a
    patched tensor); the backward pass runs after the lock is released and touches
    no module state.
    """
    needs = list(needs)
    if input_ids is not None:
        input_ids = input_ids.to(loaded.device)
    capture = Capture(
        loaded.modules, needs, patches=patches, stop_early=stop_early, loaded=loaded, input_ids=input_ids
    )
    target = loaded.model if capture.needs_logits else loaded.base_model
    kwargs: dict[str, Any] = {"use_cache": False}
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds.to(loaded.device)
    else:
        assert input_ids is not None, "give input_ids or inputs_embeds"
        kwargs["input_ids"] = input_ids
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(loaded.device)
    context = torch.enable_grad() if grad else torch.inference_mode()
    with loaded.lock:
        loaded.set_eager_attention(capture.needs_patterns)
        with context, capture, contextlib.suppress(StopForward):
            target(**kwargs)
    missing = [n.key for n in needs if n.key not in capture.activations]
    if missing:
        raise RuntimeError(f"the forward pass did not reach {', '.join(missing)}")
    return capture.activations
