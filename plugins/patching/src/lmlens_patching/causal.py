"""Activation patching (causal tracing), batched on the kernel's write path.

The corrupted text runs with one piece of the clean run restored; the target metric
says how much of the clean behaviour that piece brings back. One batch row carries one
restoration:

- residual stream: row r restores ``blocks.{L}.resid_pre`` at the positions of row r
  (one position for the layer x position grid);
- heads: row r restores head h's output ``blocks.{L}.attn.heads[:, :, h]`` at every position.

The blocks below a pass's lowest restored layer are the same for every row, so they run
once, for one row: a widening patch at ``blocks.{low}.resid_pre`` turns that row into
``rows`` copies, and the per-row replacement at the same point runs after it (two patches
at one point apply in order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmlens import LoadedModel, Need, Patch, PatchContext, run_forward
from lmlens_patching.targets import Target

TOKENS_PER_PASS = 1024  # batch_size=0: rows per pass so that rows x pos stays near this


def auto_batch_size(n_tokens: int) -> int:
    return max(1, min(128, TOKENS_PER_PASS // max(n_tokens, 1)))


Patcher = Callable[[torch.Tensor, PatchContext], torch.Tensor]


def widen(rows: int) -> Patcher:
    def patch(resid: torch.Tensor, context: PatchContext) -> torch.Tensor:
        return resid.expand(rows, *resid.shape[1:]).contiguous()

    return patch


def restore_where(mask: torch.Tensor, clean: torch.Tensor) -> Patcher:
    """Rows of the batch take ``clean`` where ``mask`` is set (mask broadcasts against the activation)."""

    def patch(value: torch.Tensor, context: PatchContext) -> torch.Tensor:
        return torch.where(mask.to(value.device), clean.to(value.device, value.dtype), value)

    return patch


@dataclass(frozen=True)
class Restore:
    """One row: restore ``point`` of ``layer`` from the clean run, where ``index`` says.

    ``what="resid"``: ``index`` holds positions; ``what="head"``: ``index`` holds one head.
    """

    what: str
    layer: int
    index: tuple[int, ...]


@dataclass(frozen=True)
class CleanRun:
    """What the clean run left for the restorations: ``resid[L]`` ``[1, pos, d_model]``,
    ``heads[L]`` ``[1, pos, head, d_head]``."""

    resid: dict[int, torch.Tensor]
    heads: dict[int, torch.Tensor]


def restore_patches(loaded: LoadedModel, rows: Sequence[Restore], clean: CleanRun, n_pos: int) -> list[Patch]:
    """The patches of one pass: row r carries rows[r]."""
    n = len(rows)
    low = min(r.layer for r in rows)
    patches = [Patch(f"blocks.{low}.resid_pre", widen(n))]
    for layer in sorted({r.layer for r in rows}):
        resid_rows = [(i, r) for i, r in enumerate(rows) if r.layer == layer and r.what == "resid"]
        head_rows = [(i, r) for i, r in enumerate(rows) if r.layer == layer and r.what == "head"]
        if resid_rows:
            mask = torch.zeros(n, n_pos, 1, dtype=torch.bool)  # [batch, pos, 1]
            for i, r in resid_rows:
                mask[i, list(r.index)] = True
            patches.append(Patch(f"blocks.{layer}.resid_pre", restore_where(mask, clean.resid[layer])))
        if head_rows:
            mask = torch.zeros(n, 1, loaded.info.n_heads, 1, dtype=torch.bool)  # [batch, 1, head, 1]
            for i, r in head_rows:
                mask[i, 0, list(r.index)] = True
            patches.append(Patch(f"blocks.{layer}.attn.heads", restore_where(mask, clean.heads[layer])))
    return patches


def run_restorations(
    loaded: LoadedModel,
    corrupted_ids: torch.Tensor,  # [1, pos]
    clean: CleanRun,
    rows: Sequence[Restore],
    target: Target,
    batch_size: int,
) -> tuple[np.ndarray, int]:
    """The target metric of the corrupted run with each row's restoration: ([rows] float64, passes).

    Rows are taken in the given order, ``batch_size`` per pass; order them layer-major so the
    rows of one pass share a low first layer and the blocks below it run once.
    """
    n_pos = int(corrupted_ids.shape[1])
    values: list[float] = []
    passes = 0
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        got = run_forward(
            loaded,
            [Need("logits", target.from_logits, name="metric")],
            input_ids=corrupted_ids,
            patches=restore_patches(loaded, chunk, clean, n_pos),
        )
        values.extend(got["metric"].tolist())
        passes += 1
    return np.asarray(values, dtype=np.float64), passes


def metric_of(loaded: LoadedModel, ids: torch.Tensor, target: Target) -> float:
    """The target metric of one plain pass."""
    got = run_forward(loaded, [Need("logits", target.from_logits, name="metric")], input_ids=ids)
    return float(got["metric"][0])


def normalise(values: np.ndarray, clean: float, corrupted: float) -> np.ndarray | None:
    """(patched - corrupted) / (clean - corrupted); None when the two runs score the same."""
    span = clean - corrupted
    if abs(span) < 1e-6 * max(1.0, abs(clean), abs(corrupted)):
        return None
    return (values - corrupted) / span
