"""Bokeh figures of attention results, reusable by a dashboard panel.

Maps are drawn with the ``image`` glyph: one packed float32 array per map, so a
128-token head costs 64 kB in the page rather than 16,384 glyphs, and the hover
resolves token labels in the browser from one shared list of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from bokeh.models import ColumnDataSource, CustomJSHover, HoverTool, LinearColorMapper, Range1d
from bokeh.models.annotations import ColorBar
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from lmlens import Token

_LABEL = CustomJSHover(code="const i = Math.floor(value); return (i in labels) ? labels[i] : '';")


def token_labels(tokens: Sequence[Token]) -> list[str]:
    """'3: cat' for each token; special tokens show their vocabulary piece."""
    labels = []
    for i, token in enumerate(tokens):
        shown = token.text or token.piece
        labels.append(f"{i}: {shown!r}"[:40])
    return labels


def _label_formatter(labels: list[str]) -> CustomJSHover:
    return CustomJSHover(code=_LABEL.code, args={"labels": labels})


def pattern_figure(
    pattern: np.ndarray,  # [q_pos, k_pos]
    tokens: Sequence[Token],
    title: str,
    *,
    size: int = 560,
    hover: bool = True,
    axes: bool = True,
) -> figure:
    """One attention map: queries down, keys across; hover shows the token pair and weight."""
    n_q, n_k = pattern.shape
    labels = token_labels(tokens)
    fig = figure(
        title=title,
        width=size,
        height=size,
        x_range=Range1d(start=0, end=n_k),
        y_range=Range1d(start=n_q, end=0),  # query 0 at the top, like the matrix
        tools="pan,wheel_zoom,box_zoom,reset,save",
        toolbar_location="right" if axes else None,
    )
    mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=max(float(pattern.max()), 1e-6))
    fig.image(image=[np.ascontiguousarray(pattern, dtype=np.float32)], x=0, y=0, dw=n_k, dh=n_q,
              color_mapper=mapper)  # type: ignore[call-arg]
    if hover:
        formatter = _label_formatter(labels)
        fig.add_tools(
            HoverTool(
                tooltips=[("query", "$y{custom}"), ("key", "$x{custom}"), ("weight", "@image{0.0000}")],
                formatters={"$x": formatter, "$y": formatter},
            )
        )
    if axes and n_q <= 64:
        names = {i + 0.5: labels[i].split(": ", 1)[1] for i in range(min(n_q, len(labels)))}
        fig.yaxis.ticker = list(names)
        fig.yaxis.major_label_overrides = names  # type: ignore[assignment]
        fig.xaxis.ticker = list(names)
        fig.xaxis.major_label_overrides = names  # type: ignore[assignment]
        fig.xaxis.major_label_orientation = 1.2
    if axes:
        fig.xaxis.axis_label = "key"
        fig.yaxis.axis_label = "query"
        fig.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
    else:
        fig.axis.visible = False
    return fig


def head_grid(
    patterns: np.ndarray,  # [head, q_pos, k_pos]
    tokens: Sequence[Token],
    heads: Sequence[int],
    layer: int,
    *,
    columns: int = 4,
    size: int = 220,
) -> figure:
    """Every head of one layer as small multiples.

    One figure with one image per head, not one figure per head: a dozen Bokeh
    figures cost a second to build and serialise, one figure a few milliseconds, and
    the hover maps a position back to its panel's tokens with a modulo.
    """
    n_heads, n_q, n_k = patterns.shape
    gap = max(2, n_k // 8)
    stride = max(n_q, n_k) + gap
    rows = -(-n_heads // columns)
    cols = min(columns, n_heads)
    width, height = cols * stride - gap, rows * stride - gap
    source = ColumnDataSource(
        {
            "image": [np.ascontiguousarray(p, dtype=np.float32) for p in patterns],
            "x": [(i % columns) * stride for i in range(n_heads)],
            "y": [(i // columns) * stride for i in range(n_heads)],
            "head": [f"layer {layer} head {h}" for h in heads],
        }
    )
    fig = figure(
        title=f"attention, layer {layer}: heads {', '.join(str(h) for h in heads)}",
        width=cols * size,
        height=rows * size + 30,
        x_range=Range1d(start=-gap / 2, end=width + gap / 2),
        y_range=Range1d(start=height + gap / 2, end=-gap / 2),
        tools="pan,wheel_zoom,box_zoom,reset,save",
        match_aspect=True,
    )
    mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=max(float(patterns.max()), 1e-6))
    fig.image(image="image", x="x", y="y", dw=n_k, dh=n_q, source=source, color_mapper=mapper)  # type: ignore[call-arg]
    fig.text(x=source.data["x"], y=source.data["y"], text=[f"head {h}" for h in heads],
             text_font_size="9px", text_baseline="bottom", text_color="#444444")
    labels = token_labels(tokens)
    formatter = CustomJSHover(
        code="const i = Math.floor(value) % stride; return (i in labels) ? labels[i] : '';",
        args={"labels": labels, "stride": stride},
    )
    fig.add_tools(
        HoverTool(
            tooltips=[("head", "@head"), ("query", "$y{custom}"), ("key", "$x{custom}"),
                      ("weight", "@image{0.0000}")],
            formatters={"$x": formatter, "$y": formatter},
        )
    )
    fig.axis.visible = False
    fig.grid.visible = False
    return fig


def score_map(
    values: np.ndarray,  # [layer, head]
    layers: Sequence[int],
    heads: Sequence[int],
    title: str,
    *,
    low: float | None = None,
    high: float | None = None,
    palette: Sequence[str] = Viridis256,
) -> figure:
    """A layer x head map of any per-head score (entropy, induction, importance, ...)."""
    n_layers, n_heads = values.shape
    fig = figure(
        title=title,
        width=max(260, 40 * n_heads + 120),
        height=max(220, 18 * n_layers + 80),
        x_range=Range1d(start=0, end=n_heads),
        y_range=Range1d(start=n_layers, end=0),
        tools="save,reset",
        toolbar_location="right",
    )
    lo = float(np.nanmin(values)) if low is None else low
    hi = float(np.nanmax(values)) if high is None else high
    mapper = LinearColorMapper(palette=list(palette), low=lo, high=hi if hi > lo else lo + 1e-6)
    fig.image(image=[np.ascontiguousarray(values, dtype=np.float32)], x=0, y=0, dw=n_heads, dh=n_layers,
              color_mapper=mapper)  # type: ignore[call-arg]
    layer_names = [str(i) for i in layers]
    head_names = [str(h) for h in heads]
    fig.add_tools(
        HoverTool(
            tooltips=[("layer", "$y{custom}"), ("head", "$x{custom}"), ("value", "@image{0.0000}")],
            formatters={"$y": _label_formatter(layer_names), "$x": _label_formatter(head_names)},
        )
    )
    fig.xaxis.ticker = [h + 0.5 for h in range(n_heads)]
    fig.xaxis.major_label_overrides = {h + 0.5: name for h, name in enumerate(head_names)}  # type: ignore[misc]
    fig.yaxis.ticker = [i + 0.5 for i in range(n_layers)]
    fig.yaxis.major_label_overrides = {i + 0.5: name for i, name in enumerate(layer_names)}  # type: ignore[misc]
    fig.xaxis.axis_label = "head"
    fig.yaxis.axis_label = "layer"
    fig.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
    return fig
