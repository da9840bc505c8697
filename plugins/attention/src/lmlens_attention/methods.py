"""The plugin's methods: parameter and result Structs, needs, and run functions.

The work lives in the concept modules (scores, probes, classification, importance,
rollout); this module wires them to the kernel's Method contract.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
import torch

from lmlens import InvalidParamsError, Method, ModelInfo, Need, Plan, Result, Trace
from lmlens.wire import Float32Array
from lmlens_attention import classification, flow, importance, rollout, scores
from lmlens_attention.probes import PROBE_CACHE
from lmlens_attention.selection import check_range, pick
from lmlens_attention.threading_policy import on_one_thread

__version__ = importlib.metadata.version("lmlens-attention")  # one source of truth: the package metadata

Int32Array = npt.NDArray[np.int32]


def _tensor(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().numpy(force=True).astype(np.float32, copy=False)


# --- attention ------------------------------------------------------------------------------


class AttentionParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    layers: list[int] | None = None  # None: every layer; negative counts from the end
    heads: list[int] | None = None  # None: every head
    patterns: bool = True  # keep the full [q_pos, k_pos] maps (the per-head summaries are always kept)
    top_k: int = 3  # attended tokens kept per query token (0: none, a little faster)


class AttentionResult(Result, frozen=True, kw_only=True, tag="attention"):
    layers: list[int]
    heads: list[int]
    patterns: Float32Array | None  # [layer, head, q_pos, k_pos], rows sum to 1
    entropy: Float32Array  # [layer, head], nats, mean over query positions
    sink_mass: Float32Array | None = None  # [layer, head]: mean share of attention on token 0
    mean_distance: Float32Array | None = None  # [layer, head]: mean |q - k| weighted by attention
    top_keys: Int32Array | None = None  # [layer, head, q_pos, top_k]: most attended key positions
    top_weights: Float32Array | None = None  # [layer, head, q_pos, top_k]: their weights


def attention_summary(pattern: torch.Tensor, causal: bool, top_k: int) -> dict[str, torch.Tensor]:
    """[batch, head, q, k] -> per-head summaries; the map itself is not kept.

    Top-k runs over whole rows in one call: the zeros above a causal diagonal never
    outrank a weight, and one sorted top-k over contiguous rows cost what the eight
    row-block calls cost before their merge, sort and gather (SmolLM2, 512 tokens:
    5.8 ms per layer against 8 ms; the summary as a whole went from 16 ms to 10 ms).
    """
    k = min(top_k, pattern.shape[-1])
    shape = (*pattern.shape[:-1], 0)
    if k:
        top = torch.topk(pattern, k=k, dim=-1, sorted=True)
        top_weights, top_keys = top.values.float(), top.indices
    else:
        top_weights, top_keys = torch.zeros(shape), torch.zeros(shape, dtype=torch.long)
    return {
        "entropy": scores.attention_entropy(pattern, causal),  # [batch, head]
        "sink_mass": scores.sink_mass(pattern, causal),  # [batch, head]
        "mean_distance": scores.mean_attention_distance(pattern, causal),  # [batch, head]
        "top_keys": top_keys,  # [batch, head, q, top_k]
        "top_weights": top_weights,  # [batch, head, q, top_k]
    }


class PatternBuffer:
    """Collects the kept maps of one pass straight into one ``[layer, head, q, k]`` buffer.

    For the families the kernel's ``lmlens_eager`` attention covers, ``into`` hands the
    model the buffer's slot and the map is computed there: nothing is copied. Otherwise
    each layer's hook copies its map in while it is still warm in cache and the
    per-layer tensors are dropped, so the result costs one copy of the patterns in
    memory instead of the per-layer maps plus a stacked copy of them. (Copying into
    283 MB of fresh memory on SmolLM2 at 512 tokens cost about a fifth of the pass.)
    """

    def __init__(self, n_layers: int, heads: list[int] | None) -> None:
        self.n_layers = n_layers
        self.heads = heads  # None: all heads, no gather needed
        self.buffer: torch.Tensor | None = None  # [layer, head, q, k] float32

    def into(self, shape: torch.Size, slot: int) -> torch.Tensor | None:
        """Where the model may compute layer ``slot``'s map itself (see ``Need.into``)."""
        if self.heads is not None or shape[0] != 1:
            return None  # some heads only, or several rows: ``keep`` copies what it keeps
        if self.buffer is None:
            self.buffer = torch.empty((self.n_layers, *shape[1:]), dtype=torch.float32, device="cpu")
        if self.buffer.shape[1:] != shape[1:]:
            return None
        return self.buffer[slot].unsqueeze(0)  # [1, head, q, k], contiguous

    def keep(self, pattern: torch.Tensor, slot: int) -> PatternBuffer:
        maps = pattern[0] if self.heads is None else pattern[0, self.heads]  # [head, q, k]
        if self.buffer is None:
            self.buffer = torch.empty((self.n_layers, *maps.shape), dtype=torch.float32, device="cpu")
        if maps.data_ptr() != self.buffer[slot].data_ptr():  # not computed in place already
            self.buffer[slot].copy_(maps)
        return self


