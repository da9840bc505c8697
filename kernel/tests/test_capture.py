"""Captured hook points equal what the model itself returns."""

from __future__ import annotations

import pytest
import torch
import transformers

from lmlens.architectures import point_names
from lmlens.capture import Capture, Need
from lmlens.errors import InvalidParamsError
from lmlens.forward import run_forward
from lmlens.models import LoadedModel

TEXT = "Hooks see what the model sees."
ATOL = 1e-5


def _reference(loaded: LoadedModel, ids: torch.Tensor) -> transformers.utils.ModelOutput:
    loaded.set_eager_attention(True)
    with torch.inference_mode():
        return loaded.model(ids, output_attentions=True, output_hidden_states=True)


def _capture_all(loaded: LoadedModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    points = [p for p in point_names(loaded.info.n_layers) if p != "logits" or loaded.info.has_lm_head]
    return run_forward(loaded, [Need(p) for p in points], input_ids=ids)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_captured_points_match_model_outputs(tiny_models: dict[str, LoadedModel], family: str) -> None:
    loaded = tiny_models[family]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids  # [1, pos]
    ref = _reference(loaded, ids)
    got = _capture_all(loaded, ids)
    n = loaded.info.n_layers
    assert len(ref.attentions) == n
    embed = loaded.model.get_input_embeddings()(ids)
    torch.testing.assert_close(got["embed"], embed, atol=ATOL, rtol=0)
    for i in range(n):
        torch.testing.assert_close(got[f"blocks.{i}.attn.pattern"], ref.attentions[i], atol=ATOL, rtol=0)
        torch.testing.assert_close(got[f"blocks.{i}.resid_pre"], ref.hidden_states[i], atol=ATOL, rtol=0)
        assert got[f"blocks.{i}.attn.pattern"].shape == (1, loaded.info.n_heads, ids.shape[1], ids.shape[1])
    last = ref.last_hidden_state if family == "bert" else ref.hidden_states[-1]
    torch.testing.assert_close(got["final"], last, atol=ATOL, rtol=0)
    if family == "bert":
        for i in range(n):  # post-norm encoder: hidden_states[i + 1] is the block output
            torch.testing.assert_close(got[f"blocks.{i}.resid_post"], ref.hidden_states[i + 1], atol=ATOL, rtol=0)
    else:
        for i in range(n - 1):  # the last hidden state is after the final norm
            torch.testing.assert_close(got[f"blocks.{i}.resid_post"], ref.hidden_states[i + 1], atol=ATOL, rtol=0)
        torch.testing.assert_close(got["logits"], ref.logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pre_norm_residual_stream_adds_up(tiny_models: dict[str, LoadedModel], family: str) -> None:
    """resid_pre + attn.out + mlp.out == resid_post: the outputs are the block's two writes."""
    loaded = tiny_models[family]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    got = _capture_all(loaded, ids)
    for i in range(loaded.info.n_layers):
        total = got[f"blocks.{i}.resid_pre"] + got[f"blocks.{i}.attn.out"] + got[f"blocks.{i}.mlp.out"]
        torch.testing.assert_close(total, got[f"blocks.{i}.resid_post"], atol=ATOL, rtol=1e-5)


def test_bert_post_norm_outputs_rebuild_the_block(tiny_models: dict[str, LoadedModel]) -> None:
    loaded = tiny_models["bert"]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    got = _capture_all(loaded, ids)
    block = loaded.modules.blocks[0]
    with torch.inference_mode():
        h = block.attention.output.LayerNorm(got["blocks.0.attn.out"] + got["blocks.0.resid_pre"])
        out = block.output.LayerNorm(got["blocks.0.mlp.out"] + h)
    torch.testing.assert_close(out, got["blocks.0.resid_post"], atol=ATOL, rtol=1e-5)


def test_masked_lm_head_gives_logits(plugin_host) -> None:
    from lmlens.tiny import byte_tokenizer

    config = transformers.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    loaded = LoadedModel.build(name="mlm", revision="0", model=model, tokenizer=byte_tokenizer("bert"),
                               architectures=plugin_host.architectures)
    ids = loaded.tokenizer("abc", return_tensors="pt").input_ids
    got = run_forward(loaded, [Need("logits"), Need("blocks.1.attn.pattern")], input_ids=ids)
    with torch.inference_mode():
        ref = model(ids, output_attentions=True)
    torch.testing.assert_close(got["logits"], ref.logits)
    torch.testing.assert_close(got["blocks.1.attn.pattern"], ref.attentions[1])


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_reducer_runs_inside_the_hook_and_keeps_only_its_value(tiny_models) -> None:
    loaded = tiny_models["llama"]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    seen = []

    def row_sums(pattern: torch.Tensor) -> torch.Tensor:  # [batch, head, q, k] -> [batch, head, q]
        seen.append(pattern.shape)
        return pattern.sum(-1)

    got = run_forward(loaded, [Need("blocks.1.attn.pattern", row_sums, name="sums")], input_ids=ids)
    assert list(got) == ["sums"]
    assert seen == [(1, 4, ids.shape[1], ids.shape[1])]
    torch.testing.assert_close(got["sums"], torch.ones(1, 4, ids.shape[1]))


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_hooks_are_removed_when_the_forward_pass_raises(tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    before = _hook_count(loaded.model)
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids

    def explode(tensor: torch.Tensor) -> None:
        raise ValueError("boom")

    needs = [Need("embed"), Need("blocks.0.mlp.out", explode, name="x"), Need("blocks.1.resid_post")]
    with pytest.raises(ValueError, match="boom"):
        run_forward(loaded, needs, input_ids=ids)
    assert _hook_count(loaded.model) == before
    # and the model still works afterwards, without stale captures
    assert set(run_forward(loaded, [Need("embed")], input_ids=ids)) == {"embed"}


def test_hooks_are_removed_when_resolving_a_later_point_fails(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    before = _hook_count(loaded.model)
    with (
        pytest.raises(InvalidParamsError, match="has 2 layers"),
        Capture(loaded.modules, [Need("embed"), Need("blocks.7.resid_pre")]),
    ):
        pass
    assert _hook_count(loaded.model) == before


def test_stop_early_skips_the_rest_of_the_model(tiny_models) -> None:
    loaded = tiny_models["llama"]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    calls = []
    handle = loaded.modules.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        run_forward(loaded, [Need("blocks.0.resid_post")], input_ids=ids)
        assert calls == []
        run_forward(loaded, [Need("blocks.0.resid_post")], input_ids=ids, stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()


def test_unknown_point_is_a_typed_error(tiny_models) -> None:
    with pytest.raises(InvalidParamsError, match="unknown hook point"):
        run_forward(tiny_models["gpt2"], [Need("blocks.0.nope")], input_ids=torch.tensor([[7, 8]]))


def test_bert_without_head_has_no_logits(tiny_models) -> None:
    with pytest.raises(InvalidParamsError, match="no language-model head"):
        run_forward(tiny_models["bert"], [Need("logits")], input_ids=torch.tensor([[3, 9, 4]]))
