"""Per-token log-probability and surprisal: an example of an outside lmlens plugin.

It shows the three things most methods need: a plan (checked once per request), a
need with a reducer (the next-token entropy is computed inside the hook, so only a
``[pos]`` vector is kept, not another ``[pos, vocab]`` tensor), and an extra pass through
the kernel's ``run_forward`` (the same tokens after a ``prefix``).
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np
import torch

from lmlens import (
    Float32Array,
    InvalidParamsError,
    Method,
    ModelInfo,
    Need,
    Plan,
    Result,
    Trace,
    hookimpl,
    run_forward,
    special_positions,
)

__version__ = importlib.metadata.version("lmlens-surprisal")  # one source of truth: the package metadata


class SurprisalParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # an extra pass: the text's tokens again, after this prefix ("how much does the context help?")
    prefix: str | None = None


class SurprisalResult(Result, frozen=True, kw_only=True, tag="surprisal"):
    logprob: Float32Array  # [pos], log p(token_i | tokens_<i) in nats; NaN for the first token
    bits: Float32Array  # [pos], surprisal -log2 p; NaN for the first token
    next_token: str  # the model's most likely token after the text
    next_logprob: float
    entropy_bits: Float32Array  # [pos], entropy of the next-token distribution after each token
    prefix_bits: Float32Array | None = None  # [pos], surprisal after `prefix`; NaN for special tokens


def _entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """A reducer: runs inside the hook on [1, pos, vocab] logits and keeps only [pos]."""
    logprobs = torch.log_softmax(logits[0].float(), dim=-1)
    return -(logprobs.exp() * logprobs).sum(-1).cpu() / math.log(2)


def _plan(info: ModelInfo, params: SurprisalParams) -> Plan:
    if not info.causal or not info.has_lm_head:
        raise InvalidParamsError("surprisal needs a causal language model", field="methods")
    if params.prefix is not None and not params.prefix.strip():
        raise InvalidParamsError("prefix is empty", field="params.surprisal.prefix")
    return Plan(needs=[Need("logits"), Need("logits", _entropy_bits, name="entropy")])


def _needs(info: ModelInfo, params: SurprisalParams) -> Sequence[Need]:
    return _plan(info, params).needs


def _token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    """logits [pos, vocab], ids [pos] -> [pos - 1]: log p(ids[i] | ids[:i]) for i >= 1."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs[:-1].gather(1, ids[1:, None].to(logprobs.device))[:, 0].numpy(force=True)


def _prefix_bits(trace: Trace, prefix: str) -> np.ndarray:
    """The extra pass: prefix tokens, then the text's own tokens (special tokens dropped)."""
    loaded = trace.model
    special = special_positions(loaded.tokenizer, trace.tokens)
    keep = [i for i, s in enumerate(special) if not s]
    head = loaded.tokenizer(prefix, add_special_tokens=True, return_tensors="pt")["input_ids"][0]
    ids = torch.cat([head, trace.input_ids[0][keep].cpu()])[None]  # [1, n_prefix + n_text]
    logits = run_forward(loaded, [Need("logits")], input_ids=ids)["logits"][0]
    picked = _token_logprobs(logits, ids[0])[len(head) - 1 :]  # one per kept text token
    bits = np.full(len(trace.tokens), np.nan, dtype=np.float32)
    bits[keep] = -picked / math.log(2)
    return bits


def _run(trace: Trace, params: SurprisalParams) -> SurprisalResult:
    logits = trace["logits"][0]  # [pos, vocab]
    logprob = np.concatenate([[np.nan], _token_logprobs(logits, trace.input_ids[0])]).astype(np.float32)
    last = torch.log_softmax(logits[-1].float(), dim=-1)
    best = int(last.argmax())
    return SurprisalResult(
        logprob=logprob,
        bits=(-logprob / math.log(2)).astype(np.float32),
        next_token=trace.model.tokenizer.decode([best]),
        next_logprob=float(last[best]),
        entropy_bits=trace["entropy"].numpy().astype(np.float32),
        prefix_bits=_prefix_bits(trace, params.prefix) if params.prefix else None,
    )


SURPRISAL = Method(
    name="surprisal",
    description="per-token log-probability and surprisal (bits) under a causal LM",
    params=SurprisalParams,
    result=SurprisalResult,
    needs=_needs,
    plan=_plan,
    run=_run,
    version=__version__,
    token_fields={"logprob": 0, "bits": 0, "entropy_bits": 0},  # lets long documents be stitched back together
)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    register(SURPRISAL)


def surprisal_panel(result: Any, *, save_path: str | None = None, unit: str = "bits", **options: Any) -> Any:
    """A bar per token: its surprisal in bits (or nats). Bokeh loads here, not at discovery."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    found = result.methods.get("surprisal") if hasattr(result, "methods") else result
    if not isinstance(found, SurprisalResult):
        raise InvalidParamsError("the analysis has no surprisal result to draw", field="method")
    if unit not in ("bits", "nats"):
        raise InvalidParamsError(f"unit must be bits or nats, not {unit!r}", field="unit")
    values = found.bits if unit == "bits" else -found.logprob
    labels = [f"{i}: {t.text or t.piece}" for i, t in enumerate(result.tokens)] if hasattr(result, "tokens") else []
    source = ColumnDataSource({"x": list(range(len(values))), "top": np.nan_to_num(values).tolist(),
                               "token": labels or [str(i) for i in range(len(values))]})
    fig = figure(title=f"surprisal ({unit}); next token {found.next_token!r}", width=560, height=220,
                 tools="save,reset,xwheel_zoom,xpan", toolbar_location="right")
    fig.vbar(x="x", top="top", width=0.8, source=source, color="#4c72b0")
    fig.add_tools(HoverTool(tooltips=[("token", "@token"), (unit, "@top{0.00}")]))
    fig.xaxis.axis_label = "token position"
    fig.yaxis.axis_label = unit
    if save_path is not None:
        from bokeh.embed import file_html
        from bokeh.resources import INLINE  # a saved page opens offline

        with open(save_path, "w", encoding="utf-8") as out:
            out.write(file_html(fig, INLINE, "surprisal"))
    return fig


# Optional, for the dashboard: the selectors it shows above this panel (adapters/dashboard README).
surprisal_panel.controls = lambda result: {"unit": ["bits", "nats"]}  # type: ignore[attr-defined]


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("surprisal", surprisal_panel)
