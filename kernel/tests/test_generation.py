"""Greedy generation with the KV cache: equal to an uncached argmax loop, patches apply to every step."""

from __future__ import annotations

import torch

from lmlens import Need, Patch, greedy_generate, run_forward


def uncached(loaded, ids: list[int], n: int, patches=()) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        logits = run_forward(loaded, [Need("logits")], input_ids=torch.tensor([ids + out]), patches=patches)["logits"]
        out.append(int(logits[0, -1].argmax()))
    return out


def test_greedy_generate_equals_an_uncached_loop_for_a_ragged_batch(tiny_models) -> None:
    loaded = tiny_models["llama"]
    prompts = [loaded.tokenizer(t)["input_ids"] for t in ("abc", "a longer prompt here")]
    got = greedy_generate(loaded, prompts, 5, stop_at_newline=False)
    eos = loaded.tokenizer.eos_token_id
    for prompt, row in zip(prompts, got, strict=True):
        ref = uncached(loaded, prompt, 5)
        if eos in ref:
            ref = ref[: ref.index(eos) + 1]
        assert row == ref


def test_patches_steer_every_generated_token(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    prompt = loaded.tokenizer("steer me")["input_ids"]
    vector = torch.randn(loaded.info.d_model, generator=torch.Generator().manual_seed(0)) * 20
    steer = [Patch("blocks.0.resid_post", lambda x, ctx: x + vector)]
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in loaded.model.modules())
    steered = greedy_generate(loaded, [prompt], 4, stop_at_newline=False, patches=steer)[0]
    assert steered == uncached(loaded, prompt, 4, patches=steer)[: len(steered)]
    assert steered != greedy_generate(loaded, [prompt], 4, stop_at_newline=False)[0]
    hooks_after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in loaded.model.modules())
    assert hooks_after == hooks_before  # ours came off (transformers may keep its own recorders)
