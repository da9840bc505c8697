"""GPT-2, Llama-family and BERT layouts."""

from __future__ import annotations

from collections.abc import Callable

from lmlens.architectures import Architecture, Tap
from lmlens.hookspecs import hookimpl

LLAMA = Architecture(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    prefixes=("model.", ""),
    blocks="layers",
    embed="embed_tokens",
    attn="self_attn",
    attn_out="self_attn",
    attn_out_tap=Tap.OUTPUT,
    mlp_out="mlp",
    final="norm",
    heads_in="self_attn.o_proj",
)

GPT2 = Architecture(
    name="gpt2",
    model_types=("gpt2",),
    prefixes=("transformer.", ""),
    blocks="h",
    embed="wte",
    attn="attn",
    attn_out="attn",
    attn_out_tap=Tap.OUTPUT,
    mlp_out="mlp",
    final="ln_f",
    heads_in="attn.c_proj",
)

BERT = Architecture(
    name="bert",
    model_types=("bert",),
    prefixes=("bert.", ""),
    blocks="encoder.layer",
    embed="embeddings.word_embeddings",
    attn="attention.self",
    attn_out="attention.output.dense",
    attn_out_tap=Tap.OUTPUT,
    mlp_out="output.dense",
    final=None,
    lm_head="cls",
    causal=False,
    heads_in="attention.output.dense",
)


@hookimpl
def register_architectures(register: Callable[[Architecture], None]) -> None:
    for arch in (LLAMA, GPT2, BERT):
        register(arch)
