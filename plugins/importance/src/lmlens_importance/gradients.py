"""Saliency (gradient norm) and gradient x input at the text itself: one backward pass."""

from __future__ import annotations

import torch

from lmlens_importance.targets import Objective, check_finite


def input_gradient(objective: Objective) -> torch.Tensor:
    """d f / d embeddings at the input: [pos, d_model]."""
    with torch.inference_mode(False), torch.enable_grad():
        point = objective.embeds.clone().requires_grad_(True)  # [1, pos, d_model]
        value = objective(point, grad=True)  # [1]
        check_finite(value.detach(), "the target")
        (grad,) = torch.autograd.grad(value.sum(), point)
    check_finite(grad, "the gradient")
    first: torch.Tensor = grad[0]
    return first


def saliency(objective: Objective) -> torch.Tensor:
    """[pos] L2 norm of the gradient per token (unsigned)."""
    norms: torch.Tensor = input_gradient(objective).double().norm(dim=-1)
    return norms.cpu()


def gradient_x_input(objective: Objective) -> torch.Tensor:
    """[pos] sum over d_model of gradient * embedding (signed, first-order Taylor term)."""
    grad = input_gradient(objective)
    return (grad.double() * objective.embeds[0].double()).sum(-1).cpu()