@dataclass(frozen=True)
class AttentionPlan:
    """What ``_attention_plan`` decided once per request, handed to ``_attention_run``."""

    layers: list[int]
    heads: list[int]
    buffer: PatternBuffer | None  # filled by the pass when patterns are kept


def _attention_plan(info: ModelInfo, params: AttentionParams) -> Plan:
    layers = pick(params.layers, info.n_layers, "layer", "attention")
    heads = pick(params.heads, info.n_heads, "head", "attention")
    check_range(params.top_k, 0, 64, "top_k", "attention")
    reducer = on_one_thread(partial(attention_summary, causal=info.causal, top_k=params.top_k))
    buffer = PatternBuffer(len(layers), None if heads == list(range(info.n_heads)) else heads)
    needs = []
    for slot, layer in enumerate(layers):
        point = f"blocks.{layer}.attn.pattern"
        needs.append(Need(point, reducer, name=f"summary.{layer}"))
        if params.patterns:
            keep = on_one_thread(partial(buffer.keep, slot=slot))
            into = partial(buffer.into, slot=slot)
            needs.append(Need(point, keep, name=f"patterns.{layer}", keeps=len(heads) / info.n_heads, into=into))
    return Plan(needs=needs, state=AttentionPlan(layers, heads, buffer if params.patterns else None))


def _attention_run(trace: Trace, params: AttentionParams) -> AttentionResult:
    info = trace.model.info
    plan: AttentionPlan = trace.state
    layers, heads = plan.layers, plan.heads
    all_heads = heads == list(range(info.n_heads))
    index = torch.tensor(heads)
    summaries = [trace[f"summary.{layer}"] for layer in layers]

    def gather(name: str) -> torch.Tensor:  # [layer, head, ...]
        stacked = torch.stack([s[name][0] for s in summaries])
        return stacked if all_heads else stacked.index_select(1, index)

    patterns = None
    if plan.buffer is not None:
        assert plan.buffer.buffer is not None, "every kept layer wrote its slot"
        patterns = plan.buffer.buffer.numpy()
        plan.buffer.buffer = None  # the result owns it: the next window of a document gets its own
    return AttentionResult(
        layers=layers,
        heads=heads,
        patterns=patterns,
        entropy=_tensor(gather("entropy")),
        sink_mass=_tensor(gather("sink_mass")),
        mean_distance=_tensor(gather("mean_distance")),
        top_keys=gather("top_keys").numpy(force=True).astype(np.int32) if params.top_k else None,
        top_weights=_tensor(gather("top_weights")) if params.top_k else None,
    )


