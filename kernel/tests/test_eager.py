"""``lmlens_eager``: the family's eager attention, with maps computed where a need asks."""

from __future__ import annotations

import pytest
import torch

from lmlens import eager
from lmlens.capture import Need
from lmlens.forward import run_forward
from lmlens.models import LoadedModel
from lmlens.testing import transformers_eager

TEXT = "The map is computed where the method keeps it, and nowhere else."


def _family_eager(loaded: LoadedModel, ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The family's own eager attention (transformers' code), as the independent reference."""
    out = transformers_eager(loaded, ids)
    return out.logits, out.attentions


def test_llama_uses_lmlens_eager_and_gpt2_and_bert_their_own(tiny_models: dict[str, LoadedModel]) -> None:
    chosen = {}
    for family, loaded in tiny_models.items():
        with loaded.lock:
            loaded.set_eager_attention(True)
            chosen[family] = loaded.model.config._attn_implementation
            loaded.set_eager_attention(False)
    assert chosen == {"llama": "lmlens_eager", "gpt2": "eager", "bert": "eager"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_maps_and_logits_as_the_familys_eager(tiny_models: dict[str, LoadedModel], dtype: torch.dtype) -> None:
    loaded = tiny_models["llama"]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    original = next(loaded.model.parameters()).dtype
    loaded.model.to(dtype)
    try:
        ref_logits, ref_maps = _family_eager(loaded, ids)
        n = loaded.info.n_layers
        needs = [Need("logits"), *(Need(f"blocks.{i}.attn.pattern") for i in range(n))]
        got = run_forward(loaded, needs, input_ids=ids)
    finally:
        loaded.model.to(original)
    assert loaded.model.config._attn_implementation == "lmlens_eager"
    for i in range(n):  # the same operations in the same order: bit for bit
        assert torch.equal(got[f"blocks.{i}.attn.pattern"], ref_maps[i])
    assert torch.equal(got["logits"], ref_logits)


def test_a_map_is_computed_in_the_destination_and_nothing_is_left_on_the_modules(
    tiny_models: dict[str, LoadedModel],
) -> None:
    loaded = tiny_models["llama"]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    _, ref_maps = _family_eager(loaded, ids)
    n_heads, pos = loaded.info.n_heads, ids.shape[1]
    buffer = torch.full((2, n_heads, pos, pos), float("nan"))
    shapes: list[torch.Size] = []

    def slot(layer: int):  # type: ignore[no-untyped-def]
        def into(shape: torch.Size) -> torch.Tensor:
            shapes.append(shape)
            return buffer[layer].unsqueeze(0)
        return into

    seen: dict[int, int] = {}
    needs = [
        Need(f"blocks.{i}.attn.pattern", lambda p, i=i: seen.setdefault(i, p.data_ptr()), name=f"p{i}", into=slot(i))
        for i in range(2)
    ]
    run_forward(loaded, needs, input_ids=ids)
    assert shapes == [torch.Size((1, n_heads, pos, pos))] * 2
    for i in range(2):
        assert seen[i] == buffer[i].data_ptr()  # the reducer saw the destination itself
        assert torch.equal(buffer[i], ref_maps[i][0])
    assert not any(hasattr(m, eager.DESTINATION) for m in loaded.model.modules())

    def fails(p: torch.Tensor) -> None:
        raise RuntimeError("a reducer fails")

    with pytest.raises(RuntimeError, match="a reducer fails"):
        run_forward(loaded, [Need("blocks.0.attn.pattern", fails, into=slot(0))], input_ids=ids)
    assert not any(hasattr(m, eager.DESTINATION) for m in loaded.model.modules())


def test_a_destination_that_declines_leaves_the_model_to_allocate(tiny_models: dict[str, LoadedModel]) -> None:
    loaded = tiny_models["llama"]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    _, ref_maps = _family_eager(loaded, ids)
    got = run_forward(loaded, [Need("blocks.1.attn.pattern", into=lambda shape: None)], input_ids=ids)
    assert torch.equal(got["blocks.1.attn.pattern"], ref_maps[1])
