"""Head scores on synthetic patterns whose answers are known by construction."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmlens_attention import scores

N = 64  # sequence length of the synthetic text patterns
L, START = 20, 1  # probe: one prefix token, then r + r with len(r) == L


def one_hot_rows(targets: list[int], n: int) -> torch.Tensor:
    """[1, 1, n, n]: query q puts all its attention on key targets[q]."""
    p = torch.zeros(1, 1, n, n)
    p[0, 0, torch.arange(n), torch.tensor(targets)] = 1.0
    return p


def previous_token(n: int = N) -> torch.Tensor:
    return one_hot_rows([max(q - 1, 0) for q in range(n)], n)


def sink(n: int = N) -> torch.Tensor:
    return one_hot_rows([0] * n, n)


def fixed_offset(d: int, n: int = N) -> torch.Tensor:
    return one_hot_rows([q - d if q >= d else 0 for q in range(n)], n)


def fixed_position(j: int, n: int = N) -> torch.Tensor:
    return one_hot_rows([j if q >= j else q for q in range(n)], n)


def uniform_causal(n: int = N) -> torch.Tensor:
    p = torch.tril(torch.ones(n, n))
    return (p / p.sum(-1, keepdim=True))[None, None]


def induction(n: int = 2 * L + START) -> torch.Tensor:
    return one_hot_rows([q - L + 1 if q >= START + L else 0 for q in range(n)], n)


def duplicate(n: int = 2 * L + START) -> torch.Tensor:
    return one_hot_rows([q - L if q >= START + L else q for q in range(n)], n)


def text_scores(p: torch.Tensor, causal: bool = True) -> dict[str, float]:
    values = scores.text_head_scores(p, causal=causal, window=3)[0, :, 0]
    return dict(zip(scores.TEXT_SCORES, values.tolist(), strict=True))


def probe_scores(p: torch.Tensor) -> dict[str, float]:
    values = scores.probe_head_scores(p, half=L, start=START)[0, :, 0]
    return dict(zip(scores.PROBE_SCORES, values.tolist(), strict=True))


def test_exact_previous_token_head() -> None:
    got = text_scores(previous_token())
    assert got["previous_token"] == pytest.approx(1.0)
    assert got["positional"] < 0.05
    assert got["sink"] < 0.05  # only query 1 looks at token 0
    assert got["locality"] == pytest.approx(1.0)
    probe = probe_scores(previous_token(2 * L + START))
    assert probe["induction"] == 0.0 and probe["duplicate_token"] == 0.0


def test_exact_sink_head() -> None:
    got = text_scores(sink())
    assert got["sink"] == pytest.approx(1.0)
    assert got["previous_token"] < 0.05
    assert got["positional"] < 0.05
    assert got["locality"] < 0.1  # global: only queries 1..3 have the sink within 3 tokens
    assert probe_scores(sink(2 * L + START)) == {"induction": 0.0, "duplicate_token": 0.0}


@pytest.mark.parametrize("d", [0, 2, 5, 17])
def test_fixed_relative_offset_is_positional(d: int) -> None:
    got = text_scores(fixed_offset(d))
    assert got["positional"] == pytest.approx(1.0)
    assert got["previous_token"] < 0.05
    assert got["sink"] <= d / (N - 1) + 1e-6  # queries before d fall back to token 0
    assert got["locality"] == pytest.approx(1.0 if d <= 3 else (min(d, 4) - 1) / (N - 1), abs=0.05)


@pytest.mark.parametrize("j", [3, 20])
def test_fixed_absolute_position_is_positional(j: int) -> None:
    got = text_scores(fixed_position(j))
    assert got["positional"] == pytest.approx(1.0)
    assert got["sink"] < 0.05 and got["previous_token"] < 0.05


def test_uniform_head_scores_low_everywhere() -> None:
    got = text_scores(uniform_causal())
    harmonic = sum(1 / (q + 1) for q in range(1, N)) / (N - 1)  # mean over q >= 1 of 1/(q+1)
    assert got["sink"] == pytest.approx(harmonic, rel=1e-5)
    assert got["previous_token"] == pytest.approx(harmonic, rel=1e-5)
    assert got["positional"] < 0.2
    assert scores.attention_entropy(uniform_causal()).item() == pytest.approx(
        sum(math.log(q + 1) for q in range(N)) / N, rel=1e-5
    )


def test_exact_induction_and_duplicate_heads() -> None:
    ind = probe_scores(induction())
    assert ind["induction"] == pytest.approx(1.0) and ind["duplicate_token"] == 0.0
    dup = probe_scores(duplicate())
    assert dup["duplicate_token"] == pytest.approx(1.0) and dup["induction"] == 0.0
    # an induction head is a fixed-offset head on this probe: offset L - 1
    assert text_scores(induction())["previous_token"] < 0.05


def test_bidirectional_next_token_head_is_positional_not_previous() -> None:
    p = one_hot_rows([min(q + 1, N - 1) for q in range(N)], N)
    got = text_scores(p, causal=False)
    assert got["positional"] == pytest.approx(1.0)
    assert got["previous_token"] < 0.05
    assert got["locality"] == pytest.approx(1.0)


def test_mean_distance_and_sink_mass_against_loops() -> None:
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, 9, 9), -1)
    dist = scores.mean_attention_distance(p)
    sink = scores.sink_mass(p, causal=True)
    for b in range(2):
        for h in range(3):
            ref = sum(float(p[b, h, q, k]) * abs(q - k) for q in range(9) for k in range(9)) / 9
            assert dist[b, h].item() == pytest.approx(ref, rel=1e-5)
            assert sink[b, h].item() == pytest.approx(float(p[b, h, 1:, 0].mean()), rel=1e-6)


def test_positional_score_against_a_loop() -> None:
    """The scatter implementation equals the definition, written as loops."""
    torch.manual_seed(1)
    n = 12
    p = torch.softmax(torch.randn(1, 2, n, n).masked_fill(torch.triu(torch.ones(n, n), 1).bool(), -1e9), -1)
    got = scores.positional_score(p, causal=True)[0]
    free = range(1, n)
    for h in range(2):
        best = 0.0
        for d in range(-(n - 1), n):
            qs = [q for q in free if 0 <= q - d <= q]
            if d != 1 and len(qs) >= (n - 1) // 2:
                best = max(best, sum(float(p[0, h, q, q - d]) for q in qs) / len(qs))
        for j in range(1, n):
            qs = [q for q in free if q >= j]
            if len(qs) >= (n - 1) // 2:
                best = max(best, sum(float(p[0, h, q, j]) for q in qs) / len(qs))
        assert got[h].item() == pytest.approx(best, rel=1e-5)


def random_causal(n: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    logits = torch.randn(2, 3, n, n).masked_fill(torch.triu(torch.ones(n, n), 1).bool(), float("-inf"))
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("n", [64, 130, 257])
def test_causal_row_blocks_read_every_nonzero_cell(n: int) -> None:
    """The block path (long causal maps) equals the plain formulas over the whole map."""
    from lmlens_attention.methods import attention_summary

    p = random_causal(n)
    full_entropy = -torch.xlogy(p.double(), p.double()).sum(-1).mean(-1)
    torch.testing.assert_close(scores.attention_entropy(p, causal=True).double(), full_entropy, rtol=1e-5, atol=1e-6)
    for top_k in (3, 10):  # 10 > the first block's 8 keys when n = 64: falls back to whole rows
        got = attention_summary(p, causal=True, top_k=top_k)
        ref = torch.topk(p, k=top_k, dim=-1)
        torch.testing.assert_close(got["top_weights"], ref.values)
        # keys agree wherever the weight is not a tie at 0 (early queries have < k keys)
        torch.testing.assert_close(got["top_keys"][ref.values > 0], ref.indices[ref.values > 0])
        torch.testing.assert_close(p.gather(-1, got["top_keys"]), ref.values)
    blocks = scores.causal_row_blocks(n, n, causal=True)
    assert blocks[0][0] == 0 and blocks[-1][1] == n and len(blocks) == 8
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))


def test_mean_distance_causal_shortcut_equals_the_definition() -> None:
    p = random_causal(70, seed=3)
    n = p.shape[-1]
    q, k = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    ref = (p.double() * (q - k).abs()).sum(-1).mean(-1)
    torch.testing.assert_close(scores.mean_attention_distance(p, causal=True).double(), ref, rtol=1e-5, atol=1e-5)
