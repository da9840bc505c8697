"""The embedded real models: induction heads in SmolLM2-135M, pictures and rollout on MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmlens_attention import probes

pytestmark = pytest.mark.real

TEXT = "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal."


def independent_induction(model, ids: torch.Tensor, half: int, start: int) -> np.ndarray:
    """[layer, head]: mean over sequences and second-copy queries q of A[q, q - half + 1],
    from the model's raw output_attentions, in float64. Shares no code with the plugin."""
    model.config._attn_implementation = "eager"
    with torch.inference_mode():
        attentions = model(ids, output_attentions=True).attentions
    queries = np.arange(start + half, start + 2 * half)
    keys = queries - half + 1
    return np.stack([a.double().numpy()[:, :, queries, keys].mean(axis=(0, 2)) for a in attentions])


def test_smollm2_has_induction_heads_and_the_scores_agree(real_analyzer) -> None:
    analyzer = real_analyzer("smollm2-135m")
    loaded = analyzer.model
    hp = analyzer.analyze(TEXT, methods=["head_patterns"]).methods["head_patterns"]
    print("smollm2-135m induction heads (layer, head):", hp.induction_heads)
    assert hp.induction_heads, "Olsson et al.: every model with two or more layers has induction heads"
    strongest = hp.induction_heads[0]
    assert hp.labels[strongest[0]][strongest[1]] == "induction"

    # the test's own probe: BOS, then 4 runs of 24 random ordinary tokens, each repeated
    rng = np.random.default_rng(1234)
    special = set(loaded.tokenizer.all_special_ids)
    pool = np.array([i for i in range(loaded.info.vocab_size) if i not in special])
    runs = [rng.choice(pool, 24, replace=False).tolist() for _ in range(4)]
    bos = loaded.tokenizer.bos_token_id
    ids = torch.tensor([[bos, *r, *r] for r in runs])  # [4, 49]
    ref = independent_induction(loaded.model, ids, half=24, start=1)
    assert ref.shape == (30, 9)

    # same inputs through the plugin's batched, reduced-in-the-hook pass
    got = probes.probe_pass(loaded, probes.ProbeInputs(input_ids=ids, half=24, start=1))
    np.testing.assert_allclose(got[:, 0].mean(0), ref, atol=1e-4)

    # the method's own probe (other random tokens) finds the same heads
    induction = hp.scores[hp.categories.index("induction")]
    assert np.corrcoef(induction.ravel(), ref.ravel())[0, 1] > 0.9
    top = hp.induction_heads[0]
    assert ref[top[0], top[1]] >= 0.4


def test_minilm_attention_html_is_small_and_rollout_is_exact(real_analyzer, tmp_path: Path) -> None:
    from lmlens_attention.panels import attention_panel

    analyzer = real_analyzer("minilm-l6")
    loaded = analyzer.model
    text = " ".join(["the attention of a sentence encoder, drawn for people to read"] * 12)
    result = analyzer.analyze(text, methods=["attention", "attention_rollout"])
    n = len(result.tokens)
    assert n >= 100
    path = tmp_path / "minilm.html"
    attention_panel(result, save_path=str(path), layer=5, head=11)  # BokehJS inlined: works offline
    assert path.stat().st_size < 5_000_000
    small = tmp_path / "minilm-cdn.html"
    attention_panel(result, save_path=str(small), layer=5, head=11, resources="cdn")
    assert small.stat().st_size < 60_000 + 6 * n * n  # without the library, the packed map dominates

    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    loaded.set_eager_attention(True)
    with torch.inference_mode():
        maps = [a[0].double().numpy() for a in loaded.model(ids, output_attentions=True).attentions]
    total = None
    for a in maps:
        layer = 0.5 * a.mean(0) + 0.5 * np.eye(n)
        layer /= layer.sum(-1, keepdims=True)
        total = layer if total is None else layer @ total
    np.testing.assert_allclose(result.methods["attention_rollout"].rollout, total, atol=1e-6)
