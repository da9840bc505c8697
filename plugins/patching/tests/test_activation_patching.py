"""activation_patching: the batched passes against hand loops of single-patch passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens import InvalidParamsError, Need, Patch, UnsupportedArchitectureError, run_forward
from lmlens_patching import ActivationPatchingResult, NoLanguageModelHeadError
from lmlens_patching.causal import CleanRun, Restore, run_restorations
from lmlens_patching.targets import Target, encode

# the tiny models tokenize byte by byte: equal lengths, and "a" / "b" are single tokens
CLEAN = "The cat sat"
CORRUPTED = "The dog sat"
PARAMS = {"corrupted_text": CORRUPTED, "correct": "a", "wrong": "b"}


def reference_metric(loaded, logits: torch.Tensor, correct: str, wrong: str | None) -> float:
    """From a [1, pos, vocab] logits tensor, in float64, written out independently."""
    c = loaded.tokenizer.convert_tokens_to_ids(correct)
    last = logits[0, -1].double()
    if wrong is None:
        return float(last[c] - torch.logsumexp(last, 0))
    return float(last[c] - last[loaded.tokenizer.convert_tokens_to_ids(wrong)])


def plain_metric(loaded, text: str, correct: str = "a", wrong: str | None = "b") -> float:
    with torch.no_grad():  # the model itself, no kernel in between
        logits = loaded.model(encode(loaded, text)).logits
    return reference_metric(loaded, logits, correct, wrong)


HAND_GRIDS: dict[tuple[str, str, str | None], np.ndarray] = {}


def hand_resid_grid(loaded, correct: str = "a", wrong: str | None = "b") -> np.ndarray:
    """One pass per (layer, position), each with one patch: the un-batched reference (memoised per model)."""
    key = (loaded.name, correct, wrong)
    if key not in HAND_GRIDS:
        HAND_GRIDS[key] = _hand_resid_grid(loaded, correct, wrong)
    return HAND_GRIDS[key]


def _hand_resid_grid(loaded, correct: str, wrong: str | None) -> np.ndarray:
    clean_ids, corrupted_ids = encode(loaded, CLEAN), encode(loaded, CORRUPTED)
    n_layers, n_pos = loaded.info.n_layers, clean_ids.shape[1]
    saved = run_forward(loaded, [Need(f"blocks.{layer}.resid_pre") for layer in range(n_layers)], input_ids=clean_ids)
    grid = np.zeros((n_layers, n_pos))
    for layer in range(n_layers):
        clean = saved[f"blocks.{layer}.resid_pre"].clone()
        for pos in range(n_pos):

            def swap(x: torch.Tensor, ctx, clean=clean, pos=pos) -> torch.Tensor:
                x = x.clone()
                x[:, pos] = clean[:, pos]
                return x

            got = run_forward(loaded, [Need("logits")], input_ids=corrupted_ids,
                              patches=[Patch(f"blocks.{layer}.resid_pre", swap)])
            grid[layer, pos] = reference_metric(loaded, got["logits"], correct, wrong)
    return grid


def hand_head_grid(loaded) -> np.ndarray:
    clean_ids, corrupted_ids = encode(loaded, CLEAN), encode(loaded, CORRUPTED)
    n_layers, n_heads = loaded.info.n_layers, loaded.info.n_heads
    saved = run_forward(loaded, [Need(f"blocks.{layer}.attn.heads") for layer in range(n_layers)],
                        input_ids=clean_ids)
    grid = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        clean = saved[f"blocks.{layer}.attn.heads"].clone()
        for head in range(n_heads):

            def swap(x: torch.Tensor, ctx, clean=clean, head=head) -> torch.Tensor:
                x = x.clone()
                x[:, :, head] = clean[:, :, head]
                return x

            got = run_forward(loaded, [Need("logits")], input_ids=corrupted_ids,
                              patches=[Patch(f"blocks.{layer}.attn.heads", swap)])
            grid[layer, head] = reference_metric(loaded, got["logits"], "a", "b")
    return grid


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("batch_size", [0, 5])  # 5 rows: passes that span two layers
def test_batched_grid_equals_a_hand_loop(tiny_analyzer, family: str, batch_size: int) -> None:
    analyzer = tiny_analyzer(family)
    loaded = analyzer.model
    params = {"activation_patching": {**PARAMS, "batch_size": batch_size}}
    result = analyzer.analyze(CLEAN, "activation_patching", params, use_cache=False)
    ap = result.methods["activation_patching"]
    assert isinstance(ap, ActivationPatchingResult)
    n_pos = len(CLEAN.encode())
    assert ap.resid.shape == (loaded.info.n_layers, n_pos) and ap.layers == [0, 1]
    np.testing.assert_allclose(ap.clean, plain_metric(loaded, CLEAN), atol=1e-5)
    np.testing.assert_allclose(ap.corrupted, plain_metric(loaded, CORRUPTED), atol=1e-5)
    expected = hand_resid_grid(loaded)
    np.testing.assert_allclose(ap.resid, expected, atol=1e-5, rtol=0)
    normalised = (expected - ap.corrupted) / (ap.clean - ap.corrupted)
    np.testing.assert_allclose(ap.resid_normalised, normalised, atol=1e-4, rtol=1e-5)
    # the positions where the texts agree, below every difference, change nothing
    np.testing.assert_allclose(ap.resid[0, :4], ap.corrupted, atol=1e-5)
    if batch_size:
        assert ap.n_passes == 2 + -(-loaded.info.n_layers * n_pos // batch_size)


def test_log_prob_target_equals_a_hand_loop(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("gpt2")
    params = {"corrupted_text": CORRUPTED, "correct": "t", "layers": [-1], "batch_size": 7}
    ap = analyzer.analyze(CLEAN, "activation_patching", {"activation_patching": params}).methods["activation_patching"]
    assert ap.metric == "logprob" and ap.layers == [1] and ap.wrong_id is None
    expected = hand_resid_grid(analyzer.model, correct="t", wrong=None)[1:]
    np.testing.assert_allclose(ap.resid, expected, atol=1e-5, rtol=0)
    assert (ap.resid <= 0).all()  # log-probabilities


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_restoring_every_position_gives_the_clean_metric(tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    clean_ids, corrupted_ids = encode(loaded, CLEAN), encode(loaded, CORRUPTED)
    n_pos, n_layers = clean_ids.shape[1], loaded.info.n_layers
    saved = run_forward(loaded, [Need(f"blocks.{layer}.resid_pre") for layer in range(n_layers)], input_ids=clean_ids)
    clean_run = CleanRun(resid={layer: saved[f"blocks.{layer}.resid_pre"] for layer in range(n_layers)}, heads={})
    target = Target("logit_diff", loaded.tokenizer.convert_tokens_to_ids("a"),
                    loaded.tokenizer.convert_tokens_to_ids("b"))
    every = tuple(range(n_pos))
    rows = [Restore("resid", layer, every) for layer in range(n_layers)]
    values, passes = run_restorations(loaded, corrupted_ids, clean_run, rows, target, batch_size=8)
    clean, corrupted = plain_metric(loaded, CLEAN), plain_metric(loaded, CORRUPTED)
    assert abs(clean - corrupted) > 1e-3  # otherwise the check below says nothing
    np.testing.assert_allclose(values, clean, atol=1e-5)
    np.testing.assert_allclose((values - corrupted) / (clean - corrupted), 1.0, atol=1e-4)
    assert passes == 1


def test_per_head_grid_equals_a_hand_loop(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("llama")
    params = {**PARAMS, "per_head": True, "batch_size": 3}
    ap = analyzer.analyze(CLEAN, "activation_patching", {"activation_patching": params}).methods["activation_patching"]
    assert ap.heads is not None and ap.heads.shape == (2, analyzer.model.info.n_heads)
    np.testing.assert_allclose(ap.heads, hand_head_grid(analyzer.model), atol=1e-5, rtol=0)
    assert ap.heads_normalised is not None
    np.testing.assert_allclose(ap.heads_normalised, (ap.heads - ap.corrupted) / (ap.clean - ap.corrupted),
                               atol=1e-4, rtol=1e-5)


def test_unequal_lengths_are_refused_with_both_lengths(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("gpt2")
    params = {**PARAMS, "corrupted_text": "The dog sat!"}
    with pytest.raises(InvalidParamsError, match=r"11 tokens.*12 tokens") as caught:
        analyzer.analyze(CLEAN, "activation_patching", {"activation_patching": params})
    assert caught.value.code == "invalid_params" and caught.value.field == "params.activation_patching.corrupted_text"


@pytest.mark.parametrize(
    ("change", "match", "field"),
    [
        ({"correct": "ab"}, r"exactly one token.*2 tokens", "correct"),
        ({"wrong": ""}, r"exactly one token.*0 tokens", "wrong"),
        ({"wrong": "a"}, "same token", "wrong"),
        ({"layers": [2]}, "out of range", "layers"),
        ({"corrupted_text": "  "}, "must not be empty", "corrupted_text"),
        ({"batch_size": -1}, "between", "batch_size"),
    ],
)
def test_bad_params_are_refused(tiny_analyzer, change: dict, match: str, field: str) -> None:
    analyzer = tiny_analyzer("gpt2")
    with pytest.raises(InvalidParamsError, match=match) as caught:
        analyzer.analyze(CLEAN, "activation_patching", {"activation_patching": {**PARAMS, **change}})
    assert caught.value.field == f"params.activation_patching.{field}"


def test_missing_corrupted_text_is_invalid_params(tiny_analyzer) -> None:
    with pytest.raises(InvalidParamsError, match="corrupted_text"):
        tiny_analyzer("gpt2").analyze(CLEAN, "activation_patching", {"activation_patching": {"correct": "a"}})


def test_encoders_are_refused_with_a_typed_error(tiny_analyzer) -> None:
    with pytest.raises(NoLanguageModelHeadError, match="no language-model head") as caught:
        tiny_analyzer("bert").analyze(CLEAN, "activation_patching", {"activation_patching": PARAMS})
    assert isinstance(caught.value, UnsupportedArchitectureError)
    assert caught.value.code == "no_lm_head" and caught.value.http_status == 422
