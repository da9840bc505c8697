"""Does the ranking point at tokens the target really depends on?

Comprehensiveness and sufficiency (DeYoung et al. 2020, ERASER): remove the top-k
tokens, or keep only them, and measure the change in the target. The deletion curve
removes tokens in ranked order; its area is compared with random orders, the
reference an attribution has to beat. Removal swaps a token's embedding for the
replacement reference, so positions and length stay as they were.
"""

from __future__ import annotations

import numpy as np
import torch

from lmlens_importance.result import Faithfulness
from lmlens_importance.targets import Objective


def ranked(scores: torch.Tensor, slots: list[int]) -> list[int]:
    """Attributable positions, highest signed score first (ties: earlier first)."""
    return sorted(slots, key=lambda p: (-float(scores[p]), p))


def _area(counts: list[int], curve: np.ndarray, total: int) -> float:
    return float(np.trapezoid(curve, np.asarray(counts, dtype=np.float64) / max(total, 1)))


def faithfulness(
    objective: Objective,
    scores: torch.Tensor,  # [pos]
    replacement: torch.Tensor,  # [1, pos, d_model]
    slots: list[int],
    *,
    replacement_label: str,
    fractions: list[float],
    deletion_points: int,
    random_orders: int,
    batch_size: int,
    f_input: float,
    seed: int = 0,
) -> tuple[Faithfulness, int]:
    """(the report, passes run)."""
    m = len(slots)
    order = ranked(scores, slots)
    counts = [min(m, max(1, round(f * m))) for f in fractions]
    deletion_counts = sorted({round(c) for c in np.linspace(0, m, min(deletion_points, m + 1))})
    rng = np.random.default_rng(seed)
    random_ranks = [list(rng.permutation(slots)) for _ in range(random_orders)]
    # Each row is the set of positions replaced.
    rows: list[list[int]] = []
    rows += [order[:k] for k in counts]  # comprehensiveness
    rows += [order[k:] for k in counts]  # sufficiency: everything but the top k removed
    rows += [order[:k] for k in deletion_counts]
    for perm in random_ranks:
        rows += [[int(p) for p in perm[:k]] for k in deletion_counts]
    values = []
    passes = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        copies = objective.embeds.repeat(len(chunk), 1, 1)  # [chunk, pos, d_model]
        for row, removed in enumerate(chunk):
            if removed:
                copies[row, removed] = replacement[0, removed]
        values.append(objective.values(copies, batch_size=len(chunk)))
        passes += 1
    f = torch.cat(values).numpy()  # [rows]
    k = len(counts)
    d = len(deletion_counts)
    comprehensiveness = (f_input - f[:k]).tolist()
    sufficiency = (f_input - f[k : 2 * k]).tolist()
    curve = f[2 * k : 2 * k + d]
    auc = _area(deletion_counts, curve, m)
    random_auc = None
    if random_orders:
        randoms = f[2 * k + d :].reshape(random_orders, d)
        random_auc = float(np.mean([_area(deletion_counts, r, m) for r in randoms]))
    report = Faithfulness(
        replacement=replacement_label,
        fractions=list(fractions),
        counts=counts,
        comprehensiveness=comprehensiveness,
        sufficiency=sufficiency,
        deletion_counts=deletion_counts,
        deletion_curve=curve.astype(np.float32),
        deletion_auc=auc,
        random_deletion_auc=random_auc,
        beats_random=None if random_auc is None else auc < random_auc,
    )
    return report, passes
