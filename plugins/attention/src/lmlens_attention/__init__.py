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
    return panel


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    for method, function in PANEL_FUNCTIONS.items():
        register(method, _lazy_panel(function))
