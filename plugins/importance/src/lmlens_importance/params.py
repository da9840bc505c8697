"""What a caller can ask of the ``importance`` method, and the checks on it."""

from __future__ import annotations

from typing import Literal

import msgspec

from lmlens.errors import InvalidParamsError

AttributionMethod = Literal["gradient", "gradient_x_input", "integrated_gradients", "occlusion"]
# auto: chosen per model family from measured convergence and faithfulness (see plugin.choose_method)
MethodChoice = Literal["auto", "gradient", "gradient_x_input", "integrated_gradients", "occlusion"]
Removal = Literal["replace", "delete", "both"]
TargetKind = Literal["auto", "next_token", "continuation", "loss", "similarity"]
BaselineKind = Literal["zero", "pad", "mask", "text"]
ReplacementKind = Literal["zero", "pad", "mask"]
Rule = Literal["gauss_legendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
Spacing = Literal["linear", "geometric"]
Path = Literal["straight", "spherical"]

FIELD = "params.importance"


class ImportanceParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    method: MethodChoice = "auto"
    # auto: next_token for a model with an LM head, similarity for an encoder
    target: TargetKind = "auto"
    target_token: str | None = None  # next_token: explain this token (default: the top prediction)
    continuation: str | None = None  # continuation: its summed log-probability after the text
    other_text: str | None = None  # similarity: the second text of the pair
    # integrated gradients
    baseline: BaselineKind = "zero"
    baseline_text: str | None = None  # baseline="text": padded/truncated to the text's length
    steps: int = 32
    rule: Rule = "gauss_legendre"
    # geometric: the same path, with the nodes packed near the baseline (see quadrature.py)
    spacing: Spacing = "linear"
    # spherical: keep each embedding's length away from zero on the way (see paths.py)
    path: Path = "straight"
    adaptive: bool = False  # double the steps until the relative delta is under tolerance
    max_steps: int = 512
    tolerance: float = 0.05  # relative convergence delta above which a result is unreliable
    # occlusion
    window: int = 1
    stride: int = 1
    # occlusion and faithfulness: what stands in for a removed token
    replacement: ReplacementKind = "zero"
    faithfulness: bool = True
    # ERASER's AOPC bins (DeYoung et al. 2020): 1, 5, 10, 20, 50% of the tokens
    fractions: list[float] = msgspec.field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2, 0.5])
    # faithfulness: replace removed tokens (positions kept), delete them (ERASER), or both
    removal: Removal = "both"
    deletion_points: int = 10
    random_orders: int = 2
    # batching of the extra passes
    batch_size: int | None = None  # None: sized to memory_budget_mb
    memory_budget_mb: float = 1024.0


def _bad(message: str, field: str) -> InvalidParamsError:
    return InvalidParamsError(message, field=f"{FIELD}.{field}")


def check_params(params: ImportanceParams) -> None:
    """Range checks msgspec's types cannot express; raises ``InvalidParamsError``."""
    if not 1 <= params.steps <= 4096:
        raise _bad(f"steps must be between 1 and 4096, not {params.steps}", "steps")
    if params.rule.startswith("riemann") and params.steps < 2:
        raise _bad("Riemann rules need at least 2 steps", "steps")
    if params.adaptive and params.max_steps < params.steps:
        raise _bad(f"max_steps ({params.max_steps}) is below steps ({params.steps})", "max_steps")
    if params.max_steps > 4096:
        raise _bad(f"max_steps must be at most 4096, not {params.max_steps}", "max_steps")
    if not 0 < params.tolerance < 10:
        raise _bad(f"tolerance must be in (0, 10), not {params.tolerance}", "tolerance")
    if params.window < 1 or params.stride < 1:
        raise _bad("window and stride must be at least 1", "window")
    if params.stride > params.window:
        raise _bad(f"stride ({params.stride}) above window ({params.window}) skips tokens", "stride")
    if not params.fractions:
        raise _bad("fractions must name at least one fraction", "fractions")
    if any(not 0 < f <= 1 for f in params.fractions):
        raise _bad(f"fractions must lie in (0, 1], got {params.fractions}", "fractions")
    if params.deletion_points < 2:
        raise _bad("deletion_points must be at least 2", "deletion_points")
    if not 0 <= params.random_orders <= 32:
        raise _bad("random_orders must be between 0 and 32", "random_orders")
    if params.batch_size is not None and params.batch_size < 1:
        raise _bad("batch_size must be at least 1", "batch_size")
    if params.memory_budget_mb <= 0:
        raise _bad("memory_budget_mb must be positive", "memory_budget_mb")
    if params.baseline == "text" and not params.baseline_text:
        raise _bad('baseline "text" needs baseline_text', "baseline_text")
    if params.path == "spherical" and params.baseline == "zero":
        raise _bad("the spherical path needs a non-zero baseline (pad, mask or text)", "path")
    if params.target == "continuation" and not params.continuation:
        raise _bad('target "continuation" needs a non-empty continuation', "continuation")
    if params.target == "similarity" and not params.other_text:
        raise _bad('target "similarity" needs other_text', "other_text")
