"""The plugin's two methods: parameter and result Structs, plans and run functions."""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np
import torch

from lmlens import InvalidParamsError, LoadedModel, Method, ModelInfo, Need, Plan, Result, Trace
from lmlens.wire import Float32Array
from lmlens_patching import causal, steer
from lmlens_patching.targets import Target, encode, last_logits, require_lm_head, single_token, token_strings

__version__ = importlib.metadata.version("lmlens-patching")  # one source of truth: the package metadata


def _pick_layers(layers: Sequence[int] | None, n_layers: int, field: str) -> list[int]:
    """None: every layer; negative layers count from the end; sorted, no repeats."""
    if layers is None:
        return list(range(n_layers))
    if not layers:
        raise InvalidParamsError("layers must not be empty (leave it out for every layer)", field=field)
    picked = []
    for layer in layers:
        if not -n_layers <= layer < n_layers:
            raise InvalidParamsError(f"layer {layer} is out of range; the model has {n_layers} layers", field=field)
        picked.append(layer % n_layers)
    return sorted(set(picked))


def _range(value: float, low: float, high: float, field: str) -> None:
    if not low <= value <= high:
        name = field.rsplit(".", 1)[-1]
        raise InvalidParamsError(f"{name} must be between {low} and {high}, not {value}", field=field)