ATTENTION = Method(
    name="attention",
    description="attention patterns [layer, head, q, k]; per-head entropy, sink mass, mean "
    "distance; top attended tokens per token",
    params=AttentionParams,
    result=AttentionResult,
    plan=_attention_plan,
    run=_attention_run,
    version=__version__,
    batchable=True,  # shared-pass needs from a padded batch: tested equal to per-text
    tags=("default",),
)


# --- head_patterns --------------------------------------------------------------------------


class HeadPatternsParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    corpus: list[str] = []  # more texts to classify over (beside the analysed text)
    probe_length: int = 32  # length of the random run that the probe repeats
    probe_batch: int = 8  # probe sequences, all in one batched pass
    seed: int = 0  # of the probe's random tokens
    window: int = 3  # tokens either side that count as local
    threshold: float = 0.4  # a category's score that makes it a head's label
    max_corpus_tokens: int = 512  # corpus texts are cut to this many tokens


class HeadPatternsResult(Result, frozen=True, kw_only=True, tag="head_patterns"):
    layers: list[int]
    heads: list[int]
    categories: list[str]  # rows of ``scores`` and ``spread``
    scores: Float32Array  # [category, layer, head] in [0, 1]
    spread: Float32Array  # [category, layer, head]: standard deviation over texts / probe sequences
    labels: list[list[str]]  # [layer][head]: the best category above threshold, else "mixed"
    confidence: Float32Array  # [layer, head]: share of samples that agree with the label
    induction_heads: list[list[int]]  # [layer, head] pairs with induction >= threshold, strongest first
    n_texts: int
    n_probe_sequences: int
    probe_cached: bool  # the probe scores came from the cache, not a new pass


def _check_head_patterns(info: ModelInfo, params: HeadPatternsParams) -> None:
    limit = (info.max_positions or 4096) // 2 - 2
    check_range(params.probe_length, 4, min(limit, 512), "probe_length", "head_patterns")
    check_range(params.probe_batch, 1, 64, "probe_batch", "head_patterns")
    check_range(params.window, 1, 64, "window", "head_patterns")
    check_range(params.threshold, 0.01, 1.0, "threshold", "head_patterns")
    check_range(params.max_corpus_tokens, 2, info.max_positions or 4096, "max_corpus_tokens", "head_patterns")
    if len(params.corpus) > 256:
        raise InvalidParamsError("at most 256 corpus texts", field="params.head_patterns.corpus")
    if any(not t.strip() for t in params.corpus):
        raise InvalidParamsError("corpus texts must not be empty", field="params.head_patterns.corpus")


def _head_patterns_needs(info: ModelInfo, params: HeadPatternsParams) -> Sequence[Need]:
    _check_head_patterns(info, params)
    return classification.text_needs(info, params.window, "head_patterns.text")


def _head_patterns_run(trace: Trace, params: HeadPatternsParams) -> HeadPatternsResult:
    loaded = trace.model
    info = loaded.info
    text = classification.stack_layers([trace[f"head_patterns.text.{i}"] for i in range(info.n_layers)])
    if params.corpus:
        more = classification.corpus_text_scores(loaded, params.corpus, params.window, params.max_corpus_tokens)
        text = np.concatenate([text, more])
    if trace.cache is not None:  # the analyzer's cache (Redis in a service): every process shares probes
        PROBE_CACHE.use_shared(trace.cache)
    probe, cached = PROBE_CACHE.scores(loaded, params.probe_length, params.probe_batch, params.seed)
    found = classification.classify(text, probe, params.threshold)
    induction = found.scores[classification.CATEGORIES.index("induction")]  # [layer, head]
    order = np.argsort(-induction, axis=None)
    induction_heads = [
        [int(i), int(h)]
        for i, h in zip(*np.unravel_index(order, induction.shape), strict=True)
        if induction[i, h] >= params.threshold
    ]
    return HeadPatternsResult(
        layers=list(range(info.n_layers)),
        heads=list(range(info.n_heads)),
        categories=list(classification.CATEGORIES),
        scores=found.scores,
        spread=found.spread,
        labels=found.labels,
        confidence=found.confidence,
        induction_heads=induction_heads,
        n_texts=int(text.shape[0]),
        n_probe_sequences=int(probe.shape[0]),
        probe_cached=cached,
    )


