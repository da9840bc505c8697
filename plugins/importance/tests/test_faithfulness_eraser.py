"""ERASER faithfulness (DeYoung et al. 2020) against a direct recomputation through the HF model,
and the choice of the default attribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmlens_importance.baselines import reference_embeds
from lmlens_importance.faithfulness import ERASER_FRACTIONS, count_for, faithfulness
from lmlens_importance.params import ImportanceParams
from lmlens_importance.targets import build_objective, special_positions


@pytest.mark.parametrize(
    ("fraction", "m", "k"),
    [(0.01, 6, 1), (0.5, 5, 3), (0.2, 12, 2), (0.1, 15, 2), (0.5, 1, 1), (1.0, 7, 7), (0.05, 100, 5)],
)
def test_count_rounding_is_half_up_and_at_least_one(fraction: float, m: int, k: int) -> None:
    assert count_for(fraction, m) == k


def _direct_next_token(model, ids: torch.Tensor, token: int, embeds: torch.Tensor | None = None) -> float:
    with torch.no_grad():
        out = model(inputs_embeds=embeds) if embeds is not None else model(input_ids=ids)
    return float(torch.log_softmax(out.logits[0, -1].double(), -1)[token])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_erasure_matches_a_direct_recomputation(float64_models, make_trace, family: str) -> None:
    loaded = float64_models[family]
    text = "The quick brown fox jumps over it"
    trace = make_trace(loaded, text)
    objective = build_objective(trace, ImportanceParams())
    special = special_positions(loaded, trace)
    slots = [i for i, s in enumerate(special.tolist()) if not s]
    replacement, label = reference_embeds(loaded, objective.embeds, special, "zero")
    gen = torch.Generator().manual_seed(1)
    scores = torch.where(special, 0.0, torch.randn(len(special), generator=gen, dtype=torch.float64))
    f_x = float(objective.values(objective.embeds, batch_size=1)[0])
    report, _ = faithfulness(
        objective, scores, replacement, slots, replacement_label=label, fractions=ERASER_FRACTIONS,
        deletion_points=5, random_orders=1, batch_size=4, f_input=f_x, kind="next_token", removal="both",
    )
    model, ids, token = loaded.model, trace.input_ids, objective.token_ids[0]
    assert f_x == pytest.approx(_direct_next_token(model, ids, token), abs=1e-10)
    order = sorted(slots, key=lambda p: -float(scores[p]))
    m = len(slots)
    counts = [min(m, max(1, math.floor(f * m + 0.5))) for f in ERASER_FRACTIONS]
    assert report.counts == counts and report.fractions == ERASER_FRACTIONS
    embed = model.get_input_embeddings()
    expected: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for removal in ("replace", "delete"):
        comp, suff = [], []
        for k in counts:
            values = []
            for removed in (set(order[:k]), set(order[k:])):
                if removal == "replace":
                    with torch.no_grad():
                        e = embed(ids).clone()
                    e[0, sorted(removed)] = 0.0  # the zero embedding stands in
                    values.append(_direct_next_token(model, ids, token, embeds=e))
                else:
                    kept = [p for p in range(ids.shape[1]) if p not in removed]  # specials stay
                    values.append(_direct_next_token(model, ids[:, kept], token))
            comp.append(values[0])
            suff.append(values[1])
        expected[(removal, "target")] = ([f_x - v for v in comp], [f_x - v for v in suff])
        p_x = math.exp(f_x)
        expected[(removal, "probability")] = ([p_x - math.exp(v) for v in comp], [p_x - math.exp(v) for v in suff])
    assert {(e.removal, e.units) for e in report.erasures} == set(expected)
    for (removal, units), (comp, suff) in expected.items():
        found = report.erasure(removal, units)
        assert found.comprehensiveness == pytest.approx(comp, abs=1e-9)
        assert found.sufficiency == pytest.approx(suff, abs=1e-9)
        assert found.aopc_comprehensiveness == pytest.approx(np.mean(comp), abs=1e-9)
        assert found.aopc_sufficiency == pytest.approx(np.mean(suff), abs=1e-9)
    # the flat fields are the replace / target-units ones, as before
    assert report.comprehensiveness == pytest.approx(expected[("replace", "target")][0], abs=1e-9)
    assert report.units == "log-probability (nats)" and "floor(f * m + 1/2)" in report.rounding


def test_similarity_has_no_probability_and_deletes_between_cls_and_sep(float64_models, make_trace) -> None:
    loaded = float64_models["bert"]
    trace = make_trace(loaded, "a small cat")
    objective = build_objective(trace, ImportanceParams(other_text="the dog"))
    special = special_positions(loaded, trace)
    slots = [i for i, s in enumerate(special.tolist()) if not s]
    replacement, label = reference_embeds(loaded, objective.embeds, special, "zero")
    scores = torch.where(special, 0.0, torch.arange(len(special), dtype=torch.float64))  # later tokens first
    f_x = float(objective.values(objective.embeds, batch_size=1)[0])
    report, _ = faithfulness(
        objective, scores, replacement, slots, replacement_label=label, fractions=[0.5],
        deletion_points=3, random_orders=0, batch_size=8, f_input=f_x, kind="similarity", removal="both",
    )
    assert {(e.removal, e.units) for e in report.erasures} == {("replace", "target"), ("delete", "target")}
    k = count_for(0.5, len(slots))
    kept = [p for p in range(len(special)) if p not in slots[-k:]]  # the top k are the last slots
    with torch.no_grad():
        pooled = loaded.model(trace.input_ids[:, kept]).last_hidden_state.mean(1)
        other = loaded.model(**loaded.tokenizer("the dog", return_tensors="pt")).last_hidden_state.mean(1)
    direct = float(torch.cosine_similarity(pooled, other))
    assert report.erasure("delete", "target").comprehensiveness[0] == pytest.approx(f_x - direct, abs=1e-10)
    assert report.units == "cosine similarity"


def test_loss_target_reports_replacement_only_and_says_why(tiny_analyzer) -> None:
    found = tiny_analyzer("gpt2").analyze(
        "a few words of text", methods=["importance"],
        params={"importance": {"method": "gradient_x_input", "target": "loss"}},
    ).methods["importance"]
    faith = found.faithfulness
    assert {e.removal for e in faith.erasures} == {"replace"}
    assert faith.erasure("replace", "probability") is not None  # exp(-loss)
    assert any("deleting them changes the target" in note for note in faith.notes)


def test_the_result_carries_eraser_numbers_by_default(tiny_analyzer) -> None:
    found = tiny_analyzer("gpt2").analyze("The cat sat on the mat.", methods=["importance"]).methods["importance"]
    faith = found.faithfulness
    assert faith.fractions == [0.01, 0.05, 0.1, 0.2, 0.5]
    eraser = faith.erasure()  # deleted tokens, probabilities: the published tables' setting
    assert eraser is not None and len(eraser.comprehensiveness) == 5
    assert faith.aopc_comprehensiveness == pytest.approx(np.mean(faith.comprehensiveness))


def test_default_on_an_rmsnorm_model_is_occlusion_and_says_why(tiny_analyzer) -> None:
    found = tiny_analyzer("llama").analyze("The cat sat on the mat.", methods=["importance"]).methods["importance"]
    assert found.method == "occlusion" and not found.unreliable and found.convergence is None
    assert "RMSNorm" in found.method_reason
    assert found["token_importance"] is found.scores


def test_default_on_a_layernorm_model_is_converged_ig(tiny_analyzer) -> None:
    found = tiny_analyzer("gpt2").analyze("The cat sat on the mat.", methods=["importance"]).methods["importance"]
    assert found.method == "integrated_gradients" and found.convergence.converged and not found.unreliable
    assert "LayerNorm" in found.method_reason and found.baseline == "zero embedding"


def test_auto_falls_back_to_occlusion_when_ig_does_not_converge(tiny_analyzer) -> None:
    found = tiny_analyzer("gpt2").analyze(
        "The cat sat on the mat.", methods=["importance"], params={"importance": {"tolerance": 1e-9}}
    ).methods["importance"]
    assert found.method == "occlusion" and not found.unreliable and found.convergence is None
    assert "tried first and did not converge" in found.method_reason
    explicit = tiny_analyzer("gpt2").analyze(
        "The cat sat on the mat.", methods=["importance"],
        params={"importance": {"tolerance": 1e-9, "method": "occlusion", "faithfulness": False}},
    ).methods["importance"]
    np.testing.assert_allclose(found.scores, explicit.scores, rtol=1e-6)
    assert explicit.method_reason is None  # chosen by the caller: nothing to explain


def test_advice_never_suggests_the_baseline_in_use(tiny_analyzer) -> None:
    found = tiny_analyzer("llama").analyze(
        "The cat sat on the mat.", methods=["importance"],
        params={"importance": {"method": "integrated_gradients", "baseline": "pad", "steps": 2,
                               "rule": "riemann_trapezoid", "tolerance": 1e-9, "faithfulness": False}},
    ).methods["importance"]
    (advice,) = [w for w in found.warnings if "did not converge" in w]
    assert "from the pad baseline" in advice and "a mask/text baseline" in advice and "pad/" not in advice
    assert 'method="occlusion"' in advice
