"""lmlens-importance: which input tokens made the model produce its output.

One method, ``importance``: gradient saliency, gradient x input, integrated gradients
(with its convergence delta and an ``unreliable`` flag) and occlusion, for causal LMs
(next-token, continuation or loss targets) and encoders (similarity to a second
text), with faithfulness checks and pictures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmlens import Method, hookimpl
from lmlens_importance.errors import NonFiniteAttributionError
from lmlens_importance.params import ImportanceParams
from lmlens_importance.plugin import IMPORTANCE, VERSION, run_importance
from lmlens_importance.result import ImportanceResult

if TYPE_CHECKING:
    import click

__version__ = VERSION

__all__ = [
    "IMPORTANCE",
    "ImportanceParams",
    "ImportanceResult",
    "NonFiniteAttributionError",
    "__version__",
    "run_importance",
]


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    register(IMPORTANCE)


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    def importance_panel(result: Any, *, save_path: str | None = None, **options: Any) -> Any:
        from lmlens_importance.pictures import importance_panel as draw  # bokeh loads on first use

        return draw(result, save_path=save_path, **options)

    importance_panel.controls = lambda result: {"view": ["tokens", "words"]}  # type: ignore[attr-defined]
    register("importance", importance_panel)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from lmlens_importance.commands import add_commands

    add_commands(cli)
