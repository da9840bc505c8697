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
