"""attention_rollout against a direct float64 implementation of Abnar and Zuidema's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens_attention import RolloutResult, rollout

TEXT = "Rollout follows attention down through the residual stream."


def direct_rollout(maps: list[np.ndarray], residual: bool, fusion: str) -> list[np.ndarray]:
    """maps: per layer [head, q, k] float64 -> per layer rollout [q, k], written out plainly."""
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    out, total = [], None
    for a in maps:
        layer = fuse(a, axis=0)
        if residual:
            layer = 0.5 * layer + 0.5 * np.eye(layer.shape[0])
        layer = layer / layer.sum(axis=-1, keepdims=True)
        total = layer if total is None else layer @ total
        out.append(total)
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize(("fusion", "residual"), [("mean", True), ("max", True), ("min", False)])
def test_rollout_matches_direct_float64(tiny_analyzer, tiny_models, family: str, fusion: str, residual: bool) -> None:
    loaded = tiny_models[family]
    params = {"attention_rollout": {"head_fusion": fusion, "residual": residual, "per_layer": True}}
    ro = tiny_analyzer(family).analyze(TEXT, methods=["attention_rollout"], params=params)
    ro = ro.methods["attention_rollout"]
    assert isinstance(ro, RolloutResult)
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    loaded.set_eager_attention(True)
    with torch.inference_mode():
        maps = [a[0].double().numpy() for a in loaded.model(ids, output_attentions=True).attentions]
    ref = direct_rollout(maps, residual, fusion)
    np.testing.assert_allclose(ro.rollout, ref[-1], atol=1e-6)
    np.testing.assert_allclose(ro.per_layer, np.stack(ref), atol=1e-6)
    np.testing.assert_allclose(ro.rollout.sum(-1), 1.0, atol=1e-5)
    if loaded.info.causal:  # nothing flows from the future
        assert np.abs(np.triu(ro.rollout, 1)).max() == 0.0


def test_known_answers_on_synthetic_maps() -> None:
    n = 6
    eye = torch.eye(n)
    np.testing.assert_allclose(rollout.attention_rollout([eye, eye, eye])[-1].numpy(), np.eye(n))
    to_first = torch.zeros(n, n)
    to_first[:, 0] = 1.0
    # without the residual every position ends up drawing only from token 0
    no_res = rollout.attention_rollout([to_first, to_first], residual=False)[-1].numpy()
    np.testing.assert_allclose(no_res, np.tile(np.eye(n)[0], (n, 1)))
    # with it, one layer keeps half on the token itself: 0.5 I + 0.5 A
    one = rollout.attention_rollout([to_first], residual=True)[-1].numpy()
    expected = 0.5 * np.eye(n) + 0.5 * to_first.numpy()
    np.testing.assert_allclose(one, expected)
    # two layers: (0.5 I + 0.5 A)^2 = 0.25 I + 0.75 A for a sink map A (A @ A = A)
    two = rollout.attention_rollout([to_first, to_first], residual=True)[-1].numpy()
    expected_two = 0.25 * np.eye(n) + 0.75 * to_first.numpy()
    expected_two[0, 0] = 1.0
    np.testing.assert_allclose(two, expected_two)
