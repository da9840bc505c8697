"""Per-token log-probability and surprisal: an example of an outside lmlens plugin."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np
import torch

from lmlens import InvalidParamsError, Method, ModelInfo, Need, Result, Trace, hookimpl
from lmlens.wire import Float32Array

__version__ = "0.1.0"


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
        from bokeh.resources import CDN

        with open(save_path, "w", encoding="utf-8") as out:
            out.write(file_html(fig, CDN, "surprisal"))
    return fig


# Optional, for the dashboard: the selectors it shows above this panel (adapters/dashboard README).
surprisal_panel.controls = lambda result: {"unit": ["bits", "nats"]}  # type: ignore[attr-defined]


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("surprisal", surprisal_panel)
