"""The interactive side of the panel contract, read from optional attributes of a panel.

A panel registered through ``register_panels`` is ``panel(result, *, save_path=None,
**options) -> Bokeh layout``. That is enough for a static page. For the dashboard a panel
function MAY also carry three attributes (all optional; a plain function works as is):

``panel.overview: dict``
    method params for the first request, the one every selector's choices come from
    (attention: ``{"patterns": False}`` -- per-head summaries of every head, no maps).
``panel.controls(method_result) -> dict[str, list]``
    selectors to show, each with its choices; the first choice is the default. The chosen
    values are passed to ``panel(...)`` as keyword options.
``panel.detail(options) -> dict | None``
    method params for a request that draws these options (attention: one layer and one
    head), fetched on demand for that method alone; ``None``: the overview result draws it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def overview_params(panel: Callable[..., Any] | None) -> dict[str, Any]:
    return dict(getattr(panel, "overview", None) or {})


def controls(panel: Callable[..., Any] | None, method_result: Any) -> dict[str, list[Any]]:
    make = getattr(panel, "controls", None)
    if make is None:
        return {}
    found = make(method_result) or {}
    return {str(name): list(choices) for name, choices in found.items() if list(choices)}


def detail_params(panel: Callable[..., Any] | None, options: Mapping[str, Any]) -> dict[str, Any] | None:
    make = getattr(panel, "detail", None)
    if make is None:
        return None
    found = make(dict(options))
    return None if found is None else dict(found)
