"""Greedy generation with the KV cache, owned by the kernel like every other pass.

Generation is a loop of model calls that must see a consistent model: the whole loop
holds the model's lock, runs under ``inference_mode`` with SDPA attention, checks the
thread's cancellation token between tokens, and applies ``patches`` (steering vectors,
ablations) to every step through the same hooks ``run_forward`` uses, removed on
every exit path. Prompts are left-padded into one batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from lmlens.cancel import check_current
from lmlens.capture import Capture, Patch
from lmlens.models import LoadedModel


def _pad_id(loaded: LoadedModel) -> int:
    tok = loaded.tokenizer
    for cand in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)):
        if cand is not None:
            return int(cand)
    return 0


def _accepts(model: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def greedy_generate(
    loaded: LoadedModel,
    id_lists: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    stop: Callable[[int, list[int]], bool] | None = None,
    stop_at_newline: bool = True,
    patches: Iterable[Patch] = (),
) -> list[list[int]]:
    """Greedy continuations (token ids) of a batch of prompts.

    Each row stops at the end-of-sequence token, at a token containing a newline (with
    ``stop_at_newline``), after ``max_new_tokens``, or when ``stop(row, tokens_so_far)``
    says so. ``patches`` edit every step, the prompt pass included.
    """
    if not loaded.info.causal or not loaded.info.has_lm_head:
        from lmlens.errors import InvalidParamsError

        raise InvalidParamsError(f"{loaded.name} is not a causal language model: it cannot generate")
    model = loaded.model
    eos = getattr(loaded.tokenizer, "eos_token_id", None)
    width = max(len(x) for x in id_lists)
    ids = torch.full((len(id_lists), width), _pad_id(loaded), dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for i, row in enumerate(id_lists):
        ids[i, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    position = (mask.cumsum(-1) - 1).clamp_min(0)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    cache_arg = "cache" if _accepts(model, "cache") else "past_key_values"  # transformers 5 renamed it
    out_ids: list[list[int]] = [[] for _ in id_lists]
    done = [False] * len(id_lists)
    device = loaded.device
    capture = Capture(loaded.modules, [], patches=patches, loaded=loaded)
    with loaded.lock:
        loaded.set_eager_attention(False)
        with torch.inference_mode(), capture:
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position.to(device),
                use_cache=True,
                **extra,
            )
            for step in range(max_new_tokens):
                nxt = out.logits[:, -1].argmax(-1).cpu()
                for i, tok in enumerate(nxt.tolist()):
                    if done[i]:
                        continue
                    out_ids[i].append(int(tok))
                    newline = stop_at_newline and "\n" in loaded.tokenizer.decode([int(tok)])
                    if tok == eos or newline or (stop is not None and stop(i, out_ids[i])):
                        done[i] = True
                if all(done) or step == max_new_tokens - 1:
                    break
                check_current()
                mask = torch.cat([mask, torch.ones((len(id_lists), 1), dtype=torch.long)], dim=1)
                position = position[:, -1:] + 1
                out = model(
                    input_ids=nxt[:, None].to(device),
                    attention_mask=mask.to(device),
                    position_ids=position.to(device),
                    use_cache=True,
                    **{cache_arg: _cache_of(out)},
                    **extra,
                )
    return out_ids
