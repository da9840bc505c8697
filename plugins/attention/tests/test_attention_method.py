"""The ``attention`` method against the model's own ``output_attentions``, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens import AnalysisResult, InvalidParamsError, LoadedModel, wire
from lmlens.testing import transformers_eager
from lmlens_attention import AttentionResult

TEXT = "Attention is all you need, said the paper; attention is what we measure."


def reference_attentions(loaded: LoadedModel, text: str) -> np.ndarray:
    """[layer, head, q, k] float64 straight from the model, with transformers' own eager code."""
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    out = transformers_eager(loaded, ids)
    return torch.stack([a[0] for a in out.attentions]).double().numpy()


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_fields_match_an_independent_float64_computation(tiny_analyzer, tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    result = tiny_analyzer(family).analyze(TEXT, methods=["attention"], params={"attention": {"top_k": 4}})
    att = result.methods["attention"]
    assert isinstance(att, AttentionResult)
    ref = reference_attentions(loaded, TEXT)  # [layer, head, q, k]
    n_layers, n_heads, n, _ = ref.shape
    assert att.layers == list(range(n_layers)) and att.heads == list(range(n_heads))
    np.testing.assert_allclose(att.patterns, ref, atol=1e-6)

    entropy = -(ref * np.log(np.where(ref > 0, ref, 1.0))).sum(-1).mean(-1)
    np.testing.assert_allclose(att.entropy, entropy, rtol=1e-4, atol=1e-5)
    q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    distance = (ref * np.abs(q - k)).sum(-1).mean(-1)
    np.testing.assert_allclose(att.mean_distance, distance, rtol=1e-4, atol=1e-5)
    free = 1 if loaded.info.causal else 0
    np.testing.assert_allclose(att.sink_mass, ref[..., free:, 0].mean(-1), rtol=1e-5, atol=1e-6)

    order = np.argsort(-ref, axis=-1, kind="stable")[..., :4]
    weights = np.take_along_axis(ref, order, -1)
    np.testing.assert_allclose(att.top_weights, weights, atol=1e-6)
    picked = np.take_along_axis(ref, att.top_keys.astype(np.int64), -1)  # ties may pick either key
    np.testing.assert_allclose(picked, weights, atol=1e-6)
    assert att.top_keys.dtype == np.int32 and att.top_keys.shape == (n_layers, n_heads, n, 4)


def test_subset_of_layers_and_heads(tiny_analyzer, tiny_models) -> None:
    params = {"attention": {"layers": [-1], "heads": [2, 0], "top_k": 2}}
    att = tiny_analyzer("llama").analyze(TEXT, methods=["attention"], params=params).methods["attention"]
    ref = reference_attentions(tiny_models["llama"], TEXT)
    assert att.layers == [1] and att.heads == [2, 0]
    np.testing.assert_allclose(att.patterns, ref[[1]][:, [2, 0]], atol=1e-6)
    assert att.entropy.shape == att.sink_mass.shape == att.mean_distance.shape == (1, 2)
    assert att.top_keys.shape[:2] == (1, 2)


def test_without_patterns_the_summaries_remain(tiny_analyzer) -> None:
    att = tiny_analyzer("gpt2").analyze(TEXT, methods=["attention"], params={"attention": {"patterns": False}})
    att = att.methods["attention"]
    assert att.patterns is None
    assert att.entropy.shape == (2, 4) and att.top_weights is not None
    bare = tiny_analyzer("gpt2").analyze(TEXT, methods=["attention"], params={"attention": {"top_k": 0}})
    bare = bare.methods["attention"]
    assert bare.top_keys is None and bare.top_weights is None
    np.testing.assert_array_equal(bare.entropy, att.entropy)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"layers": [7]}, "params.attention.layers"),
        ({"heads": [-9]}, "params.attention.heads"),
        ({"top_k": 65}, "params.attention.top_k"),
        ({"layers": []}, "params.attention.layers"),
    ],
)
def test_bad_params_are_typed_errors(tiny_analyzer, params: dict, field: str) -> None:
    with pytest.raises(InvalidParamsError) as info:
        tiny_analyzer("gpt2").analyze(TEXT, methods=["attention"], params={"attention": params})
    assert info.value.code == "invalid_params" and info.value.field == field


def test_result_survives_json_and_msgpack(tiny_analyzer) -> None:
    result = tiny_analyzer("bert").analyze(TEXT, methods=["attention"])
    typed = wire.result_type([AttentionResult])
    for encoded, decode in ((wire.to_msgpack(result), wire.from_msgpack), (wire.to_json(result), wire.from_json)):
        back = decode(encoded, typed)
        assert isinstance(back, AnalysisResult)
        att, orig = back.methods["attention"], result.methods["attention"]
        np.testing.assert_array_equal(att.patterns, orig.patterns)
        np.testing.assert_array_equal(att.top_keys, orig.top_keys)
        assert att.top_keys.dtype == np.int32


def test_every_result_type_round_trips_and_has_a_schema(tiny_analyzer) -> None:
    from lmlens_attention import METHODS

    methods = [m.name for m in METHODS]
    params = {"attention_rollout": {"flow": True, "per_layer": True}}
    result = tiny_analyzer("llama").analyze("Round trip.", methods=methods, params=params)
    typed = wire.result_type([m.result for m in METHODS])
    back = wire.from_msgpack(wire.to_msgpack(result), typed)
    from_json = wire.from_json(wire.to_json(result), typed)
    for name in methods:
        for got in (back.methods[name], from_json.methods[name]):
            assert type(got) is type(result.methods[name])
            for field in got.__struct_fields__:
                a, b = getattr(got, field), getattr(result.methods[name], field)
                if isinstance(b, np.ndarray):
                    np.testing.assert_allclose(a, b, rtol=1e-6)
                else:
                    assert a == b
    _, components = wire.json_schema(typed)
    assert {m.result.__name__ for m in METHODS} <= set(components)


def test_cached_score_helpers_work_outside_inference_mode() -> None:
    """The reducers' cached index tensors are built once, possibly inside a capture pass."""
    from lmlens_attention import scores

    with torch.inference_mode():
        scores.mean_attention_distance(torch.full((1, 1, 5, 5), 0.2))
        scores.positional_score(torch.full((1, 1, 5, 5), 0.2), causal=False)
    p = torch.full((1, 1, 5, 5), 0.2, requires_grad=True)
    (scores.mean_attention_distance(p) + scores.positional_score(p, causal=False)).sum().backward()
    assert p.grad is not None


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_each_window_of_a_document_keeps_its_own_maps(tiny_analyzer, family: str) -> None:
    """The windows share one plan; each window's patterns must stay its own after the next runs."""
    analyzer = tiny_analyzer(family)
    document = " ".join(f"w{i}" for i in range(120))
    windows, first = [], None
    for window in analyzer.analyze_document_streaming(document, ["attention"], window_size=32, stride=16):
        windows.append(window)
        if first is None:
            first = window.result.methods["attention"].patterns.copy()
    assert first is not None and len(windows) >= 3
    kept = [w.result.methods["attention"].patterns for w in windows]
    np.testing.assert_array_equal(kept[0], first)  # not overwritten by the later windows
    assert not np.shares_memory(kept[0], kept[1])
    assert kept[1].shape[-1] == len(windows[1].result.tokens)
    assert not np.allclose(kept[0], kept[1])
