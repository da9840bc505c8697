"""Attention flow: Dinic's max-flow on a textbook graph, and closed forms for shallow models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens import InvalidParamsError
from lmlens_attention import flow

TEXT = "Flow finds wide ways."


def test_max_flow_on_the_textbook_network() -> None:
    """Cormen et al., figure 26.1: the maximum flow is 23."""
    graph = flow.FlowGraph(6)
    for u, v, c in [(0, 1, 16), (0, 2, 13), (1, 3, 12), (2, 1, 4), (2, 4, 14), (3, 2, 9), (3, 5, 20),
                    (4, 3, 7), (4, 5, 4)]:
        graph.add(u, v, float(c))
    assert graph.max_flow(0, 5) == pytest.approx(23.0)
    assert graph.max_flow(5, 0) == 0.0
    assert graph.max_flow(0, 5) == pytest.approx(23.0)  # the graph's capacities are left intact


def test_one_layer_flow_is_the_attention_itself() -> None:
    torch.manual_seed(0)
    t = torch.softmax(torch.randn(5, 5, dtype=torch.float64), -1)
    np.testing.assert_allclose(flow.attention_flow([t]).numpy(), t.numpy(), atol=1e-12)


def two_layer_flow(t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """With one middle layer, paths q -> j -> k share no edge: flow = sum_j min(t2[q, j], t1[j, k])."""
    n = t1.shape[0]
    f = np.array([[sum(min(t2[q, j], t1[j, k]) for j in range(n)) for k in range(n)] for q in range(n)])
    return f / f.sum(-1, keepdims=True)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_flow_on_two_layer_models_matches_the_closed_form(tiny_analyzer, tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    params = {"attention_rollout": {"flow": True}}
    got = tiny_analyzer(family).analyze(TEXT, methods=["attention_rollout"], params=params)
    got = got.methods["attention_rollout"].flow
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    loaded.set_eager_attention(True)
    with torch.inference_mode():
        maps = [a[0].double().mean(0).numpy() for a in loaded.model(ids, output_attentions=True).attentions]
    t1, t2 = ((m + np.eye(len(m))) / (m + np.eye(len(m))).sum(-1, keepdims=True) for m in maps)
    np.testing.assert_allclose(got, two_layer_flow(t1, t2), atol=1e-6)


def test_flow_refuses_long_texts(tiny_analyzer) -> None:
    with pytest.raises(InvalidParamsError) as info:
        tiny_analyzer("gpt2").analyze("x" * 100, methods=["attention_rollout"],
                                      params={"attention_rollout": {"flow": True}})
    assert info.value.field == "params.attention_rollout.flow"
