"""lmlens-attention: attention patterns, head classification, head importance, rollout.

``attention`` keeps the full patterns only for the layers and heads asked for, and
reduces every map to per-head summaries inside the hook. ``head_patterns`` classifies
every head (probe scores are cached per model), ``head_importance`` ablates heads in
batched passes, ``attention_rollout`` rolls attention out through the residual stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmlens import Method, hookimpl
from lmlens_attention.methods import (
    ATTENTION,
    ATTENTION_ROLLOUT,
    HEAD_IMPORTANCE,
    HEAD_PATTERNS,
    METHODS,
    AttentionParams,
    AttentionResult,
    HeadImportanceParams,
    HeadImportanceResult,
    HeadPatternsParams,
    HeadPatternsResult,
    RolloutParams,
    RolloutResult,
    __version__,
)
from lmlens_attention.probes import PROBE_CACHE
from lmlens_attention.scores import attention_entropy

__all__ = [
    "ATTENTION",
    "ATTENTION_ROLLOUT",
    "HEAD_IMPORTANCE",
    "HEAD_PATTERNS",
    "METHODS",
    "PROBE_CACHE",
    "AttentionParams",
    "AttentionResult",
    "HeadImportanceParams",
    "HeadImportanceResult",
    "HeadPatternsParams",
    "HeadPatternsResult",
    "RolloutParams",
    "RolloutResult",
    "__version__",
    "attention_entropy",
]


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    for method in METHODS:
        register(method)


PANEL_FUNCTIONS = {
    "attention": "attention_panel",
    "head_patterns": "head_patterns_panel",
    "head_importance": "head_importance_panel",
    "attention_rollout": "rollout_panel",
}


def _lazy_panel(function: str) -> Callable[..., Any]:
    """Bokeh and matplotlib take about 2 s to import: load them on the first drawing, not at discovery."""

    def panel(result: Any, *, save_path: str | None = None, **options: Any) -> Any:
        from lmlens_attention import panels

        return getattr(panels, function)(result, save_path=save_path, **options)

    panel.__name__ = function
    for name, value in DASHBOARD.get(function, {}).items():
        setattr(panel, name, value)
    return panel


def _attention_controls(result: Any) -> dict[str, list[Any]]:
    return {"view": ["pattern", "grid", "map"], "layer": list(result.layers), "head": list(result.heads),
            "score": ["entropy", "sink_mass", "mean_distance"]}


def _attention_detail(options: dict[str, Any]) -> dict[str, Any] | None:
    view = options.get("view", "pattern")
    if view == "map":
        return None  # the per-head scores of the overview draw it
    if view == "grid":
        return {"layers": [options["layer"]], "patterns": True, "top_k": 0}
    return {"layers": [options["layer"]], "heads": [options["head"]], "patterns": True, "top_k": 0}


# The dashboard's optional panel attributes (adapters/dashboard/README.md, "panel contract"):
# the first request keeps no maps; a map is fetched for the selected layer and head only.
DASHBOARD: dict[str, dict[str, Any]] = {
    "attention_panel": {"overview": {"patterns": False, "top_k": 0}, "controls": _attention_controls,
                        "detail": _attention_detail},
    "head_patterns_panel": {"controls": lambda result: {"category": list(result.categories)}},
    "head_importance_panel": {
        "controls": lambda result: {"ablation": [a for a in ("zero", "mean") if getattr(result, a) is not None]}
    },
}


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    for method, function in PANEL_FUNCTIONS.items():
        register(method, _lazy_panel(function))
