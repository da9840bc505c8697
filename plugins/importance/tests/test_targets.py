"""Target values against direct model calls, and the typed errors for bad requests."""

from __future__ import annotations

import pytest
import torch

from lmlens import InvalidParamsError
from lmlens_importance.params import ImportanceParams
from lmlens_importance.targets import build_objective

TEXT = "The cat sat"


def _value(objective) -> float:
    return float(objective.values(objective.embeds, batch_size=1)[0])


def test_next_token_is_the_top_prediction_log_probability(float64_models, make_trace):
    loaded = float64_models["gpt2"]
    trace = make_trace(loaded, TEXT)
    objective = build_objective(trace, ImportanceParams(target="next_token"))
    with torch.no_grad():
        logp = loaded.model(trace.input_ids).logits[0, -1].log_softmax(-1)
    assert objective.token_ids == [int(logp.argmax())]
    assert _value(objective) == pytest.approx(float(logp.max()), abs=1e-10)


def test_next_token_can_name_its_token(float64_models, make_trace):
    loaded = float64_models["llama"]
    trace = make_trace(loaded, TEXT)
    objective = build_objective(trace, ImportanceParams(target="next_token", target_token="!"))
    with torch.no_grad():
        logp = loaded.model(trace.input_ids).logits[0, -1].log_softmax(-1)
    token = loaded.tokenizer.convert_tokens_to_ids("!")
    assert _value(objective) == pytest.approx(float(logp[token]), abs=1e-10)


def test_continuation_sums_its_tokens_log_probabilities(float64_models, make_trace):
    loaded = float64_models["gpt2"]
    trace = make_trace(loaded, TEXT)
    objective = build_objective(trace, ImportanceParams(target="continuation", continuation=" on"))
    cont = loaded.tokenizer(" on", add_special_tokens=False)["input_ids"]
    full = torch.cat([trace.input_ids, torch.tensor([cont])], dim=1)
    n = trace.input_ids.shape[1]
    with torch.no_grad():
        logp = loaded.model(full).logits[0].log_softmax(-1)
    expected = sum(float(logp[n - 1 + i, t]) for i, t in enumerate(cont))
    assert len(cont) == 3  # byte tokens: a real sum
    assert _value(objective) == pytest.approx(expected, abs=1e-10)


def test_loss_matches_transformers_loss(float64_models, make_trace):
    loaded = float64_models["llama"]
    trace = make_trace(loaded, TEXT)
    objective = build_objective(trace, ImportanceParams(target="loss"))
    with torch.no_grad():
        loss = loaded.model(trace.input_ids, labels=trace.input_ids).loss
    # transformers computes its loss in float32 whatever the model dtype
    assert _value(objective) == pytest.approx(float(loss), rel=1e-6)


def test_similarity_is_cosine_of_mean_pooled_states(float64_models, make_trace):
    loaded = float64_models["bert"]
    trace = make_trace(loaded, TEXT)
    objective = build_objective(trace, ImportanceParams(other_text="a dog ran"))
    assert objective.kind == "similarity"  # auto on an encoder
    tok = loaded.tokenizer
    with torch.no_grad():
        a = loaded.model(**tok(TEXT, return_tensors="pt")).last_hidden_state.mean(1)
        b = loaded.model(**tok("a dog ran", return_tensors="pt")).last_hidden_state.mean(1)
    assert _value(objective) == pytest.approx(float(torch.cosine_similarity(a, b)), abs=1e-10)


@pytest.mark.parametrize(
    ("family", "params", "field"),
    [
        ("bert", {"target": "next_token"}, "target"),
        ("bert", {}, "other_text"),
        ("gpt2", {"target": "similarity"}, "other_text"),
        ("gpt2", {"target": "continuation"}, "continuation"),
        ("gpt2", {"target_token": "two tokens"}, "target_token"),
        ("gpt2", {"steps": 0}, "steps"),
        ("gpt2", {"rule": "riemann_left", "steps": 1}, "steps"),
        ("gpt2", {"adaptive": True, "steps": 64, "max_steps": 32}, "max_steps"),
        ("gpt2", {"tolerance": 0}, "tolerance"),
        ("gpt2", {"window": 2, "stride": 3}, "stride"),
        ("gpt2", {"fractions": [0.0]}, "fractions"),
        ("gpt2", {"baseline": "text"}, "baseline_text"),
        ("gpt2", {"path": "spherical"}, "path"),
        ("gpt2", {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_params_are_typed_errors(tiny_analyzer, family, params, field):
    with pytest.raises(InvalidParamsError) as info:
        tiny_analyzer(family).analyze(TEXT, methods=["importance"], params={"importance": params})
    assert info.value.code == "invalid_params"
    assert info.value.field == f"params.importance.{field}"


@pytest.mark.parametrize("params", [{"method": "shap"}, {"unknown": 1}, {"steps": "many"}])
def test_malformed_params_are_typed_errors(tiny_analyzer, params):
    with pytest.raises(InvalidParamsError) as info:
        tiny_analyzer("gpt2").analyze(TEXT, methods=["importance"], params={"importance": params})
    assert info.value.field == "params.importance"


def test_loss_needs_two_tokens(tiny_analyzer):
    with pytest.raises(InvalidParamsError):
        tiny_analyzer("gpt2").analyze("a", methods=["importance"], params={"importance": {"target": "loss"}})


@pytest.mark.parametrize("target", ["next_token", "continuation", "loss"])
def test_the_lm_head_gets_a_contiguous_input(float64_models, make_trace, target):
    """A strided slice of positions makes the head a batched matmul that reads the whole
    weight once per row (issue 13); the targets hand it a contiguous copy."""
    loaded = float64_models["llama"]
    objective = build_objective(make_trace(loaded, TEXT), ImportanceParams(target=target, continuation=" on it"))
    head = loaded.model.get_submodule(loaded.arch.lm_head)
    seen: list[bool] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    try:
        points = objective.embeds.expand(3, -1, -1).clone().requires_grad_(True)
        values = objective(points, grad=True)
        torch.autograd.grad(values.sum(), points)
    finally:
        handle.remove()
    assert seen == [True] and values.shape == (3,)
