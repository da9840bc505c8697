"""head_patterns: probe inputs, the batched probe pass, its cache, corpus padding, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens import InvalidParamsError, LoadedModel
from lmlens.cache import MemoryCache
from lmlens_attention import HeadPatternsResult, classification, probes, scores

TEXT = "One two three. One two three. One two three, and then something else entirely."


def test_probe_inputs_repeat_distinct_ordinary_tokens(tiny_models) -> None:
    for family, loaded in tiny_models.items():
        probe = probes.repeated_tokens(loaded, half=16, batch=5, seed=3)
        ids = probe.input_ids  # [batch, pos]
        run = ids[:, probe.start : probe.start + 16]
        assert torch.equal(run, ids[:, probe.start + 16 : probe.start + 32])
        special = set(loaded.tokenizer.all_special_ids)
        for row in run.tolist():
            assert len(set(row)) == 16 and not special & set(row)
        assert not torch.equal(run[0], run[1])  # each sequence has its own run
        if family == "bert":
            assert ids[0, 0] == loaded.tokenizer.cls_token_id and ids[0, -1] == loaded.tokenizer.sep_token_id
        else:  # a causal model gets a BOS to sink into
            assert probe.start == 1 and ids[0, 0] == loaded.tokenizer.bos_token_id
        again = probes.repeated_tokens(loaded, half=16, batch=5, seed=3)
        assert torch.equal(again.input_ids, ids)


def independent_probe_scores(loaded: LoadedModel, ids: torch.Tensor, half: int, start: int) -> np.ndarray:
    """[batch, 2, layer, head] from output_attentions, with loops and float64: no plugin code."""
    loaded.set_eager_attention(True)
    with torch.inference_mode():
        maps = loaded.model(ids, output_attentions=True).attentions
    batch, n_layers, n_heads = ids.shape[0], len(maps), maps[0].shape[1]
    out = np.zeros((batch, 2, n_layers, n_heads))
    for layer, a in enumerate(maps):
        a = a.double().numpy()
        for b in range(batch):
            for h in range(n_heads):
                second = range(start + half, start + 2 * half)
                out[b, 0, layer, h] = np.mean([a[b, h, q, q - half + 1] for q in second])
                out[b, 1, layer, h] = np.mean([a[b, h, q, q - half] for q in second])
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_batched_probe_pass_matches_output_attentions(tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    probe = probes.repeated_tokens(loaded, half=12, batch=3, seed=0)
    got = probes.probe_pass(loaded, probe)
    ref = independent_probe_scores(loaded, probe.input_ids, probe.half, probe.start)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_probe_cache_computes_once_per_model_and_shares(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    shared = MemoryCache()
    first = probes.ProbeCache()
    first.use_shared(shared)
    a, cached_a = first.scores(loaded, 8, 2, 0)
    b, cached_b = first.scores(loaded, 8, 2, 0)
    assert (cached_a, cached_b, first.computed) == (False, True, 1)
    assert b is a
    other_process = probes.ProbeCache()  # another worker: same shared cache, empty local dict
    other_process.use_shared(shared)
    c, cached_c = other_process.scores(loaded, 8, 2, 0)
    assert cached_c and other_process.computed == 0
    np.testing.assert_array_equal(c, a)
    _, cached_d = other_process.scores(tiny_models["llama"], 8, 2, 0)  # another model: a new pass
    assert not cached_d and other_process.computed == 1


def test_method_reports_probe_cache_use(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("llama")
    params = {"head_patterns": {"probe_length": 10, "probe_batch": 3, "seed": 11}}
    first = analyzer.analyze(TEXT, methods=["head_patterns"], params=params).methods["head_patterns"]
    second = analyzer.analyze("Another text entirely.", methods=["head_patterns"], params=params)
    assert not first.probe_cached and second.methods["head_patterns"].probe_cached


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_corpus_padding_changes_nothing(tiny_models, family: str) -> None:
    """Padded, batched corpus scores equal each text's own unpadded pass."""
    loaded = tiny_models[family]
    texts = ["short one", "a rather longer text, to force padding of the first", "mid length text"]
    got = classification.corpus_text_scores(loaded, texts, window=3, max_tokens=512)
    assert got.shape == (3, len(scores.TEXT_SCORES), 2, 4)
    for i, text in enumerate(texts):
        ids = loaded.tokenizer(text, return_tensors="pt").input_ids
        loaded.set_eager_attention(True)
        with torch.inference_mode():
            maps = loaded.model(ids, output_attentions=True).attentions
        alone = np.stack([scores.text_head_scores(a, loaded.info.causal, 3)[0].numpy() for a in maps], 1)
        np.testing.assert_allclose(got[i], alone, atol=2e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_head_patterns_result_is_well_formed(tiny_analyzer, family: str) -> None:
    params = {"head_patterns": {"corpus": ["A second text.", "And a third one, longer than that."]}}
    hp = tiny_analyzer(family).analyze(TEXT, methods=["head_patterns"], params=params).methods["head_patterns"]
    assert isinstance(hp, HeadPatternsResult)
    assert hp.categories == list(classification.CATEGORIES)
    assert hp.scores.shape == hp.spread.shape == (6, 2, 4)
    assert np.all((hp.scores >= 0) & (hp.scores <= 1))
    assert np.all((hp.confidence >= 0) & (hp.confidence <= 1))
    assert hp.n_texts == 3 and hp.n_probe_sequences == 8
    valid = {*classification.LABELS, classification.UNCLASSIFIED}
    assert all(label in valid for row in hp.labels for label in row)
    induction = hp.scores[1]
    assert hp.induction_heads == sorted(
        ([i, h] for i in range(2) for h in range(4) if induction[i, h] >= 0.4),
        key=lambda ih: -induction[ih[0], ih[1]],
    )


def test_classify_labels_and_confidence_on_known_samples() -> None:
    # 4 texts, 4 probe sequences; layer 0 has heads: previous-token, induction (3 of 4), nothing
    text = np.zeros((4, len(scores.TEXT_SCORES), 1, 3), dtype=np.float32)
    probe = np.zeros((4, len(scores.PROBE_SCORES), 1, 3), dtype=np.float32)
    text[:, 0, 0, 0] = 0.9  # previous_token, always
    probe[:, 0, 0, 1] = [0.9, 0.8, 0.7, 0.1]  # induction, mean 0.625, 3 of 4 samples above 0.4
    text[:, 2, 0, 2] = [0.5, 0.1, 0.1, 0.1]  # sink once: mean 0.2, not a label
    text[:, 2, 0, 1] = 0.9  # the induction head parks on the sink in the texts: still induction
    found = classification.classify(text, probe, threshold=0.4)
    assert found.labels == [["previous_token", "induction", "mixed"]]
    np.testing.assert_allclose(found.confidence[0], [1.0, 0.75, 0.75])
    text[:, 0, 0, 0] = 0.1  # with nothing else above the threshold, the sink is the label
    text[:, 2, 0, 0] = 0.7
    assert classification.classify(text, probe, threshold=0.4).labels[0][0] == "sink"
    np.testing.assert_allclose(found.scores[1, 0, 1], 0.625, rtol=1e-6)
    np.testing.assert_allclose(found.spread[1, 0, 1], np.std([0.9, 0.8, 0.7, 0.1]), rtol=1e-5)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"probe_length": 2}, "params.head_patterns.probe_length"),
        ({"probe_batch": 0}, "params.head_patterns.probe_batch"),
        ({"threshold": 1.5}, "params.head_patterns.threshold"),
        ({"corpus": ["fine", "  "]}, "params.head_patterns.corpus"),
    ],
)
def test_bad_params_are_typed_errors(tiny_analyzer, params: dict, field: str) -> None:
    with pytest.raises(InvalidParamsError) as info:
        tiny_analyzer("gpt2").analyze(TEXT, methods=["head_patterns"], params={"head_patterns": params})
    assert info.value.field == field
