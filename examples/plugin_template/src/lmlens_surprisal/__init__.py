"""Per-token log-probability and surprisal: an example of an outside lmlens plugin."""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Sequence

import msgspec
import numpy as np
import torch

from lmlens import InvalidParamsError, Method, ModelInfo, Need, Result, Trace, hookimpl
from lmlens.wire import Float32Array

__version__ = importlib.metadata.version("lmlens-surprisal")  # one source of truth: the package metadata


class SurprisalParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class SurprisalResult(Result, frozen=True, kw_only=True, tag="surprisal"):
    logprob: Float32Array  # [pos], log p(token_i | tokens_<i) in nats; NaN for the first token
    bits: Float32Array  # [pos], surprisal -log2 p; NaN for the first token
    next_token: str  # the model's most likely token after the text
    next_logprob: float


def _needs(info: ModelInfo, params: SurprisalParams) -> Sequence[Need]:
    if not info.causal or not info.has_lm_head:
        raise InvalidParamsError("surprisal needs a causal language model", field="methods")
    return [Need("logits")]


def _run(trace: Trace, params: SurprisalParams) -> SurprisalResult:
    logprobs = torch.log_softmax(trace["logits"][0].float(), dim=-1)  # [pos, vocab]
    ids = trace.input_ids[0].to(logprobs.device)  # [pos]
    picked = logprobs[:-1].gather(1, ids[1:, None])[:, 0]  # [pos - 1]
    logprob = np.concatenate([[np.nan], picked.numpy(force=True)]).astype(np.float32)
    best = int(logprobs[-1].argmax())
    return SurprisalResult(
        logprob=logprob,
        bits=(-logprob / math.log(2)).astype(np.float32),
        next_token=trace.model.tokenizer.decode([best]),
        next_logprob=float(logprobs[-1, best]),
    )


SURPRISAL = Method(
    name="surprisal",
    description="per-token log-probability and surprisal (bits) under a causal LM",
    params=SurprisalParams,
    result=SurprisalResult,
    needs=_needs,
    run=_run,
    version=__version__,
    token_fields={"logprob": 0, "bits": 0},  # lets long documents be stitched back together
)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    register(SURPRISAL)
