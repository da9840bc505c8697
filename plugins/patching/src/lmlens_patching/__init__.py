"""lmlens-patching: activation patching (causal tracing) and activation steering.

``activation_patching`` restores pieces of a clean run (each layer x position of the
residual stream, optionally each head's output) into a corrupted run, in batched passes,
and reports how much of the clean logit difference or log-probability each brings back.
``steering`` adds a vector (given, or positive minus negative text) to a residual point
and reports the next-token changes and a greedy continuation with and without it.
Both use only the kernel's write path: ``run_forward(..., patches=[Patch(...)])``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmlens import Method, hookimpl
from lmlens_patching.errors import NoLanguageModelHeadError
from lmlens_patching.methods import (
    ACTIVATION_PATCHING,
    METHODS,
    STEERING,
    ActivationPatchingParams,
    ActivationPatchingResult,
    SteeringParams,
    SteeringResult,
    TokenProb,
    __version__,
)

__all__ = [
    "ACTIVATION_PATCHING",
    "METHODS",
    "STEERING",
    "ActivationPatchingParams",
    "ActivationPatchingResult",
    "NoLanguageModelHeadError",
    "SteeringParams",
    "SteeringResult",
    "TokenProb",
    "__version__",
]


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    for method in METHODS:
        register(method)


PANEL_FUNCTIONS = {"activation_patching": "patching_panel", "steering": "steering_panel"}


def _lazy_panel(function: str) -> Callable[..., Any]:
    """Bokeh takes a second or two to import: load it on the first drawing, not at discovery."""

    def panel(result: Any, *, save_path: str | None = None, **options: Any) -> Any:
        from lmlens_patching import panels

        return getattr(panels, function)(result, save_path=save_path, **options)

    panel.__name__ = function
    return panel


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    for method, function in PANEL_FUNCTIONS.items():
        register(method, _lazy_panel(function))
