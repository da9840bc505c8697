"""Tiny random models built in-process: GPT-2, Llama and BERT shapes, no files.

They are deterministic (seed 0), load in well under a second, and use a byte-level
tokenizer, so any text tokenizes with exact character offsets. Tests and demos of
plugins use them through the aliases ``tiny-gpt2``, ``tiny-llama`` and ``tiny-bert``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FAMILIES = ("gpt2", "llama", "bert")
SPECIALS = ("<pad>", "<bos>", "<eos>", "[CLS]", "[SEP]", "[MASK]")
D_MODEL, N_LAYERS, N_HEADS, D_MLP, MAX_POS = 64, 2, 4, 128, 512


def byte_tokenizer(family: str) -> Any:
    """A byte-level tokenizer: one token per UTF-8 byte, plus special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *sorted(alphabet)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    if family == "bert":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tiny(family: str, seed: int = 0) -> tuple[nn.Module, Any]:
    """Return ``(model, tokenizer)`` for a tiny random model of ``family``."""
    import transformers

    if family not in FAMILIES:
        from lmlens.errors import UnknownModelError

        raise UnknownModelError(f"no tiny model {family!r}; choose one of {', '.join(FAMILIES)}")
    tokenizer = byte_tokenizer(family)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    model: nn.Module
    config: Any
    if family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
            n_positions=MAX_POS, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
        )
        model = transformers.GPT2LMHeadModel(config)
    elif family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=D_MODEL, intermediate_size=D_MLP,
            num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2,
            max_position_embeddings=MAX_POS, initializer_range=0.2, pad_token_id=0,
            bos_token_id=1, eos_token_id=2,
        )
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.BertConfig(
            vocab_size=vocab, hidden_size=D_MODEL, num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS, intermediate_size=D_MLP, max_position_embeddings=MAX_POS,
            initializer_range=0.2, pad_token_id=0,
        )
        model = transformers.BertModel(config, add_pooling_layer=False)
    model.config.architectures = [type(model).__name__]
    model.set_attn_implementation("sdpa")
    model.eval()  # type: ignore[no-untyped-call]
    return model, tokenizer
