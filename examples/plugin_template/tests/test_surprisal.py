from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmlens import InvalidParamsError


def test_surprisal_matches_float64_reference(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("llama")
    text = "surprise!"
    result = analyzer.analyze(text, methods=["surprisal"]).methods["surprisal"]
    model = analyzer.model.model
    ids = analyzer.model.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model.double()(ids).logits[0]
    model.float()
    ref = torch.log_softmax(logits, -1)[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy()
    assert math.isnan(result.logprob[0])
    np.testing.assert_allclose(result.logprob[1:], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.bits[1:], -ref / math.log(2), rtol=1e-4, atol=1e-5)
    assert result.next_logprob == pytest.approx(float(torch.log_softmax(logits[-1], -1).max()), abs=1e-4)


def test_surprisal_refuses_encoders(tiny_analyzer) -> None:
    with pytest.raises(InvalidParamsError, match="causal"):
        tiny_analyzer("bert").analyze("no head", methods=["surprisal"])


def test_entropy_reducer_and_prefix_pass_match_a_direct_computation(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("gpt2")
    text, prefix = "the cat sat", "Once upon a time, "
    result = analyzer.analyze(text, ["surprisal"], {"surprisal": {"prefix": prefix}}).methods["surprisal"]
    tok = analyzer.model.tokenizer
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = analyzer.model.model(ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    entropy = (-(logp.exp() * logp).sum(-1) / math.log(2)).numpy()
    np.testing.assert_allclose(result.entropy_bits, entropy, rtol=1e-4, atol=1e-4)
    head = tok(prefix, return_tensors="pt").input_ids[0]
    joined = torch.cat([head, ids[0]])[None]
    with torch.no_grad():
        joined_logp = torch.log_softmax(analyzer.model.model(joined).logits[0].double(), -1)
    n = len(head)
    ref = [-float(joined_logp[n + i - 1, ids[0, i]]) / math.log(2) for i in range(ids.shape[1])]
    np.testing.assert_allclose(result.prefix_bits, ref, rtol=1e-4, atol=1e-4)


def test_empty_prefix_is_refused_before_any_work(tiny_analyzer) -> None:
    with pytest.raises(InvalidParamsError, match="prefix"):
        tiny_analyzer("gpt2").analyze("text", ["surprisal"], {"surprisal": {"prefix": "  "}})


def test_surprisal_panel_draws_the_bits_and_the_nats(tiny_analyzer, tmp_path) -> None:
    from lmlens_surprisal import surprisal_panel

    result = tiny_analyzer("llama").analyze("surprise!", methods=["surprisal"])
    found = result.methods["surprisal"]
    assert surprisal_panel.controls(found) == {"unit": ["bits", "nats"]}
    for unit, expected in (("bits", found.bits), ("nats", -found.logprob)):
        fig = surprisal_panel(result, unit=unit, save_path=str(tmp_path / f"{unit}.html"))
        tops = fig.renderers[0].data_source.data["top"]
        np.testing.assert_allclose(tops[1:], expected[1:], rtol=1e-6)
        assert tops[0] == 0.0 and (tmp_path / f"{unit}.html").stat().st_size > 1000
    with pytest.raises(InvalidParamsError, match="unit"):
        surprisal_panel(result, unit="bytes")
