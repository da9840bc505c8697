"""The plugin's methods over padded batches (``Analyzer.analyze_batch``) equal one text at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens import LoadedModel

# mixed lengths: a one-token text (three with BERT's [CLS] and [SEP]), short ones, and the longest
TEXTS = [
    "a",
    "The cat sat on the mat.",
    "Attention is all you need, said the paper; attention is what we measure here, at length.",
    "ok",
    "Two words",
    "Induction: A B C A B C",
]
FIELDS = ("entropy", "sink_mass", "mean_distance", "top_weights", "top_keys", "patterns")


def reference_attentions(loaded: LoadedModel, text: str) -> np.ndarray:
    """[layer, head, q, k] float64 from the model's own output_attentions on the text alone."""
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    loaded.set_eager_attention(True)
    with torch.inference_mode():
        out = loaded.model(ids, output_attentions=True)
    return torch.stack([a[0] for a in out.attentions]).double().numpy()


def assert_same_attention(batched, alone, atol: float = 1e-5) -> None:
    for field in FIELDS:
        a, b = getattr(alone, field), getattr(batched, field)
        if a is None:
            assert b is None, field
            continue
        assert a.shape == b.shape, field
        if field == "top_keys":  # ties (zeros above a causal diagonal) may pick either key: compare weights
            continue
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=atol, err_msg=field)
    assert batched.layers == alone.layers and batched.heads == alone.heads


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("patterns", [True, False])
def test_attention_batched_equals_alone(tiny_analyzer, tiny_models, family: str, patterns: bool) -> None:
    analyzer = tiny_analyzer(family)
    params = {"attention": {"top_k": 4, "patterns": patterns}}
    batched = analyzer.analyze_batch(TEXTS, methods=["attention"], params=params, batch_size=4)
    lengths = [len(r.tokens) for r in batched]
    assert min(lengths) == (3 if family == "bert" else 1) and lengths.index(max(lengths)) == 2
    for text, result in zip(TEXTS, batched, strict=True):
        alone = analyzer.analyze(text, methods=["attention"], params=params, use_cache=False)
        got = result.methods["attention"]
        assert_same_attention(got, alone.methods["attention"])
        n = len(result.tokens)
        ref = reference_attentions(tiny_models[family], text)  # independent: the model on the text alone
        if patterns:
            assert got.patterns.shape[-2:] == (n, n)
            np.testing.assert_allclose(got.patterns, ref, atol=1e-5)
        entropy = -(ref * np.log(np.where(ref > 0, ref, 1.0))).sum(-1).mean(-1)
        np.testing.assert_allclose(got.entropy, entropy, rtol=1e-4, atol=1e-5)
        k = min(4, n)
        picked = np.take_along_axis(ref, got.top_keys.astype(np.int64), -1)
        np.testing.assert_allclose(picked, np.sort(ref, axis=-1)[..., ::-1][..., :k], atol=1e-5)


def test_the_other_methods_batched_equal_alone(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("llama")
    methods = ["attention", "attention_rollout", "head_patterns", "head_importance"]
    params = {"head_patterns": {"probe_length": 8, "probe_batch": 2}, "attention_rollout": {"per_layer": True}}
    texts = TEXTS[1:4]  # head_patterns' window scores want two tokens or more
    batched = analyzer.analyze_batch(texts, methods=methods, params=params, batch_size=8)
    for text, result in zip(texts, batched, strict=True):
        alone = analyzer.analyze(text, methods=methods, params=params, use_cache=False).methods
        got = result.methods
        assert_same_attention(got["attention"], alone["attention"])
        np.testing.assert_allclose(got["attention_rollout"].per_layer, alone["attention_rollout"].per_layer,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["head_patterns"].scores, alone["head_patterns"].scores, atol=1e-5)
        # head_importance runs its own ablation passes, per text, inside run()
        np.testing.assert_allclose(got["head_importance"].zero, alone["head_importance"].zero, atol=1e-5)
        np.testing.assert_allclose(got["head_importance"].mean, alone["head_importance"].mean, atol=1e-5)
        assert got["head_importance"].n_passes == alone["head_importance"].n_passes


@pytest.mark.real
def test_smollm2_attention_batched_equals_alone(real_analyzer) -> None:
    analyzer = real_analyzer("smollm2-135m")
    texts = ["Hi", "The committee postponed the vote.", "A small dog chased the ball across the wet grass."]
    batched = analyzer.analyze_batch(texts, methods=["attention"], batch_size=4)
    assert len(batched[0].tokens) == 1
    for text, result in zip(texts, batched, strict=True):
        alone = analyzer.analyze(text, methods=["attention"], use_cache=False)
        assert_same_attention(result.methods["attention"], alone.methods["attention"], atol=2e-5)
