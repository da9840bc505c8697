"""Gradients against central finite differences, in float64 on tiny models."""

from __future__ import annotations

import pytest
import torch

from lmlens_importance.gradients import gradient_x_input, input_gradient, saliency
from lmlens_importance.params import ImportanceParams
from lmlens_importance.targets import build_objective

CASES = [
    ("gpt2", ImportanceParams(target="next_token")),
    ("llama", ImportanceParams(target="next_token")),
    ("llama", ImportanceParams(target="continuation", continuation=" on it")),
    ("gpt2", ImportanceParams(target="loss")),
    ("bert", ImportanceParams(target="similarity", other_text="a dog ran")),
]


def _f(objective, embeds: torch.Tensor) -> float:
    return float(objective.values(embeds, batch_size=4)[0])


@pytest.mark.parametrize(("family", "params"), CASES, ids=[f"{f}-{p.target}" for f, p in CASES])
def test_gradient_matches_central_differences(float64_models, make_trace, family, params):
    loaded = float64_models[family]
    trace = make_trace(loaded, "The cat sat")
    objective = build_objective(trace, params)
    grad = input_gradient(objective)  # [pos, d_model]
    x = objective.embeds
    gen = torch.Generator().manual_seed(1)
    h, rel = 1e-5, 1e-6
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        v /= v.norm()
        fd = (_f(objective, x + h * v) - _f(objective, x - h * v)) / (2 * h)
        assert float((grad * v[0]).sum()) == pytest.approx(fd, rel=rel, abs=1e-9)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gradient_x_input_is_the_derivative_of_scaling_each_token(float64_models, make_trace, family):
    """grad_p . x_p = d/dt f(x with token p scaled by t) at t = 1."""
    loaded = float64_models[family]
    trace = make_trace(loaded, "a cat")
    objective = build_objective(trace, ImportanceParams(target="next_token"))
    scores = gradient_x_input(objective)  # [pos]
    x = objective.embeds
    h, rel = 1e-5, 1e-6
    for p in range(x.shape[1]):
        up, down = x.clone(), x.clone()
        up[0, p] *= 1 + h
        down[0, p] *= 1 - h
        fd = (_f(objective, up) - _f(objective, down)) / (2 * h)
        assert float(scores[p]) == pytest.approx(fd, rel=rel, abs=1e-7)
    norms = saliency(objective)
    assert torch.allclose(norms, input_gradient(objective).norm(dim=-1))


def test_attributions_leave_the_frozen_weights_without_gradients(float64_models, make_trace):
    loaded = float64_models["llama"]
    objective = build_objective(make_trace(loaded, "a cat"), ImportanceParams(target="next_token"))
    gradient_x_input(objective)
    params = list(loaded.model.parameters())
    assert not any(p.requires_grad for p in params) and all(p.grad is None for p in params)
