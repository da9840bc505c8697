"""Panels: a method's result -> a Bokeh layout, optionally saved as HTML or PNG.

The contract (``register_panels``): ``panel(result, *, save_path=None, **options)``.
A path ending in ``.html`` gets a standalone document with BokehJS inlined, so it opens
offline (about 1.4 MB more than a CDN page; ``resources="cdn"`` gives the small page that
needs the network); ``.png`` gets a static matplotlib picture that needs no browser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.resources import CDN, INLINE, Resources

from lmlens import AnalysisResult, InvalidParamsError, Result
from lmlens_attention import pictures, static
from lmlens_attention.methods import (
    AttentionResult,
    HeadImportanceResult,
    HeadPatternsResult,
    RolloutResult,
)

PictureWriter = Callable[[str], None]


def _result(analysis: AnalysisResult, method: str, kind: type[Result]) -> Any:
    found = analysis.methods.get(method)
    if not isinstance(found, kind):
        raise InvalidParamsError(f"the analysis has no {method!r} result to draw", field="method")
    return found


def _position(values: Sequence[int], wanted: int, what: str) -> int:
    if wanted not in values:
        raise InvalidParamsError(
            f"{what} {wanted} is not in the result (it has {what}s {list(values)})", field=what
        )
    return list(values).index(wanted)


def html_resources(resources: str) -> Resources:
    """``inline`` (default: the page opens offline) or ``cdn`` (small, needs the network)."""
    if resources not in ("inline", "cdn"):
        raise InvalidParamsError(f"resources must be inline or cdn, not {resources!r}", field="resources")
    return INLINE if resources == "inline" else CDN


def _finish(
    layout: Any, save_path: str | None, png: PictureWriter, title: str, resources: str = "inline"
) -> Any:
    chosen = html_resources(resources)
    if save_path is None:
        return layout
    path = Path(save_path)
    suffix = path.suffix.lower()
    if suffix == ".html":
        path.write_text(file_html(layout, chosen, title), encoding="utf-8")
    elif suffix == ".png":
        png(str(path))
    else:
        raise InvalidParamsError(
            f"save_path must end in .html or .png, not {path.suffix or 'nothing'}", field="save_path"
        )
    return layout


def attention_panel(
    result: AnalysisResult,
    *,
    save_path: str | None = None,
    view: str = "pattern",
    layer: int = 0,
    head: int = 0,
    score: str = "entropy",
    resources: str = "inline",
    **options: Any,
) -> Any:
    """view="pattern": one head's map with hover; "grid": every head of ``layer``;
    "map": a layer x head map of ``score`` (entropy, sink_mass, mean_distance)."""
    att: AttentionResult = _result(result, "attention", AttentionResult)
    if view == "map":
        values = getattr(att, score, None) if score in ("entropy", "sink_mass", "mean_distance") else None
        if values is None:
            raise InvalidParamsError(
                f"no per-head score {score!r}; choose entropy, sink_mass or mean_distance", field="score"
            )
        title = f"attention {score}"
        fig = pictures.score_map(values, att.layers, att.heads, title)
        png = lambda p: static.map_png(values, att.layers, att.heads, title, p)  # noqa: E731
        return _finish(fig, save_path, png, title, resources)
    if att.patterns is None:
        raise InvalidParamsError("the attention result has no patterns (patterns=False)", field="view")
    li = _position(att.layers, layer, "layer")
    if view == "grid":
        maps = att.patterns[li]  # [head, q, k]
        title = f"attention, layer {layer}"
        grid = pictures.head_grid(maps, result.tokens, att.heads, layer, **options)
        return _finish(grid, save_path, lambda p: static.grid_png(maps, att.heads, layer, p), title, resources)
    if view != "pattern":
        raise InvalidParamsError(f"unknown view {view!r}; choose pattern, grid or map", field="view")
    one = att.patterns[li, _position(att.heads, head, "head")]  # [q, k]
    title = f"attention, layer {layer} head {head}"
    fig = pictures.pattern_figure(one, result.tokens, title, **options)
    return _finish(fig, save_path, lambda p: static.pattern_png(one, result.tokens, title, p), title, resources)


def head_patterns_panel(
    result: AnalysisResult, *, save_path: str | None = None, category: str = "induction", resources: str = "inline",
    **options: Any
) -> Any:
    """A layer x head map of one category's score."""
    hp: HeadPatternsResult = _result(result, "head_patterns", HeadPatternsResult)
    if category not in hp.categories:
        raise InvalidParamsError(f"unknown category {category!r}; choose one of {hp.categories}", field="category")
    values = hp.scores[hp.categories.index(category)]
    title = f"{category} score"
    fig = pictures.score_map(values, hp.layers, hp.heads, title, low=0.0, high=1.0)
    return _finish(fig, save_path, lambda p: static.map_png(values, hp.layers, hp.heads, title, p), title, resources)


def head_importance_panel(
    result: AnalysisResult, *, save_path: str | None = None, ablation: str = "zero", resources: str = "inline",
    **options: Any
) -> Any:
    """A layer x head map of the ablation effect (positive: the head helps)."""
    hi: HeadImportanceResult = _result(result, "head_importance", HeadImportanceResult)
    values = hi.zero if ablation == "zero" else hi.mean if ablation == "mean" else None
    if values is None:
        raise InvalidParamsError(f"the result has no {ablation!r} ablation", field="ablation")
    title = f"{ablation} ablation: change of {hi.metric}"
    fig = pictures.score_map(values, hi.layers, hi.heads, title)
    return _finish(fig, save_path, lambda p: static.map_png(values, hi.layers, hi.heads, title, p), title, resources)


def rollout_panel(
    result: AnalysisResult, *, save_path: str | None = None, resources: str = "inline", **options: Any
) -> Any:
    """The rollout map: output position (rows) by input token (columns)."""
    ro: RolloutResult = _result(result, "attention_rollout", RolloutResult)
    values = np.asarray(ro.rollout)
    title = f"attention rollout ({ro.head_fusion} of heads{', residual' if ro.residual else ''})"
    fig = pictures.pattern_figure(values, result.tokens, title, **options)
    return _finish(fig, save_path, lambda p: static.pattern_png(values, result.tokens, title, p), title, resources)


PANELS = {
    "attention": attention_panel,
    "head_patterns": head_patterns_panel,
    "head_importance": head_importance_panel,
    "attention_rollout": rollout_panel,
}
