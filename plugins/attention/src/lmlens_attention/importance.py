"""Head importance by ablation, batched: many ablated copies of the text per forward pass.

A head's output reaches the residual stream through the attention output projection;
the kernel's point ``blocks.{l}.attn.heads`` is that projection's input split by head,
``[batch, pos, head, d_head]``. Ablating head h of layer l patches its slice there, in
one row of the batch: zero ablation with zeros, mean ablation with the head's mean output over
the text's positions. Row r of a pass carries ablation r, so ``batch_size`` ablations
(of any layers) cost one pass, and the blocks below a pass's lowest ablated layer run
for one row only.

``head_attribution`` is the fast approximation (attribution patching: Nanda 2023; Syed
et al. 2023): one forward and one backward pass give the loss's gradient with respect
to every head's output, and the effect of replacing output ``h`` by ``h'`` is estimated
to first order as ``sum((h' - h) * dL/dh)`` over positions and ``d_head``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmlens import InvalidParamsError, LoadedModel, Need, Patch, PatchContext, run_forward


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


Patcher = Callable[[torch.Tensor, PatchContext], torch.Tensor]


def _ablate(keep: torch.Tensor, fill: torch.Tensor) -> Patcher:
    """Per-head outputs [batch, pos, head, d_head]: row r keeps its heads except the ablated one."""

    def patch(heads: torch.Tensor, context: PatchContext) -> torch.Tensor:
        return heads * keep.to(heads.device, heads.dtype) + fill.to(heads.device, heads.dtype)

    return patch


def _widen(rows: int) -> Patcher:
    """Below the lowest ablated layer every row is the clean run: compute those blocks for
    one row and widen the residual stream to ``rows`` copies where the ablations start."""

    def patch(resid: torch.Tensor, context: PatchContext) -> torch.Tensor:
        return resid.expand(rows, *resid.shape[1:]).contiguous()

    return patch


def ablation_patches(
    loaded: LoadedModel, rows: Sequence[Ablation], means: dict[int, torch.Tensor]
) -> list[Patch]:
    """Row r of the pass carries ablation rows[r]: one widening patch and one patch per touched layer."""
    n_heads, d_head = loaded.info.n_heads, loaded.info.d_head
    patches = [Patch(f"blocks.{min(a.layer for a in rows)}.resid_pre", _widen(len(rows)))]
    for layer in sorted({a.layer for a in rows}):
        keep = torch.ones(len(rows), 1, n_heads, d_head)  # [batch, 1, head, d_head]
        fill = torch.zeros_like(keep)
        for r, a in enumerate(rows):
            if a.layer != layer:
                continue
            keep[r, 0, a.head] = 0.0
            if a.kind == "mean":
                fill[r, 0, a.head] = means[layer][a.head]
        patches.append(Patch(f"blocks.{layer}.attn.heads", _ablate(keep, fill)))
    return patches


def _position_mean(heads: torch.Tensor) -> torch.Tensor:
    """[1, pos, head, d_head] -> [head, d_head]: each head's mean output over the text."""
    return heads[0].float().mean(0).cpu()


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
    mean_needs = [Need(f"blocks.{layer}.attn.heads", _position_mean, name=f"mean.{layer}") for layer in layers]
    got = run_forward(loaded, [Need(point), *mean_needs], input_ids=input_ids)
    means = {layer: got[f"mean.{layer}"] for layer in layers}
    clean_out = got[point]  # [1, pos, *]
    del got
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
        out = run_forward(
            loaded,
            [Need(point, metric, name="ablated")],
            input_ids=input_ids,
            patches=ablation_patches(loaded, rows, means),
        )
        found.update(zip(rows, out["ablated"].double().tolist(), strict=True))
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


def _leaf(resid: torch.Tensor, context: PatchContext) -> torch.Tensor:
    """The residual stream below the lowest attributed layer as a leaf: the graph starts here."""
    return resid.detach().requires_grad_(True)


def _own_node(heads: torch.Tensor, context: PatchContext) -> torch.Tensor:
    """A tensor of its own at the point, so the gradient with respect to it is defined."""
    return heads.clone()


def head_attribution(
    loaded: LoadedModel,
    input_ids: torch.Tensor,  # [1, pos]
    layers: Sequence[int],
    kinds: Sequence[str],
) -> Importance:
    """First-order estimate of every ablation's effect on the loss: one forward, one backward.

    zero ablation: -sum(h * g); mean ablation: sum((mean_pos(h) - h) * g), with ``h`` a
    head's output [pos, d_head] and ``g`` the loss's gradient with respect to it.
    """
    if not uses_loss(loaded):
        raise InvalidParamsError(
            "attribution mode estimates the change of the next-token loss, which needs a causal "
            f"language model; {loaded.name} is scored by final_state_change, whose gradient is zero "
            'at the clean run: use mode "exact"',
            field="params.head_importance.mode",
        )
    patches = [Patch(f"blocks.{min(layers)}.resid_pre", _leaf)]
    patches += [Patch(f"blocks.{layer}.attn.heads", _own_node) for layer in layers]
    needs = [Need(f"blocks.{layer}.attn.heads", name=f"heads.{layer}") for layer in layers]
    with torch.inference_mode(False):
        got = run_forward(loaded, [*needs, Need("logits")], input_ids=input_ids, patches=patches, grad=True)
        loss = next_token_loss(got["logits"], input_ids)[0]
        heads = [got[f"heads.{layer}"] for layer in layers]  # [1, pos, head, d_head] each
        grads = torch.autograd.grad(loss, heads)
    effects: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    for h, g in zip(heads, grads, strict=True):
        h64, g64 = h.detach()[0].double(), g[0].double()  # [pos, head, d_head]
        for kind in kinds:
            replaced = torch.zeros_like(h64) if kind == "zero" else h64.mean(0, keepdim=True).expand_as(h64)
            effects[kind].append(((replaced - h64) * g64).sum((0, 2)).numpy())  # [head]
    return Importance(
        metric="next_token_loss",
        clean=float(loss.detach()),
        effects={kind: np.stack(rows).astype(np.float32) for kind, rows in effects.items()},
        n_passes=1,
    )