HEAD_PATTERNS = Method(
    name="head_patterns",
    description="classify every head: previous-token, induction, duplicate-token, positional, "
    "sink, and local vs global, with scores in [0, 1] and a per-head confidence",
    params=HeadPatternsParams,
    result=HeadPatternsResult,
    needs=_head_patterns_needs,
    run=_head_patterns_run,
    version=__version__,
    batchable=True,  # shared-pass needs from a padded batch: tested equal to per-text
)


# --- head_importance ------------------------------------------------------------------------


class HeadImportanceParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ablations: list[Literal["zero", "mean"]] = msgspec.field(default_factory=lambda: ["zero", "mean"])
    layers: list[int] | None = None  # None: every layer
    batch_size: int = 0  # ablated copies of the text per forward pass; 0: about 2048 tokens per pass
    # exact: one ablated copy of the text per (kind, layer, head); attribution: a first-order
    # estimate from one forward and one backward pass (attribution patching), causal LMs only;
    # hybrid: attribution ranks the heads, then the ``top`` heads of each kind are ablated exactly
    mode: Literal["exact", "attribution", "hybrid"] = "exact"
    top: int = 30  # hybrid: heads per kind ablated exactly


class HeadImportanceResult(Result, frozen=True, kw_only=True, tag="head_importance"):
    layers: list[int]
    heads: list[int]
    metric: str  # "next_token_loss" (nats/token, causal LMs) or "final_state_change" (encoders)
    clean: float  # the metric without ablation (0 for final_state_change)
    zero: Float32Array | None  # [layer, head]: metric with the head zeroed, minus clean
    mean: Float32Array | None  # [layer, head]: metric with the head's output replaced by its mean
    n_passes: int  # forward passes used, the clean one included (attribution: 1, with its backward)
    mode: str = "exact"  # "attribution": zero and mean are first-order estimates
    # hybrid: [layer, head] True where the value is an exact ablation (else the estimate)
    exact_zero: list[list[bool]] | None = None
    exact_mean: list[list[bool]] | None = None


def _importance_needs(info: ModelInfo, params: HeadImportanceParams) -> Sequence[Need]:
    pick(params.layers, info.n_layers, "layer", "head_importance")
    check_range(params.batch_size, 0, 512, "batch_size", "head_importance")
    if not params.ablations:
        raise InvalidParamsError("ask for at least one ablation", field="params.head_importance.ablations")
    check_range(params.top, 0, 100000, "top", "head_importance")
    if params.mode != "exact" and not (info.causal and info.has_lm_head):
        raise InvalidParamsError(
            f'mode "{params.mode}" estimates the change of the next-token loss and needs a causal language '
            'model; use mode "exact" for this model',
            field="params.head_importance.mode",
        )
    return []  # the ablation passes are the method's own


def _importance_run(trace: Trace, params: HeadImportanceParams) -> HeadImportanceResult:
    info = trace.model.info
    layers = pick(params.layers, info.n_layers, "layer", "head_importance")
    kinds = list(dict.fromkeys(params.ablations))
    if params.mode == "attribution":
        found = importance.head_attribution(trace.model, trace.input_ids, layers, kinds)
    elif params.mode == "hybrid":
        found = importance.head_hybrid(trace.model, trace.input_ids, layers, kinds, params.batch_size, params.top)
    else:
        found = importance.head_importance(trace.model, trace.input_ids, layers, kinds, params.batch_size)
    return HeadImportanceResult(
        layers=layers,
        heads=list(range(info.n_heads)),
        metric=found.metric,
        clean=found.clean,
        zero=found.effects.get("zero"),
        mean=found.effects.get("mean"),
        n_passes=found.n_passes,
        mode=params.mode,
        exact_zero=found.exact["zero"].tolist() if found.exact and "zero" in found.exact else None,
        exact_mean=found.exact["mean"].tolist() if found.exact and "mean" in found.exact else None,
    )


