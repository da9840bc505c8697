"""Memory and time estimates, computed from the model's config and the methods' needs.

Nothing runs: the estimate comes before any work, so a request that would not fit is
refused with advice instead of failing half-way. The constants below describe what
one float32 forward pass allocates on top of what the methods keep; the benchmark
(benchmarks/bench_streaming.py) checks them against measured peak memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from lmlens.capture import Need
from lmlens.method import Method
from lmlens.models import ModelInfo
from lmlens.wire import FieldAccess

GB = 1024**3
DEFAULT_FLOPS_PER_SECOND = 2.0e10  # two CPU cores in float32; replaced by measured throughput

# Transient buffers of one eager attention layer, each [head, q, k]: the scores and the
# softmax output (the mask is added in place). Calibrated on SmolLM2-135M at 512 and
# 2048 tokens (benchmarks/bench_streaming.py): measured within 15% of this model.
EAGER_ATTENTION_COPIES = 2
# Transient MLP buffers (gate, up, activation, product), each [pos, d_mlp].
MLP_COPIES = 4
# Residual-stream sized buffers alive at once (input, norm output, q/k/v, output...).
RESID_COPIES = 8


class MemoryBreakdown(FieldAccess, msgspec.Struct, frozen=True, kw_only=True):
    weights_gb: float
    activations_gb: float
    attention_gb: float
    gradients_gb: float
    total_gb: float


class ProcessingEstimate(FieldAccess, msgspec.Struct, frozen=True, kw_only=True):
    """What an analysis will cost, before it runs.

    Read as attributes or keys: ``found["memory_estimate_gb"]["total_gb"]``.
    """

    n_tokens: int
    window_size: int  # tokens per forward pass (== n_tokens when not chunked)
    n_windows: int
    memory_estimate_gb: MemoryBreakdown
    estimated_seconds: float
    limit_gb: float
    fits: bool
    reasons: list[str] = []  # why the work would be refused (memory, tokens per pass); empty when it fits


def _dtype_bytes(info: ModelInfo) -> int:
    return 2 if info.dtype in ("float16", "bfloat16") else 8 if info.dtype == "float64" else 4


def kept_bytes(info: ModelInfo, needs: Iterable[Need], n: int) -> tuple[float, float]:
    """Bytes the needs keep after the pass: (attention maps, everything else)."""
    b = _dtype_bytes(info)
    attention = other = 0.0
    for need in needs:
        if need.reducer is not None and need.keeps is None:
            other += info.n_heads * n * 4  # a summary: at most one number per head and token
            continue
        share = 1.0 if need.reducer is None else float(need.keeps or 0.0)
        if need.point.endswith("attn.pattern"):
            attention += share * info.n_heads * n * n * b
        elif need.point == "logits":
            other += share * n * info.vocab_size * b
        else:
            other += share * n * info.d_model * b
    return attention, other


def transient_bytes(info: ModelInfo, needs: Sequence[Need], n: int) -> tuple[float, float]:
    """Peak bytes one forward pass allocates and frees: (attention, everything else)."""
    b = _dtype_bytes(info)
    eager = any(need.point.endswith("attn.pattern") for need in needs)
    attention = EAGER_ATTENTION_COPIES * info.n_heads * n * n * b if eager else 0.0
    other = (MLP_COPIES * info.d_mlp + RESID_COPIES * info.d_model) * n * b
    if any(need.point == "logits" for need in needs):
        other += n * info.vocab_size * b  # one logits-sized temporary (a log-softmax) beside the kept logits
    return attention, other


def forward_flops(info: ModelInfo, n: int) -> float:
    """Multiply-adds x 2 of one pass: the weights once per token, plus QK^T and AV."""
    return 2.0 * info.n_params * n + 4.0 * info.n_layers * n * n * info.d_model


def estimate(
    info: ModelInfo,
    methods: Sequence[Method],
    params: dict[str, Any],
    *,
    n_tokens: int,
    window_size: int | None = None,
    stride: int | None = None,
    limit_gb: float,
    flops_per_second: float = DEFAULT_FLOPS_PER_SECOND,
    needs: Sequence[Need] | None = None,
    token_limit: int | None = None,
) -> ProcessingEstimate:
    """``needs``: the planned needs of the shared pass (planned once per request);
    ``token_limit``: the most tokens one pass may hold, so the estimate refuses what
    ``analyze`` would refuse."""
    window = min(window_size or n_tokens, n_tokens)
    stride = stride or window
    n_windows = 1 if n_tokens <= window else 1 + -(-(n_tokens - window) // stride)
    if needs is None:
        needs = [need for m in methods for need in m.make_plan(info, params[m.name]).needs]
    kept_attention, kept_other = kept_bytes(info, needs, window)
    if n_windows > 1:
        # A streaming consumer still holds window i (``for w in stream`` rebinds ``w`` only
        # after the next window is computed), so two windows' kept results coexist.
        kept_attention, kept_other = 2 * kept_attention, 2 * kept_other
    transient_attention, transient_other = transient_bytes(info, needs, window)
    gradients = sum(
        m.extra_bytes(info, params[m.name], window) for m in methods if m.extra_bytes is not None
    )
    weights = info.n_params * _dtype_bytes(info)
    attention = kept_attention + transient_attention
    activations = kept_other + transient_other
    total = weights + attention + activations + gradients
    seconds = n_windows * forward_flops(info, window) / flops_per_second
    reasons = []
    if total / GB > limit_gb:
        reasons.append(
            f"needs an estimated {total / GB:.3g} GB; the limit is {limit_gb:g} GB (MEMORY_LIMIT_GB)"
        )
    if token_limit is not None and window > token_limit:
        reasons.append(
            f"{window} tokens in one pass; the limit is {token_limit} (MAX_SEQUENCE_LENGTH or the model's "
            "context): use streaming or analyze_efficient with a smaller window"
        )
    return ProcessingEstimate(
        n_tokens=n_tokens,
        window_size=window,
        n_windows=n_windows,
        memory_estimate_gb=MemoryBreakdown(
            weights_gb=weights / GB,
            activations_gb=activations / GB,
            attention_gb=attention / GB,
            gradients_gb=gradients / GB,
            total_gb=total / GB,
        ),
        estimated_seconds=seconds,
        limit_gb=limit_gb,
        fits=not reasons,
        reasons=reasons,
    )
