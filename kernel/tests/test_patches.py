"""Write hooks: per-head reads and writes, steering, per-row patches, hook hygiene."""

from __future__ import annotations

import pytest
import torch

from lmlens import InvalidParamsError, Need, Patch, run_forward

TEXT = "Patches write where needs only read."


def ids_of(loaded, text: str = TEXT) -> torch.Tensor:
    return loaded.tokenizer(text, return_tensors="pt")["input_ids"]


def hook_count(loaded) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in loaded.model.modules())


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_heads_point_is_the_output_projection_input(tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    got = run_forward(loaded, [Need("blocks.1.attn.heads"), Need("blocks.1.attn.out")], input_ids=ids_of(loaded))
    heads, out = got["blocks.1.attn.heads"], got["blocks.1.attn.out"]
    info = loaded.info
    assert heads.shape == (1, out.shape[1], info.n_heads, info.d_head)
    proj = loaded.modules.head_mixer(1)
    expected = proj(heads.flatten(-2).double().to(proj.weight.dtype))  # an independent application of the projection
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_zeroing_every_head_leaves_only_the_projection_bias(tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    zero = Patch("blocks.0.attn.heads", lambda heads, ctx: torch.zeros_like(heads))
    got = run_forward(loaded, [Need("blocks.0.attn.out")], input_ids=ids_of(loaded), patches=[zero])
    out = got["blocks.0.attn.out"]
    bias = getattr(loaded.modules.head_mixer(0), "bias", None)
    expected = torch.zeros_like(out) if bias is None else bias.expand_as(out)
    torch.testing.assert_close(out, expected)


def test_steering_adds_a_vector_to_the_residual_stream(tiny_models) -> None:
    loaded = tiny_models["llama"]
    ids = ids_of(loaded)
    vector = torch.linspace(-1, 1, loaded.info.d_model)
    clean = run_forward(loaded, [Need("blocks.1.resid_pre")], input_ids=ids)["blocks.1.resid_pre"]
    steer = Patch("blocks.0.resid_post", lambda x, ctx: x + vector)
    got = run_forward(loaded, [Need("blocks.1.resid_pre")], input_ids=ids, patches=[steer])["blocks.1.resid_pre"]
    torch.testing.assert_close(got, clean + vector)


def test_activation_patching_swaps_in_another_run(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    clean_ids, other_ids = ids_of(loaded, "aaaa bbbb"), ids_of(loaded, "cccc dddd")
    saved = run_forward(loaded, [Need("blocks.0.resid_post")], input_ids=clean_ids)["blocks.0.resid_post"].clone()
    swap = Patch("blocks.0.resid_post", lambda x, ctx: saved)
    final_patched = run_forward(loaded, [Need("final")], input_ids=other_ids, patches=[swap])["final"]
    final_clean = run_forward(loaded, [Need("final")], input_ids=clean_ids)["final"]
    torch.testing.assert_close(final_patched, final_clean)  # everything after block 0 follows the swapped state


def test_per_row_patches_in_one_batch(tiny_models) -> None:
    loaded = tiny_models["llama"]
    ids = ids_of(loaded)
    clean = run_forward(loaded, [Need("final")], input_ids=ids)["final"]

    def zero_head_in_row_1(heads: torch.Tensor, ctx) -> torch.Tensor:
        mask = torch.ones_like(heads)
        mask[1, :, 0] = 0.0
        return heads * mask

    patches = [
        Patch("blocks.1.resid_pre", lambda x, ctx: x.expand(2, *x.shape[1:]).contiguous()),
        Patch("blocks.1.attn.heads", zero_head_in_row_1),
    ]
    got = run_forward(loaded, [Need("final")], input_ids=ids, patches=patches)["final"]
    assert got.shape[0] == 2
    torch.testing.assert_close(got[:1], clean, atol=1e-5, rtol=1e-5)  # row 0 untouched
    assert (got[1] - clean[0]).abs().max() > 1e-4  # row 1 ablated


def test_patterns_are_read_only(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    with pytest.raises(InvalidParamsError, match="read-only"):
        run_forward(
            loaded, [Need("final")], input_ids=ids_of(loaded), patches=[Patch("blocks.0.attn.pattern", lambda x, c: x)]
        )


def test_hooks_come_off_when_a_patch_raises(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    before = hook_count(loaded)

    def broken(x: torch.Tensor, ctx) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_forward(
            loaded, [Need("final")], input_ids=ids_of(loaded), patches=[Patch("blocks.0.attn.heads", broken)]
        )
    with pytest.raises(ValueError, match="changed the shape"):
        run_forward(
            loaded, [Need("final")], input_ids=ids_of(loaded),
            patches=[Patch("blocks.0.mlp.out", lambda x, c: x[:, :1])],
        )
    assert hook_count(loaded) == before
    assert not loaded.lock._is_owned()  # type: ignore[attr-defined]


def test_patch_context_names_the_point_and_layer(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    seen = []

    def record(x: torch.Tensor, ctx) -> torch.Tensor:
        seen.append((ctx.point, ctx.layer, ctx.loaded is loaded, tuple(ctx.input_ids.shape)))
        return x

    ids = ids_of(loaded)
    run_forward(loaded, [Need("final")], input_ids=ids, patches=[Patch("blocks.1.mlp.out", record)])
    assert seen == [("blocks.1.mlp.out", 1, True, tuple(ids.shape))]


def test_unknown_point_lists_what_exists(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    with pytest.raises(InvalidParamsError, match=r"blocks\.0\.attn\.heads"):
        run_forward(loaded, [Need("blocks.0.nowhere")], input_ids=ids_of(loaded))
