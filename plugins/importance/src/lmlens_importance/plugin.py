"""The ``importance`` method: pick a target, attribute it, check the attribution."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lmlens import Method, ModelInfo, Need, Trace
from lmlens_importance.baselines import reference_embeds
from lmlens_importance.budget import rows_per_pass
from lmlens_importance.faithfulness import faithfulness
from lmlens_importance.gradients import gradient_x_input, saliency
from lmlens_importance.integrated import IntegratedRun, integrated_gradients
from lmlens_importance.occlusion import occlusion
from lmlens_importance.params import FIELD, ImportanceParams, check_params
from lmlens_importance.paths import check_path
from lmlens_importance.result import (
    Convergence,
    ConvergenceStep,
    Faithfulness,
    ImportanceResult,
    TargetInfo,
    TokenScore,
)
from lmlens_importance.targets import (
    Objective,
    build_objective,
    check_finite,
    special_positions,
)
from lmlens_importance.words import merge_words

VERSION = importlib.metadata.version("lmlens-importance")  # one source of truth: the package metadata


def _needs(info: ModelInfo, params: ImportanceParams) -> Sequence[Need]:
    check_params(params)
    return []  # every pass this method needs is its own (with gradients or perturbed inputs)


def _integrated(
    objective: Objective,
    baseline: torch.Tensor,
    params: ImportanceParams,
    batch: int,
    f_input: float | None,
) -> tuple[IntegratedRun, list[ConvergenceStep], bool, int]:
    """Run IG once, or (adaptive) doubling the steps until the delta is within tolerance.

    The endpoint values come from the first run and are reused by the later ones."""
    history: list[ConvergenceStep] = []
    passes = 0
    steps = params.steps
    f_baseline: float | None = None
    while True:
        run = integrated_gradients(
            objective,
            baseline,
            steps=steps,
            rule=params.rule,
            spacing=params.spacing,
            path=params.path,
            batch_size=batch,
            f_input=f_input,
            f_baseline=f_baseline,
        )
        passes += run.passes
        f_input, f_baseline = run.f_input, run.f_baseline
        history.append(ConvergenceStep(steps=steps, delta=run.delta, relative_delta=run.relative_delta))
        ok = _within(run, params.tolerance)
        if ok or not params.adaptive or steps * 2 > params.max_steps:
            return run, history, ok, passes
        steps *= 2


def _within(run: IntegratedRun, tolerance: float) -> bool:
    if run.relative_delta is None:
        return abs(run.delta) <= 1e-6
    return run.relative_delta <= tolerance


def _near_zero(baseline: torch.Tensor, special: torch.Tensor) -> bool:
    rows = baseline[0, ~special.to(baseline.device)]  # [slots, d_model]
    return bool(rows.numel()) and bool((rows.norm(dim=-1) < 1e-6).any())


def _uses_rms_norm(model: torch.nn.Module) -> bool:
    return any("RMSNorm" in type(m).__name__ for m in model.modules())


def run_importance(trace: Trace, params: ImportanceParams) -> ImportanceResult:
    check_params(params)
    with torch.inference_mode(False):
        return _run(trace, params)


# What ``method="auto"`` resolves to, per model family. Measured
# with bench/choose_defaults.py on smollm2-135m (numbers in README.md, "Defaults").
RMSNORM_METHOD = "occlusion"
RMSNORM_REASON = (
    "method auto -> occlusion: this model normalises with RMSNorm, where integrated gradients does not "
    "converge (smollm2-135m, 32 steps: relative delta 167% from a zero baseline and 172% from pad, "
    "unreliable on every prompt measured); occlusion measures each token's effect by removing it, so "
    "there is nothing to converge, and its ranking was the most faithful measured (ERASER AOPC, tokens "
    "deleted: comprehensiveness 0.55 vs 0.54 IG, 0.25 gradient x input; sufficiency 0.57 vs 0.59-0.60; "
    "beat random orders 3/3); see plugins/importance/README.md, Defaults"
)
LAYERNORM_REASON = (
    "method auto -> integrated_gradients: on LayerNorm models it converges (tiny GPT-2: 0.1% relative "
    "delta at 16 steps); a run that does not converge within tolerance is replaced by occlusion"
)


def choose_method(loaded: Any, params: ImportanceParams) -> tuple[str, str | None]:
    """(the attribution method to run, why, when it was chosen for the caller)."""
    if params.method != "auto":
        return params.method, None
    if _uses_rms_norm(loaded.model):
        return RMSNORM_METHOD, RMSNORM_REASON
    return "integrated_gradients", LAYERNORM_REASON


def _other_baselines(current: str) -> str:
    others = [b for b in ("pad", "mask", "text") if b != current]
    return "/".join(others)


def _run(trace: Trace, params: ImportanceParams) -> ImportanceResult:
    loaded = trace.model
    method, reason = choose_method(loaded, params)
    baseline_kind = params.baseline
    objective = build_objective(trace, params)
    special = special_positions(loaded, trace)  # [pos]
    slots = [i for i, s in enumerate(special.tolist()) if not s]
    n = objective.embeds.shape[1] + (0 if objective.suffix is None else objective.suffix.shape[1])
    grad_batch = rows_per_pass(
        loaded, n, objective.lm_positions, grad=True, budget_mb=params.memory_budget_mb, requested=params.batch_size
    )
    plain_batch = rows_per_pass(
        loaded, n, objective.lm_positions, grad=False, budget_mb=params.memory_budget_mb, requested=params.batch_size
    )
    warnings: list[str] = []
    convergence = None
    baseline_label = None
    passes = 0
    needs_replacement = method == "occlusion" or params.faithfulness or params.method == "auto"
    replacement = replacement_label = None
    if needs_replacement:
        replacement, replacement_label = reference_embeds(
            loaded, objective.embeds, special, params.replacement, field=f"{FIELD}.replacement"
        )
    if method != "integrated_gradients":  # IG gets f(input) with f(baseline) below
        f_input = objective.f_input
        if f_input is None:  # not known from choosing the target token
            f_input = float(objective.values(objective.embeds, batch_size=1)[0])
            passes += 1

    if method == "integrated_gradients":
        baseline, baseline_label = reference_embeds(
            loaded, objective.embeds, special, baseline_kind, text=params.baseline_text
        )
        check_path(params.path, baseline, special)
        if _near_zero(baseline, special) and _uses_rms_norm(loaded.model):
            warnings.append(
                "the baseline embeddings are zero and this model normalises with RMSNorm: near the "
                "baseline the norm's 1/sqrt(eps) gain makes the integrand explode, so expect a large "
                "convergence delta; a pad, mask or text baseline converges far better, and "
                'method="occlusion" needs no convergence at all'
            )
        run, history, ok, ig_passes = _integrated(objective, baseline, params, grad_batch, objective.f_input)
        passes += ig_passes
        f_input, f_baseline = run.f_input, run.f_baseline
        scores = run.scores
        convergence = Convergence(
            steps=run.steps,
            rule=params.rule,
            spacing=params.spacing,
            path=params.path,
            f_input=f_input,
            f_baseline=f_baseline,
            delta=run.delta,
            relative_delta=run.relative_delta,
            tolerance=params.tolerance,
            unreliable=not ok,
            adaptive=params.adaptive,
            converged=ok,
            history=history,
        )
        if not ok:
            rel = "undefined" if run.relative_delta is None else f"{run.relative_delta:.1%}"
            advice = [] if params.adaptive else ["adaptive=true", "more steps"]
            if baseline_kind in ("zero", "pad", "mask", "text"):
                advice.append(f"a {_other_baselines(baseline_kind)} baseline")
            advice.append('method="occlusion"')
            warnings.append(
                f"integrated gradients did not converge: relative delta {rel} at {run.steps} steps "
                f"(tolerance {params.tolerance:.1%}) from the {baseline_kind} baseline; the scores do not "
                "add up to f(input) - f(baseline); try " + ", ".join(advice[:-1]) + f" or {advice[-1]}"
            )
            if params.method == "auto":
                # the caller did not choose IG: give them a result the library trusts
                assert replacement is not None
                reason = (
                    f"method auto -> occlusion: integrated gradients was tried first and did not converge "
                    f"(relative delta {rel} at {run.steps} steps, tolerance {params.tolerance:.1%}); its "
                    "scores were replaced by occlusion's, which need no convergence"
                )
                method, baseline_label, convergence = "occlusion", None, None
                scores, windows = occlusion(
                    objective, replacement, slots, window=params.window, stride=params.stride,
                    batch_size=plain_batch, f_input=f_input,
                )
                passes += -(-windows // plain_batch)
    elif method == "gradient":
        scores = saliency(objective)
        passes += 1
    elif method == "gradient_x_input":
        scores = gradient_x_input(objective)
        passes += 1
    else:
        assert replacement is not None
        scores, windows = occlusion(
            objective,
            replacement,
            slots,
            window=params.window,
            stride=params.stride,
            batch_size=plain_batch,
            f_input=f_input,
        )
        passes += -(-windows // plain_batch)
    scores = torch.where(special, 0.0, scores.double())  # [pos]
    check_finite(scores, "the attribution scores")

    report: Faithfulness | None = None
    if params.faithfulness and slots:
        assert replacement is not None and replacement_label is not None
        report, more = faithfulness(
            objective,
            scores,
            replacement,
            slots,
            replacement_label=replacement_label,
            fractions=params.fractions,
            deletion_points=params.deletion_points,
            random_orders=params.random_orders,
            batch_size=plain_batch,
            f_input=f_input,
            kind=objective.kind,
            removal=params.removal,
        )
        passes += more

    values = scores.numpy()
    peak = float(np.abs(values).max()) or 1.0
    normalized = values / peak
    tokens = [
        TokenScore(
            index=i,
            text=t.text,
            start=t.start,
            end=t.end,
            score=float(values[i]),
            normalized=float(normalized[i]),
            special=bool(special[i]),
        )
        for i, t in enumerate(trace.tokens)
    ]
    return ImportanceResult(
        method=method,
        method_reason=reason,
        target=TargetInfo(
            kind=objective.kind,
            description=objective.description,
            value=f_input,
            token_ids=objective.token_ids,
            token_text=objective.token_text,
        ),
        baseline=baseline_label,
        scores=values.astype(np.float32),
        normalized=normalized.astype(np.float32),
        tokens=tokens,
        words=merge_words(trace.text, trace.tokens, values.tolist(), special.tolist()),
        convergence=convergence,
        unreliable=bool(convergence is not None and convergence.unreliable),
        faithfulness=report,
        batch_size=grad_batch if method in ("integrated_gradients",) else plain_batch,
        passes=passes,
        warnings=warnings,
    )


def extra_bytes(info: Any, params: ImportanceParams, n_tokens: int) -> float:
    """Memory beyond the shared pass, for the kernel's estimate (before any work).

    A plain gradient keeps one pass's activations for the backward pass; integrated
    gradients and occlusion run batches sized to ``memory_budget_mb``.
    """
    if params.method in ("gradient", "gradient_x_input"):  # auto may run IG: the budget bounds it
        return float(info.n_layers * n_tokens * (10 * info.d_model + 4 * info.d_mlp) * 4)
    return float(params.memory_budget_mb) * 2**20


IMPORTANCE = Method(
    name="importance",
    description="token importance: gradient, gradient x input, integrated gradients, occlusion; "
    "with IG convergence delta and faithfulness (comprehensiveness, sufficiency, deletion curve)",
    params=ImportanceParams,
    result=ImportanceResult,
    needs=_needs,
    run=run_importance,
    version=VERSION,
    token_fields={"scores": 0},  # signed scores stitch across windows; normalised ones are per window
    extra_bytes=lambda info, params, n_tokens: extra_bytes(info, params, n_tokens),
)