def _clone(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone()


# --- activation_patching --------------------------------------------------------------------

AP = "params.activation_patching"


class ActivationPatchingParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    corrupted_text: str  # same number of tokens as the analysed (clean) text
    correct: str  # one token: the answer of the clean text (" Paris")
    wrong: str | None = None  # one token: the answer of the corrupted text (" Rome"); None: log p(correct)
    per_head: bool = False  # also restore each head's output, all positions: a [layer, head] grid
    layers: list[int] | None = None  # None: every layer; negative counts from the end
    batch_size: int = 0  # restorations per pass; 0: from a tokens-per-pass budget


class ActivationPatchingResult(Result, frozen=True, kw_only=True, tag="activation_patching"):
    metric: str  # "logit_diff" (logit correct - logit wrong) or "logprob" (log p(correct)), last position
    correct: str
    correct_id: int
    wrong: str | None
    wrong_id: int | None
    clean: float  # the metric of the clean text
    corrupted: float  # the metric of the corrupted text
    layers: list[int]
    corrupted_tokens: list[str]  # the corrupted text's tokens (the clean ones are the result's tokens)
    resid: Float32Array  # [layer, pos]: the metric with blocks.{L}.resid_pre at pos restored from the clean run
    resid_normalised: Float32Array | None  # [layer, pos]: (resid - corrupted) / (clean - corrupted)
    heads: Float32Array | None = None  # [layer, head]: the metric with the head's output restored (all positions)
    heads_normalised: Float32Array | None = None  # [layer, head]
    note: str | None = None  # why the normalised grids are missing, when they are
    n_passes: int  # forward passes, the clean and corrupted ones included
    batch_size: int  # restorations per pass


def _check_patching(info: ModelInfo, params: ActivationPatchingParams) -> list[int]:
    require_lm_head(info, "activation_patching")
    if not params.corrupted_text.strip():
        raise InvalidParamsError("corrupted_text must not be empty", field=f"{AP}.corrupted_text")
    _range(params.batch_size, 0, 1024, f"{AP}.batch_size")
    return _pick_layers(params.layers, info.n_layers, f"{AP}.layers")


def _patching_plan(info: ModelInfo, params: ActivationPatchingParams) -> Plan:
    layers = _check_patching(info, params)
    needs = [Need("logits", last_logits, name="last")]
    for layer in layers:
        needs.append(Need(f"blocks.{layer}.resid_pre", _clone, name=f"resid.{layer}", keeps=1.0))
        if params.per_head:
            needs.append(Need(f"blocks.{layer}.attn.heads", _clone, name=f"heads.{layer}", keeps=1.0))
    return Plan(needs=needs, state=layers)


def _patching_target(trace: Trace, params: ActivationPatchingParams) -> Target:
    loaded = trace.model
    correct = single_token(loaded, params.correct, f"{AP}.correct")
    if params.wrong is None:
        return Target("logprob", correct)
    wrong = single_token(loaded, params.wrong, f"{AP}.wrong")
    if wrong == correct:
        raise InvalidParamsError("correct and wrong are the same token", field=f"{AP}.wrong")
    return Target("logit_diff", correct, wrong)


def _patching_run(trace: Trace, params: ActivationPatchingParams) -> ActivationPatchingResult:
    loaded = trace.model
    layers: list[int] = trace.state if trace.state is not None else _check_patching(loaded.info, params)
    target = _patching_target(trace, params)
    corrupted_ids = encode(loaded, params.corrupted_text)
    n_clean, n_corrupted = int(trace.input_ids.shape[1]), int(corrupted_ids.shape[1])
    if n_clean != n_corrupted:
        raise InvalidParamsError(
            f"the clean text is {n_clean} tokens and corrupted_text is {n_corrupted} tokens; activation "
            "patching restores position by position, so both must have the same number of tokens",
            field=f"{AP}.corrupted_text",
        )
    batch_size = params.batch_size or causal.auto_batch_size(n_clean)
    clean_value = float(target(trace["last"])[0])
    corrupted_value = causal.metric_of(loaded, corrupted_ids, target)
    clean = causal.CleanRun(
        resid={layer: trace[f"resid.{layer}"] for layer in layers},
        heads={layer: trace[f"heads.{layer}"] for layer in layers} if params.per_head else {},
    )
    rows = [causal.Restore("resid", layer, (pos,)) for layer in layers for pos in range(n_clean)]
    if params.per_head:
        rows += [causal.Restore("head", layer, (h,)) for layer in layers for h in range(loaded.info.n_heads)]
    values, passes = causal.run_restorations(loaded, corrupted_ids, clean, rows, target, batch_size)
    n_resid = len(layers) * n_clean
    resid = values[:n_resid].reshape(len(layers), n_clean)
    heads = values[n_resid:].reshape(len(layers), loaded.info.n_heads) if params.per_head else None
    resid_norm = causal.normalise(resid, clean_value, corrupted_value)
    heads_norm = causal.normalise(heads, clean_value, corrupted_value) if heads is not None else None
    note = None
    if resid_norm is None:
        note = "the clean and corrupted texts score the same, so there is nothing to normalise by"

    def f32(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.astype(np.float32)

    return ActivationPatchingResult(
        metric=target.kind,
        correct=params.correct,
        correct_id=target.correct,
        wrong=params.wrong,
        wrong_id=target.wrong,
        clean=clean_value,
        corrupted=corrupted_value,
        layers=layers,
        corrupted_tokens=token_strings(loaded, corrupted_ids[0].tolist()),
        resid=resid.astype(np.float32),
        resid_normalised=f32(resid_norm),
        heads=f32(heads),
        heads_normalised=f32(heads_norm),
        note=note,
        n_passes=passes + 2,
        batch_size=batch_size,
    )


def _patching_bytes(info: ModelInfo, params: ActivationPatchingParams, n_tokens: int) -> float:
    """One batched pass: rows x pos activations through a block, plus the rows' logits."""
    rows = params.batch_size or causal.auto_batch_size(n_tokens)
    per_token = 4 * (info.vocab_size + 4 * info.d_model + info.d_mlp + info.n_heads * n_tokens)
    return float(rows * n_tokens * per_token)


ACTIVATION_PATCHING = Method(
    name="activation_patching",
    description="causal tracing: the effect of restoring each layer x position of the residual stream "
    "(and optionally each head) from the clean text into a corrupted one, on a logit difference or log-prob",
    params=ActivationPatchingParams,
    result=ActivationPatchingResult,
    plan=_patching_plan,
    run=_patching_run,
    version=__version__,
    extra_bytes=_patching_bytes,
)


# --- steering -------------------------------------------------------------------------------

ST = "params.steering"


class SteeringParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    layer: int  # negative counts from the end
    coefficient: float = 1.0
    vector: list[float] | None = None  # d_model numbers; or give positive and negative
    positive: str | None = None  # contrastive vector: mean residual of positive minus negative
    negative: str | None = None
    # where in layer ``layer`` the vector is added: the block's input or its output (= input of layer + 1)
    point: Literal["resid_pre", "resid_post"] = "resid_post"
    top_k: int = 10  # next tokens listed before and after
    generate: int = 0  # greedy tokens to continue with and without steering (0..64)


class TokenProb(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    token: str
    before: float  # probability without steering
    after: float  # probability with steering


class SteeringResult(Result, frozen=True, kw_only=True, tag="steering"):
    layer: int
    point: str  # the steered hook point, e.g. "blocks.3.resid_post"
    coefficient: float
    source: str  # "vector" (given) or "contrastive" (positive - negative)
    vector: Float32Array  # [d_model]: the vector before the coefficient
    vector_norm: float
    top_before: list[TokenProb]  # the top_k next tokens without steering
    top_after: list[TokenProb]  # the top_k next tokens with steering
    kl: float  # KL(before || after) of the next-token distributions, nats
    continuation_before: str | None = None  # greedy continuation without steering
    continuation_after: str | None = None  # greedy continuation with steering
    continuation_ids_before: list[int] | None = None
    continuation_ids_after: list[int] | None = None


def _check_steering(info: ModelInfo, params: SteeringParams) -> int:
    require_lm_head(info, "steering")
    layer = _pick_layers([params.layer], info.n_layers, f"{ST}.layer")[0]
    if not math.isfinite(params.coefficient):
        raise InvalidParamsError("coefficient must be a finite number", field=f"{ST}.coefficient")
    _range(params.top_k, 1, 100, f"{ST}.top_k")
    _range(params.generate, 0, 64, f"{ST}.generate")
    contrastive = params.positive is not None or params.negative is not None
    if (params.vector is None) == (not contrastive):
        raise InvalidParamsError(
            "give either vector (d_model numbers) or positive and negative texts, not both and not neither",
            field=f"{ST}.vector",
        )
    if params.vector is not None:
        if len(params.vector) != info.d_model:
            raise InvalidParamsError(
                f"vector has {len(params.vector)} numbers; this model's residual stream has d_model = {info.d_model}",
                field=f"{ST}.vector",
            )
        if not all(math.isfinite(v) for v in params.vector):
            raise InvalidParamsError("vector contains NaN or infinity", field=f"{ST}.vector")
    else:
        for name in ("positive", "negative"):
            text = getattr(params, name)
            if text is None or not text.strip():
                raise InvalidParamsError(
                    f"a contrastive vector needs both positive and negative texts; {name} is missing or empty",
                    field=f"{ST}.{name}",
                )
    return layer


def _steering_plan(info: ModelInfo, params: SteeringParams) -> Plan:
    layer = _check_steering(info, params)
    return Plan(needs=[Need("logits", last_logits, name="last")], state=layer)


def _probs(loaded: LoadedModel, ids: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> list[TokenProb]:
    tokenizer = loaded.tokenizer
    return [
        TokenProb(id=int(i), token=tokenizer.decode([int(i)]), before=float(before[i]), after=float(after[i]))
        for i in ids.tolist()
    ]


def _steering_run(trace: Trace, params: SteeringParams) -> SteeringResult:
    loaded = trace.model
    layer: int = trace.state if trace.state is not None else _check_steering(loaded.info, params)
    point = f"blocks.{layer}.{params.point}"
    if params.vector is not None:
        vector = torch.tensor(params.vector, dtype=torch.float64)
        source = "vector"
    else:
        assert params.positive is not None and params.negative is not None
        vector = steer.contrastive_vector(loaded, point, params.positive, params.negative)
        source = "contrastive"
    patch = steer.steering_patch(point, vector, params.coefficient)
    before = trace["last"][0]  # [vocab] float64
    after = steer.next_token_logits(loaded, trace.input_ids, [patch])
    p_before, p_after = torch.softmax(before, -1), torch.softmax(after, -1)
    k = min(params.top_k, int(before.shape[-1]))
    result = {
        "top_before": _probs(loaded, torch.topk(p_before, k).indices, p_before, p_after),
        "top_after": _probs(loaded, torch.topk(p_after, k).indices, p_before, p_after),
        "kl": steer.kl_divergence(before, after),
    }
    if params.generate:
        plain = steer.greedy(loaded, trace.input_ids, params.generate)
        steered = steer.greedy(loaded, trace.input_ids, params.generate, [patch])
        result.update(
            continuation_before=loaded.tokenizer.decode(plain),
            continuation_after=loaded.tokenizer.decode(steered),
            continuation_ids_before=plain,
            continuation_ids_after=steered,
        )
    return SteeringResult(
        layer=layer,
        point=point,
        coefficient=params.coefficient,
        source=source,
        vector=vector.float().numpy(),
        vector_norm=float(vector.norm()),
        **result,  # type: ignore[arg-type]
    )


def _steering_bytes(info: ModelInfo, params: SteeringParams, n_tokens: int) -> float:
    """One extra pass of the text (plus the generated tokens) with its logits."""
    n = n_tokens + params.generate
    return float(n * 4 * (info.vocab_size + 4 * info.d_model + info.d_mlp + info.n_heads * n))


STEERING = Method(
    name="steering",
    description="add coefficient x vector (given, or positive minus negative text) to a residual point: "
    "next-token changes (top-k, KL) and an optional greedy continuation with and without steering",
    params=SteeringParams,
    result=SteeringResult,
    plan=_steering_plan,
    run=_steering_run,
    version=__version__,
    extra_bytes=_steering_bytes,
)

METHODS = (ACTIVATION_PATCHING, STEERING)