HEAD_IMPORTANCE = Method(
    name="head_importance",
    description="effect of each head on the loss over the text, by zero and mean ablation "
    "in batched passes, estimated from one forward and one backward pass (mode attribution), "
    "or estimated and then exact for the top heads (mode hybrid)",
    params=HeadImportanceParams,
    result=HeadImportanceResult,
    needs=_importance_needs,
    run=_importance_run,
    version=__version__,
    batchable=True,  # shared-pass needs from a padded batch: tested equal to per-text
)


# --- attention_rollout ----------------------------------------------------------------------


class RolloutParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    residual: bool = True  # add the identity for the residual stream (Abnar and Zuidema)
    head_fusion: Literal["mean", "max", "min"] = "mean"
    per_layer: bool = False  # also return the rollout after every layer
    flow: bool = False  # also attention flow: one max-flow per token pair, so short texts only


class RolloutResult(Result, frozen=True, kw_only=True, tag="attention_rollout"):
    residual: bool
    head_fusion: str
    rollout: Float32Array  # [q_pos, k_pos]: share of output position q drawn from input token k
    per_layer: Float32Array | None  # [layer, q_pos, k_pos]: the rollout up to each layer
    flow: Float32Array | None = None  # [q_pos, k_pos]: attention flow, rows normalised to 1


MAX_FLOW_WORK = 32 * 32 * 12  # token pairs x layers (15 tokens x 30 layers took 5.8 s on two busy cores)


def max_flow_tokens(n_layers: int) -> int:
    """The longest text whose attention flow stays within MAX_FLOW_WORK (20 tokens for 30 layers)."""
    return int((MAX_FLOW_WORK / max(n_layers, 1)) ** 0.5)


def _rollout_needs(info: ModelInfo, params: RolloutParams) -> Sequence[Need]:
    reducer = rollout.fusion_reducer(params.head_fusion)
    return [
        Need(f"blocks.{i}.attn.pattern", reducer, name=f"attention_rollout.fused.{i}", keeps=1 / info.n_heads)
        for i in range(info.n_layers)
    ]


def _rollout_run(trace: Trace, params: RolloutParams) -> RolloutResult:
    fused = [trace[f"attention_rollout.fused.{i}"][0] for i in range(trace.model.info.n_layers)]
    rolled = rollout.attention_rollout(fused, params.residual)  # [layer, q, k] float64
    flows = None
    if params.flow:
        n, n_layers = len(trace.tokens), trace.model.info.n_layers
        limit = max_flow_tokens(n_layers)
        if n > limit:
            raise InvalidParamsError(
                f"attention flow needs one max-flow per token pair through {n_layers} layers; "
                f"the text has {n} tokens, the limit for this model is {limit} (rollout has no limit)",
                field="params.attention_rollout.flow",
            )
        flows = _tensor(flow.attention_flow([rollout.layer_transition(a, params.residual) for a in fused]))
    return RolloutResult(
        residual=params.residual,
        head_fusion=params.head_fusion,
        rollout=_tensor(rolled[-1]),
        per_layer=_tensor(rolled) if params.per_layer else None,
        flow=flows,
    )


ATTENTION_ROLLOUT = Method(
    name="attention_rollout",
    description="attention rollout with the residual term, and attention flow for short texts "
    "(Abnar and Zuidema 2020)",
    params=RolloutParams,
    result=RolloutResult,
    needs=_rollout_needs,
    run=_rollout_run,
    version=__version__,
    batchable=True,  # shared-pass needs from a padded batch: tested equal to per-text
)

METHODS = (ATTENTION, HEAD_PATTERNS, HEAD_IMPORTANCE, ATTENTION_ROLLOUT)
