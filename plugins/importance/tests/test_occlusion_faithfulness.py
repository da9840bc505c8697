"""Occlusion against direct replacement, and faithfulness on a target whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens_importance.baselines import reference_embeds
from lmlens_importance.faithfulness import faithfulness
from lmlens_importance.occlusion import occlusion, windows
from lmlens_importance.params import ImportanceParams
from lmlens_importance.targets import Objective, build_objective, special_positions


def test_windows_cover_every_slot_and_reach_the_end():
    assert windows([1, 2, 3, 4, 5], 2, 2) == [[1, 2], [3, 4], [4, 5]]
    assert windows([0, 1, 2], 1, 1) == [[0], [1], [2]]
    assert windows([0, 1], 5, 1) == [[0, 1]]
    assert windows([], 3, 1) == []


def test_leave_one_out_is_the_drop_when_each_token_is_replaced(float64_models, make_trace):
    loaded = float64_models["bert"]
    trace = make_trace(loaded, "a cat")
    objective = build_objective(trace, ImportanceParams(other_text="the dog"))
    special = special_positions(loaded, trace)
    assert special.tolist() == [True, *[False] * 5, True]  # [CLS] a, space, c, a, t [SEP]
    replacement, _ = reference_embeds(loaded, objective.embeds, special, "mask")
    slots = [i for i, s in enumerate(special.tolist()) if not s]
    f_x = float(objective.values(objective.embeds, 1)[0])
    scores, count = occlusion(objective, replacement, slots, window=1, stride=1, batch_size=3, f_input=f_x)
    assert count == len(slots)
    mask_id = loaded.tokenizer.mask_token_id
    for p in range(len(special)):
        if p not in slots:
            assert scores[p] == 0
            continue
        ids = trace.input_ids.clone()
        ids[0, p] = mask_id
        with torch.no_grad():
            pooled = loaded.model(ids).last_hidden_state.mean(1)
            other = loaded.model(**loaded.tokenizer("the dog", return_tensors="pt")).last_hidden_state.mean(1)
        expected = f_x - float(torch.cosine_similarity(pooled, other))
        assert float(scores[p]) == pytest.approx(expected, abs=1e-10)


class LinearObjective(Objective):
    """f = sum_p <x_p, w>: each token's true contribution is <x_p, w>, removal subtracts it."""

    def __init__(self, embeds: torch.Tensor, w: torch.Tensor) -> None:
        self.embeds, self.suffix, self._w = embeds, None, w

    def __call__(self, embeds: torch.Tensor, *, grad: bool) -> torch.Tensor:
        return (embeds @ self._w).sum(-1)


def _linear_case(n: int = 10):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(4, generator=gen, dtype=torch.float64)
    return LinearObjective(x, w), (x[0] @ w), torch.zeros_like(x)


def test_faithfulness_of_the_true_ranking():
    objective, truth, zero = _linear_case()
    slots = list(range(10))
    f_x = float(truth.sum())
    report, _ = faithfulness(
        objective,
        truth,
        zero,
        slots,
        replacement_label="zero",
        fractions=[0.1, 0.5],
        deletion_points=11,
        random_orders=4,
        batch_size=7,
        f_input=f_x,
    )
    top = torch.sort(truth, descending=True).values
    assert report.counts == [1, 5]
    assert report.comprehensiveness == pytest.approx([float(top[:1].sum()), float(top[:5].sum())])
    assert report.sufficiency == pytest.approx([f_x - float(top[:1].sum()), f_x - float(top[:5].sum())])
    assert report.deletion_counts == list(range(11))
    expected_curve = f_x - np.concatenate([[0.0], np.cumsum(top.numpy())])
    assert np.allclose(report.deletion_curve, expected_curve, atol=1e-5)
    assert report.beats_random is True
    assert report.deletion_auc < report.random_deletion_auc


def test_a_reversed_ranking_does_not_beat_random():
    objective, truth, zero = _linear_case()
    report, _ = faithfulness(
        objective,
        -truth,
        zero,
        list(range(10)),
        replacement_label="zero",
        fractions=[0.2],
        deletion_points=11,
        random_orders=4,
        batch_size=64,
        f_input=float(truth.sum()),
    )
    assert report.beats_random is False
    assert report.comprehensiveness[0] < 0  # removing the "top" tokens raised the target


def test_occlusion_scores_reach_the_result(tiny_analyzer):
    result = (
        tiny_analyzer("llama")
        .analyze(
            "The cat sat.",
            methods=["importance"],
            params={"importance": {"method": "occlusion", "window": 3, "stride": 2}},
        )
        .methods["importance"]
    )
    assert result.convergence is None and not result.unreliable
    assert result.faithfulness is not None and len(result.faithfulness.deletion_curve) == 10
    assert np.count_nonzero(result.scores) == len(result.scores)  # every token covered
