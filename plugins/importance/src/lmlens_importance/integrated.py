"""Integrated gradients along a path from a baseline, in memory-sized chunks.

The weighted gradient sum is accumulated in float64 chunk by chunk, so the steps never
sit in memory together (Captum runs them all in one batch). What does not change
between steps (x - baseline, f(x), f(baseline)) is computed once, and the endpoint
values ride along as two extra rows of the last gradient chunk when it has room
(their gradients are dropped), so a short text costs one pass instead of two: on two
busy cores a pass's fixed cost (a few hundred small ops) is what a short text pays.
Without room they get a pass of their own, without gradients, holding only the unknown
ones (the plugin knows f(input) from choosing the target token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlens_importance.paths import path_points
from lmlens_importance.quadrature import path_nodes
from lmlens_importance.targets import Objective, check_finite


@dataclass(frozen=True)
class IntegratedRun:
    scores: torch.Tensor  # [pos] float64, attribution summed over d_model
    steps: int
    delta: float  # sum(scores) - (f_input - f_baseline)
    relative_delta: float | None
    passes: int
    f_input: float
    f_baseline: float


def endpoint_values(objective: Objective, baseline: torch.Tensor) -> tuple[float, float]:
    """(f(input), f(baseline)) in one pass of two rows."""
    both = objective.values(torch.cat([objective.embeds, baseline]), batch_size=2)
    return float(both[0]), float(both[1])


def relative(delta: float, f_input: float, f_baseline: float) -> float | None:
    gap = abs(f_input - f_baseline)
    return abs(delta) / gap if gap > 1e-12 else None


def integrated_gradients(
    objective: Objective,
    baseline: torch.Tensor,  # [1, pos, d_model]
    *,
    steps: int,
    rule: str,
    spacing: str,
    batch_size: int,
    path: str = "straight",
    f_input: float | None = None,
    f_baseline: float | None = None,
) -> IntegratedRun:
    """IG scores per token; ``f_input``/``f_baseline`` not given are computed on the way."""
    alphas, weights = path_nodes(rule, steps, spacing)
    x = objective.embeds  # [1, pos, d_model]
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)  # [pos]
    passes = 0
    starts = list(range(0, steps, batch_size))
    # the endpoints still unknown, as extra rows of the last chunk if they fit in the budget
    ends = [e for e, known in ((x, f_input), (baseline, f_baseline)) if known is None]
    fold = bool(ends) and steps - starts[-1] + len(ends) <= batch_size
    for start in starts:
        a = torch.as_tensor(alphas[start : start + batch_size], dtype=torch.float64, device=x.device)
        w = torch.as_tensor(weights[start : start + batch_size], dtype=torch.float64, device=x.device)
        where = f"alpha {float(a.min()):.3g}..{float(a.max()):.3g}"
        points, velocity = path_points(path, baseline, x, a)  # [chunk, pos, d_model] each
        extra = ends if fold and start == starts[-1] else []
        if extra:
            points = torch.cat([points, *extra])  # [chunk + extra, pos, d_model]
        with torch.inference_mode(False), torch.enable_grad():
            points.requires_grad_(True)
            values = objective(points, grad=True)  # [chunk + extra]
            check_finite(values.detach(), f"the target on the path ({where})")
            (grads,) = torch.autograd.grad(values.sum(), points)  # [chunk + extra, pos, d_model]
        if extra:
            f_input, f_baseline = _endpoints(values.detach()[len(a) :], f_input, f_baseline)
            grads = grads[: len(a)]
        check_finite(grads, f"the gradient on the path ({where})")
        # gradient . velocity per token, weighted: the path integral's per-token terms
        total += torch.einsum("c,cp->p", w, (grads.double() * velocity.double()).sum(-1))
        passes += 1
    if ends and not fold:  # no room in the last chunk: a pass, without gradients, of the unknown ones
        f_input, f_baseline = _endpoints(objective.values(torch.cat(ends), batch_size=len(ends)), f_input, f_baseline)
        passes += 1
    assert f_input is not None and f_baseline is not None
    scores = total
    delta = float(scores.sum()) - (f_input - f_baseline)
    return IntegratedRun(
        scores.cpu(), steps, delta, relative(delta, f_input, f_baseline), passes, f_input, f_baseline
    )


def _endpoints(values: torch.Tensor, f_input: float | None, f_baseline: float | None) -> tuple[float, float]:
    """Fill the unknown endpoint values, in the order the extra rows were added (input, baseline)."""
    got = iter(values.double().tolist())
    return (
        next(got) if f_input is None else f_input,
        next(got) if f_baseline is None else f_baseline,
    )
