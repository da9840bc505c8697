"""The interactive side of the panel contract, read from optional attributes of a panel.

A panel registered through ``register_panels`` is ``panel(result, *, save_path=None,
**options) -> Bokeh layout``. That is enough for a static page. For the dashboard a panel
function MAY also carry these attributes (all optional; a plain function works as is):

``panel.overview: dict``
    method params for the first request, the one every selector's choices come from
    (attention: ``{"patterns": False}`` -- per-head summaries of every head, no maps).
``panel.controls(method_result) -> dict[str, list]``
    selectors to show, each with its choices; the first choice is the default. The chosen
    values are passed to ``panel(...)`` as keyword options.
``panel.selections: dict[str, str]``
    options set by selecting in the drawing: ``{option: source_name}``. When the user selects
    (taps) a glyph of the ``ColumnDataSource`` named ``source_name`` in the drawing, the
    option becomes that row's value in the source's column named like the option; an empty
    selection sets it to ``None`` (its value until the first selection). The panel is then
    drawn again with it, like a selector's change.
``panel.detail(options) -> dict | None``
    what to fetch on demand to draw these options; ``None``: the overview result draws it.
    Either params for this panel's own method (attention: one layer and one head), fetched
    for that method alone, whose result replaces the overview; or
    ``{"method": other, "params": {...}}``: a request for another method of the same plugin
    (SAE strip: ``{"method": "sae_feature", "params": {"feature": 123}}``), whose result is
    added to the overview's, so the panel draws from both.
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


def selections(panel: Callable[..., Any] | None) -> dict[str, str]:
    """``{option: name of the ColumnDataSource whose selection sets it}``."""
    return {str(option): str(source) for option, source in (getattr(panel, "selections", None) or {}).items()}


def detail_params(panel: Callable[..., Any] | None, options: Mapping[str, Any]) -> dict[str, Any] | None:
    make = getattr(panel, "detail", None)
    if make is None:
        return None
    found = make(dict(options))
    return None if found is None else dict(found)


def detail_request(panel: Callable[..., Any] | None, method: str,
                   options: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(method, params)`` to fetch for these options, or ``None``: the overview draws them.

    A ``detail`` answer whose keys are exactly ``method`` and ``params`` (a dict) names the
    method to ask; any other answer is params for ``method`` itself.
    """
    found = detail_params(panel, options)
    if found is None:
        return None
    if set(found) == {"method", "params"} and isinstance(found["params"], Mapping):
        return str(found["method"]), dict(found["params"])
    return method, found
