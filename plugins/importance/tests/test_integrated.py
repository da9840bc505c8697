"""Integrated gradients: against a plain reference loop, completeness, convergence, flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens import MethodFailedError, wire
from lmlens_importance import NonFiniteAttributionError
from lmlens_importance.baselines import reference_embeds
from lmlens_importance.integrated import endpoint_values, integrated_gradients
from lmlens_importance.params import ImportanceParams
from lmlens_importance.paths import path_points
from lmlens_importance.quadrature import path_nodes
from lmlens_importance.targets import build_objective, special_positions

TEXT = "The cat sat on the mat"


def _setup(loaded, make_trace, baseline="zero", text=TEXT):
    trace = make_trace(loaded, text)
    objective = build_objective(trace, ImportanceParams(target="next_token"))
    special = special_positions(loaded, trace)
    base, _ = reference_embeds(loaded, objective.embeds, special, baseline)
    return objective, base, special


def _run(objective, base, steps, rule="gauss_legendre", spacing="linear", path="straight", batch=64):
    f_x, f_b = endpoint_values(objective, base)
    return integrated_gradients(
        objective,
        base,
        steps=steps,
        rule=rule,
        spacing=spacing,
        path=path,
        batch_size=batch,
        f_input=f_x,
        f_baseline=f_b,
    )


def test_chunked_ig_equals_a_plain_reference_loop(float64_models, make_trace):
    """One alpha at a time straight through the HF model: no chunking, no run_forward."""
    loaded = float64_models["gpt2"]
    model = loaded.model
    objective, base, _ = _setup(loaded, make_trace)
    token = objective.token_ids[0]
    ours = _run(objective, base, steps=16, batch=5)  # chunks of 5, 5, 5, 1
    x = objective.embeds
    nodes, weights = np.polynomial.legendre.leggauss(16)
    expected = torch.zeros(x.shape[1], dtype=torch.float64)
    for node, weight in zip(nodes, weights, strict=True):
        point = (base + 0.5 * (node + 1) * (x - base)).requires_grad_(True)
        value = model(inputs_embeds=point).logits[0, -1].log_softmax(-1)[token]
        (grad,) = torch.autograd.grad(value, point)
        expected += 0.5 * weight * (grad[0] * (x - base)[0]).sum(-1)
    assert ours.passes == 4
    assert torch.allclose(ours.scores, expected, rtol=1e-9, atol=1e-12)


def test_delta_shrinks_with_steps_on_a_smooth_model(tiny_models, make_trace):
    objective, base, _ = _setup(tiny_models["gpt2"], make_trace)
    for rule in ("riemann_trapezoid", "gauss_legendre"):
        rels = [_run(objective, base, steps=s, rule=rule).relative_delta for s in (4, 16, 64, 256)]
        assert rels[-1] < 0.01, (rule, rels)
        if rule != "gauss_legendre":  # Gauss-Legendre hits float32 rounding by 16 steps
            assert rels[0] > rels[1] > rels[2] > rels[3], (rule, rels)


def test_completeness_holds_on_the_spherical_path(float64_models, make_trace):
    """A path integral adds up to f(x) - f(b) on any path: checks the velocity formula."""
    # the tiny models' pad embedding is zero (padding_idx), so the baseline is [MASK]
    objective, base, _ = _setup(float64_models["llama"], make_trace, baseline="mask")
    run = _run(objective, base, steps=128, path="spherical")
    assert run.relative_delta is not None and run.relative_delta < 0.01


def test_spherical_path_endpoints_norms_and_velocity():
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(1, 5, 8, generator=gen, dtype=torch.float64)
    x = torch.randn(1, 5, 8, generator=gen, dtype=torch.float64) * 3
    x[0, 2] = b[0, 2]  # a held token: no turn, no velocity
    alphas = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    points, velocity = path_points("spherical", b, x, alphas)
    assert torch.allclose(points[0], b[0]) and torch.allclose(points[2], x[0])
    expected_norm = 0.7 * b.norm(dim=-1) + 0.3 * x.norm(dim=-1)
    assert torch.allclose(points[1].norm(dim=-1), expected_norm[0])
    h = 1e-6
    up, _ = path_points("spherical", b, x, alphas[1:2] + h)
    down, _ = path_points("spherical", b, x, alphas[1:2] - h)
    assert torch.allclose(velocity[1], (up[0] - down[0]) / (2 * h), atol=1e-6)
    assert torch.all(velocity[:, 2] == 0)


@pytest.mark.parametrize("spacing", ["linear", "geometric"])
@pytest.mark.parametrize("rule", ["gauss_legendre", "riemann_trapezoid", "riemann_middle"])
def test_quadrature_integrates_smooth_functions(rule, spacing):
    alphas, weights = path_nodes(rule, 200, spacing)
    assert alphas.min() >= 0 and alphas.max() <= 1
    assert weights.sum() == pytest.approx(1.0, rel=1e-3 if rule != "gauss_legendre" else 1e-12)
    assert float((weights * np.exp(alphas)).sum()) == pytest.approx(np.e - 1, rel=1e-3)


def test_gauss_legendre_nodes_match_captum():
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters("gausslegendre")
    ours_alphas, ours_weights = path_nodes("gauss_legendre", 17)
    assert np.allclose(ours_alphas, alphas(17)) and np.allclose(ours_weights, step_sizes(17))


def test_unreliable_result_is_flagged_everywhere(tiny_analyzer):
    analyzer = tiny_analyzer("llama")
    result = analyzer.analyze(
        TEXT,
        methods=["importance"],
        params={"importance": {
            "method": "integrated_gradients", "steps": 2, "rule": "riemann_trapezoid",
            "tolerance": 1e-6, "faithfulness": False}},
    )
    found = result.methods["importance"]
    assert found.unreliable and found.convergence.unreliable and not found.convergence.converged
    assert any("did not converge" in w for w in found.warnings)
    assert b'"unreliable":true' in wire.to_json(found)
    c = found.convergence
    assert c.delta == pytest.approx(
        float(np.float64(found.scores.astype(np.float64).sum())) - (c.f_input - c.f_baseline), rel=1e-5, abs=1e-4
    )


def test_converged_result_is_not_flagged(tiny_analyzer):
    result = tiny_analyzer("gpt2").analyze(
        TEXT, methods=["importance"], params={"importance": {"method": "integrated_gradients", "steps": 64,
                                                "faithfulness": False}}
    )
    found = result.methods["importance"]
    assert not found.unreliable and found.convergence.relative_delta < 0.05
    assert found.warnings == []


def test_adaptive_doubles_until_within_tolerance_or_cap(tiny_analyzer):
    params = {
        "method": "integrated_gradients",
        "steps": 4,
        "max_steps": 128,
        "adaptive": True,
        "tolerance": 0.02,
        "rule": "riemann_trapezoid",
        "faithfulness": False,
    }
    c = (
        tiny_analyzer("gpt2")
        .analyze(TEXT, methods=["importance"], params={"importance": params})
        .methods["importance"]
        .convergence
    )
    steps = [h.steps for h in c.history]
    assert steps == [4 * 2**i for i in range(len(steps))] and steps[-1] <= 128
    assert all(h.relative_delta > 0.02 for h in c.history[:-1])
    assert c.converged == (c.history[-1].relative_delta <= 0.02)
    assert c.steps == steps[-1]
    # tolerance far below what 128 steps reach: stops at the cap and says so
    params.update(tolerance=1e-9, max_steps=32)
    found = (
        tiny_analyzer("gpt2").analyze(TEXT, methods=["importance"], params={"importance": params}).methods["importance"]
    )
    assert [h.steps for h in found.convergence.history] == [4, 8, 16, 32]
    assert found.unreliable and not found.convergence.converged


def test_nan_in_the_model_is_a_typed_error(tiny_analyzer):
    analyzer = tiny_analyzer("gpt2")
    block = analyzer.model.modules.blocks[0]

    def poison(module, args, output):
        return (output[0] * float("nan"), *output[1:]) if isinstance(output, tuple) else output * np.nan

    handle = block.register_forward_hook(poison)
    try:
        for method in ("integrated_gradients", "gradient", "occlusion"):
            with pytest.raises(NonFiniteAttributionError) as info:
                analyzer.analyze(
                    TEXT, methods=["importance"], params={"importance": {"method": method}}, use_cache=False
                )
            assert info.value.code == "non_finite_attribution"
            assert isinstance(info.value, MethodFailedError)
            assert "NaN" in info.value.message
    finally:
        handle.remove()


@pytest.mark.parametrize("batch", [64, 5, 4])  # 64 and 5: the last chunk has room; 4: it has none
def test_endpoints_computed_on_the_way_equal_a_separate_endpoint_pass(float64_models, make_trace, batch):
    """f(input) and f(baseline) left to integrated_gradients (extra rows of the last gradient
    chunk when they fit, else a pass of their own) equal the separate two-row pass, and the
    scores are the same as with the endpoints given."""
    loaded = float64_models["gpt2"]
    objective, base, _ = _setup(loaded, make_trace)
    given = _run(objective, base, steps=16, batch=batch)
    f_x, f_b = endpoint_values(objective, base)
    found = integrated_gradients(
        objective, base, steps=16, rule="gauss_legendre", spacing="linear", batch_size=batch
    )
    known_input = integrated_gradients(
        objective, base, steps=16, rule="gauss_legendre", spacing="linear", batch_size=batch, f_input=f_x
    )
    chunks = -(-16 // batch)
    assert given.passes == chunks
    assert found.passes == chunks + (1 if batch == 4 else 0)  # 16 = 4 x 4 leaves no room for two rows
    for run in (found, known_input):
        assert run.f_input == pytest.approx(f_x, rel=1e-10, abs=1e-12)
        assert run.f_baseline == pytest.approx(f_b, rel=1e-10, abs=1e-12)
        torch.testing.assert_close(run.scores, given.scores, rtol=1e-9, atol=1e-12)
        assert run.delta == pytest.approx(given.delta, rel=1e-8, abs=1e-10)


def test_next_token_target_knows_its_value_at_the_text(float64_models, make_trace):
    """Choosing the top next token already ran the text: the objective keeps f(input) from it."""
    loaded = float64_models["gpt2"]
    objective, _, _ = _setup(loaded, make_trace)
    assert objective.f_input is not None
    assert objective.f_input == pytest.approx(float(objective.values(objective.embeds, batch_size=1)[0]), rel=1e-10)
