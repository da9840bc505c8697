"""Real embedded models: agreement with Captum (an independent implementation, used only
here and in the benchmark) on smollm2-135m, and the encoder similarity target on minilm-l6."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens import Analyzer

pytestmark = pytest.mark.real

PROMPTS = ["The capital of France is", "She opened the door and saw a", "2 + 2 ="]
STEPS = 32


@pytest.fixture(scope="module")
def smollm2(lmlens_cache_dir):
    import os

    from lmlens.settings import Settings

    cache = os.environ.get("LMLENS_CACHE_DIR") or str(lmlens_cache_dir)
    analyzer = Analyzer("smollm2-135m", settings=Settings(cache_dir=cache))
    analyzer.model  # noqa: B018 - load once for the module
    return analyzer


def _captum_lig(loaded, ids: torch.Tensor, token: int, baseline_ids: torch.Tensor) -> np.ndarray:
    from captum.attr import LayerIntegratedGradients

    model = loaded.model

    def forward(batch_ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch_ids).logits[:, -1].log_softmax(-1)[:, token]

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    attributions = lig.attribute(ids, baselines=baseline_ids, n_steps=STEPS, method="gausslegendre")
    return attributions.sum(-1)[0].detach().double().numpy()


def _captum_ig_zero(loaded, ids: torch.Tensor, token: int) -> np.ndarray:
    from captum.attr import IntegratedGradients

    model = loaded.model

    def forward(embeds: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=embeds).logits[:, -1].log_softmax(-1)[:, token]

    embeds = model.get_input_embeddings()(ids).detach()
    attributions = IntegratedGradients(forward).attribute(
        embeds, baselines=torch.zeros_like(embeds), n_steps=STEPS, method="gausslegendre"
    )
    return attributions.sum(-1)[0].detach().double().numpy()


@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_integrated_gradients_agree_with_captum(smollm2, baseline):
    loaded = smollm2.model
    # Captum's LayerIntegratedGradients takes token baselines (pad); the zero embedding
    # goes through its IntegratedGradients on inputs_embeds, on one prompt to keep CI short.
    for prompt in PROMPTS if baseline == "pad" else PROMPTS[:1]:
        result = smollm2.analyze(
            prompt,
            methods=["importance"],
            params={"importance": {"method": "integrated_gradients", "baseline": baseline, "steps": STEPS,
                                   "faithfulness": False}},
        ).methods["importance"]
        ids, _ = smollm2.tokenize(loaded, prompt)
        token = result.target.token_ids[0]
        if baseline == "pad":
            reference = _captum_lig(loaded, ids, token, torch.full_like(ids, loaded.tokenizer.pad_token_id))
        else:
            reference = _captum_ig_zero(loaded, ids, token)
        ours = result.scores.astype(np.float64)
        r = np.corrcoef(ours, reference)[0, 1]
        assert r >= 0.99, (prompt, baseline, r, ours, reference)
        # the same quadrature of the same integral: close in value too, not just in shape
        assert np.allclose(ours, reference, rtol=0.05, atol=0.05 * np.abs(reference).max())


def test_encoder_similarity_on_minilm(lmlens_cache_dir):
    from lmlens.settings import Settings

    analyzer = Analyzer("minilm-l6", settings=Settings(cache_dir=str(lmlens_cache_dir)))
    a, b = "A man is playing a guitar.", "Someone plays music on a guitar."
    result = analyzer.analyze(
        a,
        methods=["importance"],
        params={"importance": {"method": "integrated_gradients", "other_text": b, "baseline": "mask", "steps": 32,
                                   "faithfulness": True}},
    )
    found = result.methods["importance"]
    loaded = analyzer.model
    with torch.no_grad():
        pooled = [loaded.model(**loaded.tokenizer(t, return_tensors="pt")).last_hidden_state.mean(1) for t in (a, b)]
    assert found.target.value == pytest.approx(float(torch.cosine_similarity(*pooled)), abs=1e-5)
    words = {w.text: w.score for w in found.words}
    assert set(words) == {"A", "man", "is", "playing", "a", "guitar", "."}
    assert max(words, key=words.get) == "guitar"  # the shared word carries the similarity
    assert found.convergence.relative_delta < 0.05


def test_the_default_on_smollm2_is_trusted(smollm2):
    # issue 12: IG from a zero baseline is unreliable on SmolLM2 by construction; the default is not
    found = smollm2.analyze(
        "The capital of France is Paris, and the capital of Italy is", methods=["importance"]
    ).methods["importance"]
    assert found.method == "occlusion" and not found.unreliable and "RMSNorm" in found.method_reason
    assert found.target.token_text == " Rome"
    eraser = found.faithfulness.erasure("delete", "probability")
    assert eraser.aopc_comprehensiveness > 0.5 and found.faithfulness.beats_random
