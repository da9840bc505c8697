"""steering: the shift it writes, the distribution it reports, the vector it builds, greedy generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens import InvalidParamsError, Need, Patch, run_forward
from lmlens_patching import NoLanguageModelHeadError, SteeringResult
from lmlens_patching.steer import steering_patch
from lmlens_patching.targets import encode

TEXT = "The cat sat on the"


def softmax(logits: np.ndarray) -> np.ndarray:
    """numpy, float64: an independent reference for the method's torch code."""
    e = np.exp(logits - logits.max())
    return e / e.sum()


def vector_for(loaded, seed: int = 0) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(loaded.info.d_model, generator=generator, dtype=torch.float64).tolist()


def steer(analyzer, **params) -> SteeringResult:
    result = analyzer.analyze(TEXT, "steering", {"steering": params}, use_cache=False).methods["steering"]
    assert isinstance(result, SteeringResult)
    return result


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_next_layer_input_moves_by_exactly_coefficient_times_vector(tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    ids = encode(loaded, TEXT)
    vector = torch.tensor(vector_for(loaded))
    plain = run_forward(loaded, [Need("blocks.1.resid_pre")], input_ids=ids)["blocks.1.resid_pre"]
    patch = steering_patch("blocks.0.resid_post", vector, 2.5)
    steered = run_forward(loaded, [Need("blocks.1.resid_pre")], input_ids=ids, patches=[patch])["blocks.1.resid_pre"]
    torch.testing.assert_close((steered - plain).double(), (2.5 * vector).expand_as(plain).double(),
                               atol=1e-5, rtol=0)


def manual_last_logits(loaded, vector: list[float], coefficient: float) -> np.ndarray:
    """tiny-gpt2 steered at its last block's output: ln_f and the LM head applied by hand."""
    ids = encode(loaded, TEXT)
    resid = run_forward(loaded, [Need("blocks.1.resid_post")], input_ids=ids)["blocks.1.resid_post"]
    resid = resid[0, -1].double() + coefficient * torch.tensor(vector, dtype=torch.float64)
    ln_f, head = loaded.model.transformer.ln_f, loaded.model.lm_head
    normed = torch.nn.functional.layer_norm(resid, ln_f.normalized_shape, ln_f.weight.double(), ln_f.bias.double(),
                                            ln_f.eps)
    return (normed @ head.weight.double().T).numpy()


def test_next_token_distribution_matches_a_manual_computation(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("gpt2")
    loaded = analyzer.model
    vector = vector_for(loaded, seed=1)
    result = steer(analyzer, layer=-1, coefficient=3.0, vector=vector, top_k=5)
    assert result.point == "blocks.1.resid_post" and result.source == "vector"
    np.testing.assert_allclose(result.vector, vector, rtol=1e-6)
    with torch.no_grad():
        plain_logits = loaded.model(encode(loaded, TEXT)).logits[0, -1].double().numpy()
    p_before, p_after = softmax(plain_logits), softmax(manual_last_logits(loaded, vector, 3.0))
    assert [p.id for p in result.top_before] == list(np.argsort(-p_before)[:5])
    assert [p.id for p in result.top_after] == list(np.argsort(-p_after)[:5])
    for p in [*result.top_before, *result.top_after]:
        assert p.before == pytest.approx(p_before[p.id], abs=1e-5)
        assert p.after == pytest.approx(p_after[p.id], abs=1e-5)
        assert p.token == loaded.tokenizer.decode([p.id])
    kl = float(np.sum(p_before * (np.log(p_before) - np.log(p_after))))
    assert result.kl == pytest.approx(kl, rel=1e-3, abs=1e-6)
    assert result.kl > 1e-3  # the vector did move the distribution
    assert result.continuation_before is None  # generate=0


def test_resid_pre_steers_the_block_input(tiny_models, tiny_analyzer) -> None:
    analyzer = tiny_analyzer("llama")
    loaded = analyzer.model
    vector = vector_for(loaded, seed=2)
    result = steer(analyzer, layer=1, point="resid_pre", coefficient=0.5, vector=vector)
    # the same shift written at the output of block 0 is the same intervention
    same = Patch("blocks.0.resid_post", lambda x, ctx: x + 0.5 * torch.tensor(vector, dtype=x.dtype))
    logits = run_forward(loaded, [Need("logits")], input_ids=encode(loaded, TEXT), patches=[same])["logits"]
    probs = torch.softmax(logits[0, -1].double(), -1)
    for p in result.top_after:
        assert p.after == pytest.approx(float(probs[p.id]), abs=1e-5)


def test_contrastive_vector_is_the_difference_of_means(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("gpt2")
    loaded = analyzer.model
    positive, negative = "I love this, wonderful!", "I hate it"
    result = steer(analyzer, layer=0, positive=positive, negative=negative, coefficient=1.0)
    means = []
    for text in (positive, negative):
        got = run_forward(loaded, [Need("blocks.0.resid_post")], input_ids=encode(loaded, text))
        means.append(got["blocks.0.resid_post"][0].double().mean(0))
    expected = (means[0] - means[1]).numpy()
    assert result.source == "contrastive"
    np.testing.assert_allclose(result.vector, expected, rtol=1e-5, atol=1e-6)
    assert result.vector_norm == pytest.approx(float(np.linalg.norm(expected)), rel=1e-5)


def hand_greedy(loaded, steps: int, patches=()) -> list[int]:
    ids = encode(loaded, TEXT)
    out: list[int] = []
    for _ in range(steps):
        if patches:
            logits = run_forward(loaded, [Need("logits")], input_ids=ids, patches=patches)["logits"]
        else:
            with torch.no_grad():
                logits = loaded.model(ids).logits
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == loaded.tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def test_generation_with_coefficient_zero_is_plain_greedy(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("llama")
    loaded = analyzer.model
    result = steer(analyzer, layer=0, coefficient=0.0, vector=vector_for(loaded), generate=8)
    expected = hand_greedy(loaded, 8)
    assert result.continuation_ids_before == expected
    assert result.continuation_ids_after == expected
    assert result.continuation_after == loaded.tokenizer.decode(expected)
    assert result.kl == pytest.approx(0.0, abs=1e-9)


def test_steered_generation_follows_the_steered_model(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("gpt2")
    loaded = analyzer.model
    vector = vector_for(loaded, seed=3)
    result = steer(analyzer, layer=0, coefficient=4.0, vector=vector, generate=6)
    shift = 4.0 * torch.tensor(vector)
    same = Patch("blocks.1.resid_pre", lambda x, ctx: x + shift.to(x.dtype))  # the same place, another hook
    assert result.continuation_ids_after == hand_greedy(loaded, 6, [same])
    assert result.continuation_ids_before == hand_greedy(loaded, 6)
    assert result.continuation_ids_after != result.continuation_ids_before  # a strong vector changes the text


@pytest.mark.parametrize(
    ("params", "match", "field"),
    [
        ({"layer": 0}, "either vector", "vector"),
        ({"layer": 0, "vector": [1.0] * 3}, "has 3 numbers; .*d_model = 64", "vector"),
        ({"layer": 0, "vector": [float("nan")] * 64}, "NaN", "vector"),
        ({"layer": 0, "vector": [0.0] * 64, "positive": "a", "negative": "b"}, "not both", "vector"),
        ({"layer": 0, "positive": "good"}, "negative is missing", "negative"),
        ({"layer": 5, "positive": "a", "negative": "b"}, "out of range", "layer"),
        ({"layer": 0, "positive": "a", "negative": "b", "generate": 65}, "between 0 and 64", "generate"),
        ({"layer": 0, "positive": "a", "negative": "b", "top_k": 0}, "between 1 and 100", "top_k"),
        ({"layer": 0, "positive": "a", "negative": "b", "coefficient": float("inf")}, "finite", "coefficient"),
    ],
)
def test_bad_params_are_refused(tiny_analyzer, params: dict, match: str, field: str) -> None:
    with pytest.raises(InvalidParamsError, match=match) as caught:
        tiny_analyzer("gpt2").analyze(TEXT, "steering", {"steering": params})
    assert caught.value.code == "invalid_params" and caught.value.field == f"params.steering.{field}"


def test_encoders_are_refused(tiny_analyzer) -> None:
    with pytest.raises(NoLanguageModelHeadError):
        tiny_analyzer("bert").analyze(TEXT, "steering", {"steering": {"layer": 0, "vector": [0.0] * 64}})
