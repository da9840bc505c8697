"""Activation steering: add ``coefficient x vector`` to the residual stream at every position.

The vector is given, or contrastive (ActAdd-style): the mean residual of a positive text
minus that of a negative text, at the steered point. Next-token changes compare the
last position's distribution with and without the vector; generation is a greedy loop of
whole passes (no KV cache), each with the steering patch, fine for short texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmlens import LoadedModel, Need, Patch, PatchContext, greedy_generate, run_forward
from lmlens_patching.targets import encode, last_logits


def steering_patch(point: str, vector: torch.Tensor, coefficient: float) -> Patch:
    """``x + coefficient * vector`` at ``point``, every row and position."""
    shift = vector.double() * coefficient  # one rounding to the model's dtype, not two

    def add(x: torch.Tensor, context: PatchContext) -> torch.Tensor:
        return x + shift.to(x.device, x.dtype)

    return Patch(point, add)


def content_mask(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """[pos] bool: positions that are not special tokens (<bos>, [CLS]); all if that leaves none."""
    special = set(getattr(loaded.tokenizer, "all_special_ids", []) or [])
    mask = torch.tensor([int(i) not in special for i in ids[0].tolist()], dtype=torch.bool)
    return mask if bool(mask.any()) else torch.ones_like(mask)


def mean_activation(loaded: LoadedModel, point: str, text: str) -> torch.Tensor:
    """[d_model] float64: the mean of ``point`` over the text's non-special positions."""
    ids = encode(loaded, text)
    mask = content_mask(loaded, ids)

    def mean(x: torch.Tensor) -> torch.Tensor:  # [1, pos, d_model] -> [d_model]
        return x[0, mask.to(x.device)].double().mean(0).cpu()

    got = run_forward(loaded, [Need(point, mean, name="mean")], input_ids=ids)
    value: torch.Tensor = got["mean"]
    return value


def contrastive_vector(loaded: LoadedModel, point: str, positive: str, negative: str) -> torch.Tensor:
    """[d_model] float64: mean residual of ``positive`` minus that of ``negative`` at ``point``."""
    return mean_activation(loaded, point, positive) - mean_activation(loaded, point, negative)


def next_token_logits(loaded: LoadedModel, ids: torch.Tensor, patches: Sequence[Patch] = ()) -> torch.Tensor:
    """[vocab] float64: the logits after the last position."""
    got = run_forward(loaded, [Need("logits", last_logits, name="last")], input_ids=ids, patches=patches)
    value: torch.Tensor = got["last"][0]
    return value


def greedy(loaded: LoadedModel, ids: torch.Tensor, steps: int, patches: Sequence[Patch] = ()) -> list[int]:
    """Greedy continuation of ``ids`` [1, pos]: up to ``steps`` tokens, ending at EOS, through the
    kernel's ``greedy_generate`` (KV cache; the patches apply to every step)."""
    return greedy_generate(loaded, [ids[0].tolist()], steps, stop_at_newline=False, patches=patches)[0]


def kl_divergence(before: torch.Tensor, after: torch.Tensor) -> float:
    """KL(before || after) in nats, from two logit vectors [vocab]."""
    lp = torch.log_softmax(before.double(), -1)
    lq = torch.log_softmax(after.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())
