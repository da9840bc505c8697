"""Panels: a result -> a Bokeh layout, optionally saved as a standalone HTML file.

The contract (``register_panels``): ``panel(result, *, save_path=None, **options)``.
Saved HTML carries BokehJS inline (``bokeh.resources.INLINE``), so the file opens offline;
``resources="cdn"`` gives a small page that loads BokehJS from the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    CustomJSHover,
    Div,
    FactorRange,
    HoverTool,
    LinearColorMapper,
    Range1d,
)
from bokeh.palettes import RdBu11
from bokeh.plotting import figure
from bokeh.resources import CDN, INLINE
from bokeh.transform import dodge

from lmlens import AnalysisResult, InvalidParamsError, Result
from lmlens_patching.methods import ActivationPatchingResult, SteeringResult

DIVERGING = list(reversed(RdBu11))  # blue for negative, red for positive, white at zero


def _result(analysis: AnalysisResult | Result, method: str, kind: type[Result]) -> Any:
    found = analysis.methods.get(method) if isinstance(analysis, AnalysisResult) else analysis
    if not isinstance(found, kind):
        raise InvalidParamsError(f"the analysis has no {method!r} result to draw", field="method")
    return found


def _finish(layout: Any, save_path: str | None, title: str, resources: str = "inline") -> Any:
    """``resources="inline"`` (default: the page opens offline) or ``"cdn"`` (small, needs the network)."""
    if resources not in ("inline", "cdn"):
        raise InvalidParamsError(f"resources must be inline or cdn, not {resources!r}", field="resources")
    if save_path is None:
        return layout
    path = Path(save_path)
    if path.suffix.lower() != ".html":
        raise InvalidParamsError(f"save_path must end in .html, not {path.suffix or 'nothing'}", field="save_path")
    path.write_text(file_html(layout, INLINE if resources == "inline" else CDN, title), encoding="utf-8")
    return layout


def _labels(names: Sequence[str]) -> CustomJSHover:
    return CustomJSHover(
        code="const i = Math.floor(value); return (i in labels) ? labels[i] : '';", args={"labels": list(names)}
    )


def grid_figure(
    values: np.ndarray,  # [row, column]
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    *,
    row_axis: str,
    column_axis: str,
    value_name: str,
) -> figure:
    """A row x column heatmap on a diverging scale centred at zero, with hover."""
    n_rows, n_cols = values.shape
    finite = values[np.isfinite(values)]
    bound = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-6)
    mapper = LinearColorMapper(palette=DIVERGING, low=-bound, high=bound)
    fig = figure(
        title=title,
        width=max(320, min(1200, 48 * n_cols + 160)),
        height=max(240, min(900, 20 * n_rows + 120)),
        x_range=Range1d(start=0, end=n_cols),
        y_range=Range1d(start=n_rows, end=0),  # first layer at the top
        tools="pan,wheel_zoom,reset,save",
        toolbar_location="right",
    )
    fig.image(image=[np.ascontiguousarray(values, dtype=np.float32)], x=0, y=0, dw=n_cols, dh=n_rows,
              color_mapper=mapper)  # type: ignore[call-arg]
    fig.add_tools(
        HoverTool(
            tooltips=[(row_axis, "$y{custom}"), (column_axis, "$x{custom}"), (value_name, "@image{0.000}")],
            formatters={"$y": _labels(rows), "$x": _labels(columns)},
        )
    )
    if n_cols <= 64:
        fig.xaxis.ticker = [i + 0.5 for i in range(n_cols)]
        fig.xaxis.major_label_overrides = {i + 0.5: name for i, name in enumerate(columns)}  # type: ignore[misc]
        fig.xaxis.major_label_orientation = 1.0
    fig.yaxis.ticker = [i + 0.5 for i in range(n_rows)]
    fig.yaxis.major_label_overrides = {i + 0.5: name for i, name in enumerate(rows)}  # type: ignore[misc]
    fig.xaxis.axis_label = column_axis
    fig.yaxis.axis_label = row_axis
    fig.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
    return fig


def position_labels(clean: Sequence[str], corrupted: Sequence[str]) -> list[str]:
    """'3: Eiffel' where the texts agree, '3: Eiffel/Colosseum' where they differ."""
    labels = []
    for i, (a, b) in enumerate(zip(clean, corrupted, strict=False)):
        labels.append(f"{i}: {a!r}" if a == b else f"{i}: {a!r}/{b!r}")
    return [label[:40] for label in labels]


def patching_panel(
    result: AnalysisResult | ActivationPatchingResult,
    *,
    save_path: str | None = None,
    normalised: bool = True,
    resources: str = "inline",
    **options: Any,
) -> Any:
    """The layer x position heatmap of restoring the residual stream, and the layer x head grid
    when the result has one. ``normalised=False`` draws the raw metric instead."""
    ap: ActivationPatchingResult = _result(result, "activation_patching", ActivationPatchingResult)
    use_norm = normalised and ap.resid_normalised is not None
    resid = ap.resid_normalised if use_norm else ap.resid
    assert resid is not None
    clean_tokens = (
        [t.text or t.piece for t in result.tokens]
        if isinstance(result, AnalysisResult)
        else [str(i) for i in range(resid.shape[1])]
    )
    what = "normalised effect" if use_norm else ap.metric
    target = f"{ap.correct!r} vs {ap.wrong!r}" if ap.metric == "logit_diff" else f"log p({ap.correct!r})"
    title = f"activation patching, {target}: {what} of restoring blocks.L.resid_pre"
    layers = [str(layer) for layer in ap.layers]
    figures: list[Any] = [
        Div(text=f"<b>{ap.metric}</b>: clean {ap.clean:.3f}, corrupted {ap.corrupted:.3f}"
            + (f" <i>({ap.note})</i>" if ap.note else "")),
        grid_figure(np.asarray(resid), layers, position_labels(clean_tokens, ap.corrupted_tokens), title,
                    row_axis="layer", column_axis="position", value_name=what),
    ]
    heads = ap.heads_normalised if use_norm else ap.heads
    if heads is not None:
        names = [str(h) for h in range(heads.shape[1])]
        figures.append(grid_figure(np.asarray(heads), layers, names, f"{what} of restoring each head's output",
                                   row_axis="layer", column_axis="head", value_name=what))
    return _finish(column(*figures), save_path, title, resources)


def steering_panel(
    result: AnalysisResult | SteeringResult, *, save_path: str | None = None, resources: str = "inline",
    **options: Any,
) -> Any:
    """Next-token probabilities before and after steering (the union of both top lists), and the
    continuations when the result has them."""
    st: SteeringResult = _result(result, "steering", SteeringResult)
    rows = {p.id: p for p in [*st.top_before, *st.top_after]}
    ordered = sorted(rows.values(), key=lambda p: max(p.before, p.after), reverse=True)
    names = [f"{p.token!r} ({p.id})" for p in ordered]
    source = ColumnDataSource(
        {"token": names, "before": [p.before for p in ordered], "after": [p.after for p in ordered]}
    )
    title = f"steering {st.point} x {st.coefficient:g} ({st.source}): next-token probabilities, KL {st.kl:.3f} nats"
    fig = figure(
        title=title,
        y_range=FactorRange(*reversed(names)),
        width=640,
        height=max(220, 22 * len(names) + 80),
        tools="save,reset",
        toolbar_location="right",
    )
    fig.hbar(y=dodge("token", 0.18, range=fig.y_range), right="before", height=0.34, source=source,
             color="#9e9e9e", legend_label="before")
    fig.hbar(y=dodge("token", -0.18, range=fig.y_range), right="after", height=0.34, source=source,
             color="#d6604d", legend_label="after")
    fig.add_tools(HoverTool(tooltips=[("token", "@token"), ("before", "@before{0.0000}"),
                                      ("after", "@after{0.0000}")]))
    fig.x_range.start = 0
    fig.xaxis.axis_label = "probability"
    fig.legend.location = "bottom_right"
    parts: list[Any] = [fig]
    if st.continuation_before is not None:
        parts.append(Div(text=f"<p><b>without steering:</b> {escape(st.continuation_before)!s}</p>"
                         f"<p><b>with steering:</b> {escape(st.continuation_after or '')!s}</p>", width=640))
    return _finish(column(*parts), save_path, title, resources)


PANELS = {"activation_patching": patching_panel, "steering": steering_panel}
