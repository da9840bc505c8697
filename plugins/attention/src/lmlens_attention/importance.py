"""Head importance by ablation, batched: many ablated copies of the text per forward pass.

A head's output reaches the residual stream through the attention output projection;
the kernel's point ``blocks.{l}.attn.heads`` is that projection's input split by head,
``[batch, pos, head, d_head]``. Ablating head h of layer l patches its slice there, in
one row of the batch: zero ablation with zeros, mean ablation with the head's mean output over
the text's positions. Row r of a pass carries ablation r, so ``batch_size`` ablations
(of any layers) cost one pass, and the blocks below a pass's lowest ablated layer run
for one row only. The loss reads the final norm's output and applies the LM head to
the positions that predict a token (all but the last), a few rows at a time, so a pass
never holds a ``[batch, pos, vocab]`` logits tensor.

What is left is compute (issue 13, 34 SmolLM2 tokens: ~1.6 TMAC for 540 ablated rows,
the blocks above each row's pass's lowest layer and the LM head at 33 positions, at
~60% of a plain GEMM's speed). Passes of one layer each would skip ~5% of the
multiply-adds, but their 18-row GEMMs and 3x more passes measured slower; the
attention of the ablated layer itself is ~1% of a row. See ``benchmarks/bench_perf.py``.

``head_attribution`` is the fast approximation (attribution patching: Nanda 2023; Syed
et al. 2023): one forward and one backward pass give the loss's gradient with respect
to every head's output, and the effect of replacing output ``h`` by ``h'`` is estimated
to first order as ``sum((h' - h) * dL/dh)`` over positions and ``d_head``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
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
    return _shifted_loss(logits[:, :-1], input_ids[:, 1:].to(logits.device))


def _shifted_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits [batch, pos - 1, vocab] predicting target [batch or 1, pos - 1] -> [batch] mean nats."""
    scores = logits.float()  # a no-op in float32; fp16/bf16 logits are scored in float32
    picked = scores.gather(-1, target.expand(scores.shape[0], -1)[..., None])[..., 0]
    loss: torch.Tensor = (torch.logsumexp(scores, -1) - picked).mean(-1)
    return loss


LOSS_CHUNK_ELEMENTS = 1 << 23  # logits held at once while scoring: 32 MB in float32


def head_loss(loaded: LoadedModel, input_ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The next-token loss from the final norm's output [batch, pos, d_model] -> [batch].

    The LM head runs on the positions that predict a token (not the last), a few rows at a
    time: the same numbers as ``next_token_loss(model logits)`` without the full logits."""
    assert loaded.arch.lm_head is not None
    head = loaded.model.get_submodule(loaded.arch.lm_head)
    target = input_ids[:, 1:].to(loaded.device)  # [1, pos - 1]
    per_row = max(1, (int(input_ids.shape[1]) - 1) * loaded.info.vocab_size)
    chunk = max(1, LOSS_CHUNK_ELEMENTS // per_row)

    def loss(final: torch.Tensor) -> torch.Tensor:
        # contiguous: a strided [rows, pos - 1, d_model] slice makes the head a batched matmul
        # that reads the [vocab, d_model] weight once per row (2x slower for 5 rows)
        hidden = final[:, :-1].contiguous()
        parts = [_shifted_loss(head(hidden[s : s + chunk]), target) for s in range(0, hidden.shape[0], chunk)]
        return torch.cat(parts)

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
    exact: dict[str, np.ndarray] | None = None  # hybrid: kind -> [layer, head] bool, True where ablated


def head_importance(
    loaded: LoadedModel,
    input_ids: torch.Tensor,  # [1, pos]
    layers: Sequence[int],
    kinds: Sequence[str],
    batch_size: int,
    only: Collection[Ablation] | None = None,
) -> Importance:
    """Every (kind, layer, head) ablated exactly; with ``only``, just those (the rest of the
    effects are NaN)."""
    loss = uses_loss(loaded)
    batch_size = batch_size or auto_batch_size(int(input_ids.shape[1]))
    mean_needs = [Need(f"blocks.{layer}.attn.heads", _position_mean, name=f"mean.{layer}") for layer in layers]
    if loss:
        # the clean loss through the same function as the ablated rows: effects are differences
        metric = head_loss(loaded, input_ids)
        got = run_forward(loaded, [Need("final", metric, name="clean"), *mean_needs], input_ids=input_ids)
        clean = float(got["clean"][0])
    else:
        got = run_forward(loaded, [Need("final"), *mean_needs], input_ids=input_ids)
        clean_state = got["final"]  # [1, pos, d_model]
        clean = 0.0

        def metric(out: torch.Tensor) -> torch.Tensor:  # [batch] ; runs inside the hook
            return final_state_change(out, clean_state)

    means = {layer: got[f"mean.{layer}"] for layer in layers}
    del got
    # layer-major, so that the rows of one pass share their lowest ablated layer
    jobs = [Ablation(k, layer, h) for layer in sorted(layers) for k in kinds for h in range(loaded.info.n_heads)]
    if only is not None:
        wanted = set(only)
        jobs = [job for job in jobs if job in wanted]
    found: dict[Ablation, float] = {}
    n_passes = 1
    for first in range(0, len(jobs), batch_size):
        rows = jobs[first : first + batch_size]
        out = run_forward(
            loaded,
            [Need("final", metric, name="ablated")],
            input_ids=input_ids,
            patches=ablation_patches(loaded, rows, means),
        )
        found.update(zip(rows, out["ablated"].double().tolist(), strict=True))
        n_passes += 1
    effects = {}
    for kind in kinds:
        grid = [[found.get(Ablation(kind, layer, h), np.nan) for h in range(loaded.info.n_heads)] for layer in layers]
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


def head_hybrid(
    loaded: LoadedModel,
    input_ids: torch.Tensor,  # [1, pos]
    layers: Sequence[int],
    kinds: Sequence[str],
    batch_size: int,
    top: int,
) -> Importance:
    """Attribution ranks every head; the ``top`` heads of each kind by the estimate's size are
    then ablated exactly. Effects: exact where ``exact`` is True, the estimate elsewhere."""
    estimate = head_attribution(loaded, input_ids, layers, kinds)
    index = {layer: i for i, layer in enumerate(layers)}
    chosen: list[Ablation] = []
    for kind in kinds:
        flat = np.abs(estimate.effects[kind]).ravel()
        for i in np.argsort(-flat, kind="stable")[: max(0, top)]:
            layer_i, head = divmod(int(i), loaded.info.n_heads)
            chosen.append(Ablation(kind, layers[layer_i], head))
    ablated = head_importance(loaded, input_ids, layers, kinds, batch_size, only=chosen)
    effects, exact = {}, {}
    for kind in kinds:
        mask = np.zeros(estimate.effects[kind].shape, dtype=bool)
        for a in chosen:
            if a.kind == kind:
                mask[index[a.layer], a.head] = True
        effects[kind] = np.where(mask, ablated.effects[kind], estimate.effects[kind]).astype(np.float32)
        exact[kind] = mask
    return Importance(
        metric=ablated.metric,
        clean=ablated.clean,
        effects=effects,
        n_passes=estimate.n_passes + ablated.n_passes,
        exact=exact,
    )
