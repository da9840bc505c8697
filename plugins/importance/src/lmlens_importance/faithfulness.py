"""Does the ranking point at tokens the target really depends on?

Comprehensiveness and sufficiency as defined by ERASER (DeYoung et al. 2020, "ERASER: A
Benchmark to Evaluate Rationalized NLP Models", ACL, section 4.2): with r the top-k
tokens of the ranking,

    comprehensiveness = m(x) - m(x without r)        (higher: the ranking found what matters)
    sufficiency       = m(x) - m(r alone)            (lower: the top tokens carry the target)

and AOPC, their mean over the bins B = {1, 5, 10, 20, 50}% of the tokens (ERASER eq. 3
and 4, after Samek et al. 2017). ERASER's m is the predicted class probability and r is
deleted from the text; here m is reported both in the target's own units (log-probability
nats for next_token and continuation) and as a probability (exp of the log-probability;
for the loss target exp(-loss), the geometric-mean token probability; a similarity has no
probability), and r is removed two ways: ``replace`` (each removed token's embedding is
swapped for the replacement reference, so positions and length stay) and ``delete``
(the tokens leave the sequence, as in ERASER). Special tokens ([CLS], <bos>) are never
removed and count in neither k nor the text's length m.

Count rounding: k = min(m, max(1, floor(f * m + 1/2))), half away from zero, at least
one token: on short texts several bins share k (a 6-token text has k = 1 for 1, 5 and
10%).

The deletion curve removes tokens in ranked order (replace only); its area is compared
with random orders, the reference an attribution has to beat.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from lmlens_importance.result import Erasure, Faithfulness
from lmlens_importance.targets import Objective

ERASER_FRACTIONS = [0.01, 0.05, 0.1, 0.2, 0.5]
ROUNDING = "k = min(m, max(1, floor(f * m + 1/2))) of the m non-special tokens"
UNITS = {
    "next_token": "log-probability (nats)",
    "continuation": "summed log-probability (nats)",
    "loss": "mean next-token loss (nats)",
    "similarity": "cosine similarity",
}


def ranked(scores: torch.Tensor, slots: list[int]) -> list[int]:
    """Attributable positions, highest signed score first (ties: earlier first)."""
    return sorted(slots, key=lambda p: (-float(scores[p]), p))


def count_for(fraction: float, m: int) -> int:
    """Tokens in the top ``fraction`` of ``m``: rounded half up, at least 1, at most m."""
    return min(m, max(1, math.floor(fraction * m + 0.5)))


def probability(kind: str | None, values: np.ndarray) -> np.ndarray | None:
    """The target as a probability, where it has one."""
    if kind in ("next_token", "continuation"):
        return np.exp(values)
    if kind == "loss":
        return np.exp(-values)
    return None


def deletable(kind: str | None) -> bool:
    """Targets defined for any length: the loss target scores the text's own tokens."""
    return kind != "loss"


def _area(counts: list[int], curve: np.ndarray, total: int) -> float:
    return float(np.trapezoid(curve, np.asarray(counts, dtype=np.float64) / max(total, 1)))


def _erasures(
    removal: str, kind: str | None, f_input: float, without_top: np.ndarray, only_top: np.ndarray
) -> list[Erasure]:
    out = []
    for units, transform in (("target", lambda v: v), ("probability", lambda v: probability(kind, v))):
        base = transform(np.asarray([f_input]))
        comp_m, suff_m = transform(without_top), transform(only_top)
        if base is None or comp_m is None or suff_m is None:
            continue
        comp = (base[0] - comp_m).tolist()
        suff = (base[0] - suff_m).tolist()
        out.append(
            Erasure(
                removal=removal,
                units=units,
                comprehensiveness=comp,
                sufficiency=suff,
                aopc_comprehensiveness=float(np.mean(comp)),
                aopc_sufficiency=float(np.mean(suff)),
            )
        )
    return out


def _deleted_values(objective: Objective, keep_rows: list[list[int]], batch_size: int) -> np.ndarray:
    """f for rows that keep only the given positions (shorter sequences), grouped by length."""
    out = np.empty(len(keep_rows))
    by_length: dict[int, list[int]] = defaultdict(list)
    for row, kept in enumerate(keep_rows):
        by_length[len(kept)].append(row)
    for rows in by_length.values():
        index = torch.tensor([keep_rows[r] for r in rows], dtype=torch.long)  # [rows, length]
        embeds = objective.embeds[0][index]  # [rows, length, d_model]
        out[rows] = objective.values(embeds, batch_size=batch_size).numpy()
    return out


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
    kind: str | None = None,
    removal: str = "replace",
) -> tuple[Faithfulness, int]:
    """(the report, passes run). ``removal``: replace, delete or both (delete is skipped,
    with a note, for targets that are not defined on a shorter text)."""
    m = len(slots)
    order = ranked(scores, slots)
    counts = [count_for(f, m) for f in fractions]
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
    erasures = _erasures("replace", kind, f_input, f[:k], f[k : 2 * k])
    notes: list[str] = []
    if removal in ("delete", "both"):
        if deletable(kind):
            n = objective.embeds.shape[1]
            keep_rows = [[p for p in range(n) if p not in set(order[:c])] for c in counts]
            keep_rows += [[p for p in range(n) if p not in set(order[c:])] for c in counts]
            deleted = _deleted_values(objective, keep_rows, batch_size)
            passes += len({len(r) for r in keep_rows})
            erasures += _erasures("delete", kind, f_input, deleted[:k], deleted[k:])
        else:
            notes.append(f"the {kind} target is defined on the text's own tokens: deleting them changes the target, "
                         "so only replacement is reported")
    curve = f[2 * k : 2 * k + d]
    auc = _area(deletion_counts, curve, m)
    random_auc = None
    if random_orders:
        randoms = f[2 * k + d :].reshape(random_orders, d)
        random_auc = float(np.mean([_area(deletion_counts, r, m) for r in randoms]))
    replaced = erasures[0]
    report = Faithfulness(
        replacement=replacement_label,
        fractions=list(fractions),
        counts=counts,
        comprehensiveness=replaced.comprehensiveness,
        sufficiency=replaced.sufficiency,
        aopc_comprehensiveness=replaced.aopc_comprehensiveness,
        aopc_sufficiency=replaced.aopc_sufficiency,
        units=UNITS.get(kind or "", "the target's units"),
        rounding=ROUNDING,
        erasures=erasures,
        deletion_counts=deletion_counts,
        deletion_curve=curve.astype(np.float32),
        deletion_auc=auc,
        random_deletion_auc=random_auc,
        beats_random=None if random_auc is None else auc < random_auc,
        notes=notes,
    )
    return report, passes

