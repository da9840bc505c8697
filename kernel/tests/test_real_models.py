"""The embedded real models: SmolLM2-135M (GGUF, Llama) and all-MiniLM-L6-v2 (BERT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlens.architectures import point_names
from lmlens.capture import Need
from lmlens.forward import run_forward

pytestmark = pytest.mark.real


def test_smollm2_converted_from_gguf_predicts_sensibly(real_analyzer) -> None:
    loaded = real_analyzer("smollm2-135m").model
    assert loaded.revision.startswith("gguf-")
    assert (loaded.info.n_layers, loaded.info.n_heads, loaded.info.n_kv_heads) == (30, 9, 3)
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    got = run_forward(loaded, [Need("logits")], input_ids=ids)
    assert loaded.tokenizer.decode(got["logits"][0, -1].argmax()) == " Paris"
    # the tied LM head really is the embedding matrix after conversion
    assert torch.equal(loaded.model.lm_head.weight, loaded.model.get_input_embeddings().weight)


@pytest.mark.parametrize("alias", ["smollm2-135m", "minilm-l6"])
def test_real_model_capture_matches_output_attentions(real_analyzer, alias: str) -> None:
    loaded = real_analyzer(alias).model
    ids = loaded.tokenizer("Attention, please: the kernel captures what the model computes.",
                           return_tensors="pt").input_ids
    needs = [Need(p) for p in point_names(loaded.info.n_layers) if p != "logits"]
    got = run_forward(loaded, needs, input_ids=ids)
    loaded.set_eager_attention(True)
    with torch.inference_mode():
        ref = loaded.model(ids, output_attentions=True, output_hidden_states=True)
    for i in range(loaded.info.n_layers):
        torch.testing.assert_close(got[f"blocks.{i}.attn.pattern"], ref.attentions[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[f"blocks.{i}.resid_pre"], ref.hidden_states[i], atol=1e-4, rtol=1e-5)


def test_minilm_embeddings_rank_paraphrases_first(real_analyzer) -> None:
    loaded = real_analyzer("minilm-l6").model

    def embed(text: str) -> np.ndarray:
        ids = loaded.tokenizer(text, return_tensors="pt").input_ids
        final = run_forward(loaded, [Need("final")], input_ids=ids)["final"][0]  # [pos, d_model]
        v = final.mean(0).numpy()
        return v / np.linalg.norm(v)

    anchor = embed("A man is eating food.")
    assert anchor @ embed("A man is eating a piece of bread.") > anchor @ embed("The girl is carrying a baby.")


def test_analyze_on_the_default_model(real_analyzer) -> None:
    result = real_analyzer("smollm2-135m").analyze("The cat sat on the mat", methods=["attention"])
    assert [t.text for t in result.tokens] == ["The", " cat", " sat", " on", " the", " mat"]
    attention = result.methods["attention"]
    assert attention.patterns.shape == (30, 9, 6, 6)
    np.testing.assert_allclose(attention.patterns.sum(-1), 1.0, atol=1e-5)
