"""Paths from the baseline to the input, with their velocity, for path-integrated gradients.

Completeness (sum of attributions = f(x) - f(baseline)) holds for any smooth path, so
the path is a choice about numerics and meaning, not about correctness:

- ``straight``: b + alpha (x - b), the path of integrated gradients (and Captum).
- ``spherical``: per token, the direction turns along the great circle from b to x while
  the length moves linearly from |b| to |x|. On RMSNorm models the first norm sees
  only the direction of each embedding, so a path that never shrinks the embedding
  towards zero avoids the region where the norm's 1/sqrt(eps) gain makes the
  integrand explode. It needs a baseline with non-zero embeddings (pad, mask, text).
"""

from __future__ import annotations

import torch

from lmlens import InvalidParamsError
from lmlens_importance.params import FIELD


def check_path(path: str, baseline: torch.Tensor, special: torch.Tensor) -> None:
    if path == "spherical":
        norms = baseline[0, ~special.to(baseline.device)].norm(dim=-1)
        if bool((norms < 1e-12).any()):
            raise InvalidParamsError(
                "the spherical path turns each embedding from the baseline's direction, so the "
                "baseline must not be zero; use baseline pad, mask or text",
                field=f"{FIELD}.path",
            )


def path_points(
    path: str,
    baseline: torch.Tensor,  # [1, pos, d_model]
    x: torch.Tensor,  # [1, pos, d_model]
    alphas: torch.Tensor,  # [chunk] float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(points [chunk, pos, d_model], velocity d gamma / d alpha [chunk or 1, pos, d_model])."""
    a = alphas[:, None, None]
    if path == "straight":
        diff = x - baseline
        return baseline + a.to(x.dtype) * diff, diff
    b64, x64 = baseline.double(), x.double()
    nb, nx = b64.norm(dim=-1, keepdim=True), x64.norm(dim=-1, keepdim=True)  # [1, pos, 1]
    ub, ux = b64 / nb.clamp_min(1e-30), x64 / nx.clamp_min(1e-30)
    cos = (ub * ux).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)  # [1, pos, 1]
    turning = theta > 1e-6
    sin = torch.where(turning, torch.sin(theta), torch.ones_like(theta))
    # Unit direction s(alpha) and its derivative along the great circle.
    s = (torch.sin((1 - a) * theta) * ub + torch.sin(a * theta) * ux) / sin
    ds = theta * (-torch.cos((1 - a) * theta) * ub + torch.cos(a * theta) * ux) / sin
    r = (1 - a) * nb + a * nx  # [chunk, pos, 1]
    points = torch.where(turning, r * s, b64 + a * (x64 - b64))
    velocity = torch.where(turning, (nx - nb) * s + r * ds, (x64 - b64).expand_as(points))
    return points.to(x.dtype), velocity.to(x.dtype)
