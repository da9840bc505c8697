"""Head importance by ablation, batched: many ablated copies of the text per forward pass.

A head's output reaches the residual stream through the attention output projection,
whose input is the heads' outputs side by side, ``[batch, pos, n_heads * d_head]``.
Ablating head h of layer l replaces its ``d_head`` slice in that input, in one row of
the batch: zero ablation with zeros, mean ablation with the head's mean output over
the text's positions. Row r of a pass carries ablation r, so ``batch_size`` ablations
(of any layers) cost one pass, and the blocks below a pass's lowest ablated layer run
for one row only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lmlens import LoadedModel, Need, UnsupportedArchitectureError
from lmlens.forward import run_forward

# Where the per-head outputs are concatenated, relative to the attention module.
_MIXERS = ("o_proj", "c_proj", "out_proj", "dense")


def head_mixer(loaded: LoadedModel, layer: int) -> nn.Module:
    """The module whose input is ``[batch, pos, n_heads * d_head]`` in block ``layer``."""
    arch = loaded.arch
    block = loaded.modules.blocks[layer]
    attn = block.get_submodule(arch.attn)
    for name in _MIXERS:
        if hasattr(attn, name):
            return getattr(attn, name)  # type: ignore[no-any-return]
    out = block.get_submodule(arch.attn_out)  # BERT: attention.output.dense
    if isinstance(out, nn.Linear):
        return out
    raise UnsupportedArchitectureError(
        f"{arch.name}: no attention output projection found in block {layer}", field="methods"
    )


def uses_loss(loaded: LoadedModel) -> bool:
    """Causal LMs are scored by next-token loss; encoders by how much the final states move."""
    return loaded.info.causal and loaded.info.has_lm_head


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """logits [batch, pos, vocab], input_ids [batch, pos] -> [batch]: mean cross-entropy (nats).

    logsumexp minus the target's logit: no second [batch, pos, vocab] tensor of log-probs.
    """
    scores = logits[:, :-1].float()  # [batch, pos - 1, vocab]
    target = input_ids[:, 1:].to(logits.device)
    picked = scores.gather(-1, target[..., None])[..., 0]
    loss: torch.Tensor = (torch.logsumexp(scores, -1) - picked).mean(-1)
    return loss


AUTO_TOKENS_PER_PASS = 2048  # batch_size=0: rows per pass so that rows x pos stays near this


def auto_batch_size(n_tokens: int) -> int:
    return max(1, min(64, AUTO_TOKENS_PER_PASS // max(n_tokens, 1)))


def final_state_change(final: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """final [batch, pos, d_model], clean [1, pos, d_model] -> [batch]:
    mean over positions of ||final - clean|| / ||clean||."""
    diff = (final.float() - clean.float()).norm(dim=-1)
    change: torch.Tensor = (diff / clean.float().norm(dim=-1).clamp(min=1e-12)).mean(-1)
    return change


@dataclass(frozen=True)
class Ablation:
    kind: str  # "zero" or "mean"
    layer: int
    head: int


@contextmanager
def _ablating(
    loaded: LoadedModel, rows: Sequence[Ablation], means: dict[int, torch.Tensor]
) -> Iterator[None]:
    """Pre-hooks on each touched layer's mixer: row r gets ablation rows[r]."""
    d_head = loaded.info.d_head
    handles = []
    try:
        for layer in sorted({a.layer for a in rows}):
            mixer = head_mixer(loaded, layer)
            keep = torch.ones(len(rows), 1, loaded.info.n_heads * d_head)  # [batch, 1, heads*d_head]
            fill = torch.zeros_like(keep)
            for r, a in enumerate(rows):
                if a.layer != layer:
                    continue
                cols = slice(a.head * d_head, (a.head + 1) * d_head)
                keep[r, 0, cols] = 0.0
                if a.kind == "mean":
                    fill[r, 0, cols] = means[layer][cols]
            handles.append(mixer.register_forward_pre_hook(_replace(keep, fill)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _replace(keep: torch.Tensor, fill: torch.Tensor) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]  # [batch, pos, heads * d_head]
        k, f = keep.to(x.device, x.dtype), fill.to(x.device, x.dtype)
        return (x * k + f, *args[1:])

    return hook


@contextmanager
def _recording_means(loaded: LoadedModel, layers: Sequence[int], out: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record each layer's mixer input averaged over positions: [heads * d_head]."""
    handles = []

    def record(layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            out[layer] = args[0][0].float().mean(0).cpu()

        return hook

    try:
        for layer in layers:
            handles.append(head_mixer(loaded, layer).register_forward_pre_hook(record(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _batch_from(loaded: LoadedModel, layer: int, rows: int) -> Iterator[None]:
    """Run the text once up to block ``layer``, then as ``rows`` copies.

    Below the lowest ablated layer every row is the clean run, so the pass computes
    those blocks for one row and widens the residual stream where the ablations start;
    masks and position embeddings made for one row broadcast over the copies.
    """

    def widen(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            x = args[0]  # [1, pos, d_model]
            return (x.expand(rows, *x.shape[1:]).contiguous(), *args[1:]), kwargs
        x = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": x.expand(rows, *x.shape[1:]).contiguous()}

    handle = loaded.modules.blocks[layer].register_forward_pre_hook(widen, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class Importance:
    metric: str
    clean: float
    effects: dict[str, np.ndarray]  # kind -> [layer, head]: ablated metric - clean metric
    n_passes: int


def head_importance(
    loaded: LoadedModel,
    input_ids: torch.Tensor,  # [1, pos]
    layers: Sequence[int],
    kinds: Sequence[str],
    batch_size: int,
) -> Importance:
    loss = uses_loss(loaded)
    point = "logits" if loss else "final"
    batch_size = batch_size or auto_batch_size(int(input_ids.shape[1]))
    means: dict[int, torch.Tensor] = {}
    with _recording_means(loaded, layers, means):
        clean_out = run_forward(loaded, [Need(point)], input_ids=input_ids)[point]  # [1, pos, *]
    clean_state = clean_out if not loss else None
    clean = float(next_token_loss(clean_out, input_ids)[0]) if loss else 0.0
    del clean_out

    def metric(out: torch.Tensor) -> torch.Tensor:  # [batch] ; runs inside the hook
        if loss:
            return next_token_loss(out, input_ids.expand(out.shape[0], -1))
        assert clean_state is not None
        return final_state_change(out, clean_state)

    # layer-major, so that the rows of one pass share their lowest ablated layer
    jobs = [Ablation(k, layer, h) for layer in sorted(layers) for k in kinds for h in range(loaded.info.n_heads)]
    found: dict[Ablation, float] = {}
    n_passes = 1
    for first in range(0, len(jobs), batch_size):
        rows = jobs[first : first + batch_size]
        with _ablating(loaded, rows, means), _batch_from(loaded, min(a.layer for a in rows), len(rows)):
            got = run_forward(loaded, [Need(point, metric, name="attention.ablated")], input_ids=input_ids)
        found.update(zip(rows, got["attention.ablated"].double().tolist(), strict=True))
        n_passes += 1
    effects = {}
    for kind in kinds:
        grid = [[found[Ablation(kind, layer, h)] for h in range(loaded.info.n_heads)] for layer in layers]
        effects[kind] = (np.array(grid) - clean).astype(np.float32)  # [layer, head]
    return Importance(
        metric="next_token_loss" if loss else "final_state_change",
        clean=clean,
        effects=effects,
        n_passes=n_passes,
    )
