"""Occlusion: replace a window of tokens with a reference and measure the target's drop.

Leave-one-out is window 1. A token's score is the mean drop over the windows that
cover it (Captum's convention). All occluded copies run as batched passes.
"""

from __future__ import annotations

import torch

from lmlens_importance.targets import Objective


def windows(slots: list[int], window: int, stride: int) -> list[list[int]]:
    """Positions of each window over the attributable positions ``slots``; the last window
    always reaches the end."""
    if not slots:
        return []
    size = min(window, len(slots))
    starts = list(range(0, len(slots) - size + 1, stride))
    if starts[-1] != len(slots) - size:
        starts.append(len(slots) - size)
    return [slots[s : s + size] for s in starts]


def occlusion(
    objective: Objective,
    replacement: torch.Tensor,  # [1, pos, d_model]
    slots: list[int],
    *,
    window: int,
    stride: int,
    batch_size: int,
    f_input: float,
) -> tuple[torch.Tensor, int]:
    """([pos] float64 mean drop per token, number of windows)."""
    spans = windows(slots, window, stride)
    n = objective.embeds.shape[1]
    scores = torch.zeros(n, dtype=torch.float64)
    cover = torch.zeros(n, dtype=torch.float64)
    for start in range(0, len(spans), batch_size):
        chunk = spans[start : start + batch_size]
        copies = objective.embeds.repeat(len(chunk), 1, 1)  # [chunk, pos, d_model]
        for row, span in enumerate(chunk):
            copies[row, span] = replacement[0, span]
        drops = f_input - objective.values(copies, batch_size=len(chunk))  # [chunk]
        for span, drop in zip(chunk, drops.tolist(), strict=True):
            scores[span] += drop
            cover[span] += 1
    return torch.where(cover > 0, scores / cover.clamp(min=1), 0.0), len(spans)
