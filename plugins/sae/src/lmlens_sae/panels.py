"""Panels: the per-token feature strip (``sae_features``/``sae``) and the feature card (``sae_feature``).

``panel(result, *, save_path=None, **options)`` returns a Bokeh layout; a ``save_path``
ending in ``.html`` writes a standalone page (BokehJS from the CDN).

In the dashboard, tapping a cell of the strip (its source is named ``STRIP_SOURCE``, with a
``feature`` column) sets the option ``feature``; the dashboard then fetches ``sae_feature``
for it and the strip draws that feature's card beneath itself (see ``lmlens_sae.__init__``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool, TapTool
from bokeh.plotting import figure
from bokeh.resources import CDN

from lmlens import AnalysisResult, InvalidParamsError
from lmlens_sae.methods import SAEFeatureResult, SAEFeaturesResult


def _finish(layout: Any, save_path: str | None, title: str) -> Any:
    if save_path is None:
        return layout
    path = Path(save_path)
    if path.suffix.lower() != ".html":
        raise InvalidParamsError(f"save_path must end in .html, not {path.suffix or 'nothing'}", field="save_path")
    path.write_text(file_html(layout, CDN, title), encoding="utf-8")
    return layout


def _pick(analysis: AnalysisResult, names: tuple[str, ...], kind: type) -> Any:
    for name in names:
        found = analysis.methods.get(name)
        if isinstance(found, kind):
            return found
    raise InvalidParamsError(f"the analysis has no {' or '.join(names)} result to draw", field="method")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


STRIP_SOURCE = "sae-strip"  # the strip's cells; a selection of them picks the column ``feature``
CARD_NAME = "sae-card"


def feature_strip(analysis: AnalysisResult, *, save_path: str | None = None, features: int = 12,
                  **options: Any) -> Any:
    """A heat strip: rows are the text's strongest features, columns its tokens.

    ``feature=ID`` marks that feature's row, and when the analysis also holds its
    ``sae_feature`` result, draws its card beneath the strip.
    """
    result = _pick(analysis, ("sae_features", "sae"), SAEFeaturesResult)
    chosen = [s.feature for s in result.top_features[:features]]
    tokens = [t.text or t.piece for t in analysis.tokens]
    picked = options.get("feature")
    xs, ys, feats, values, labels = [], [], [], [], []
    for p in range(len(tokens)):
        row_ids = result.feature_ids[p].tolist()
        for _r, feat in enumerate(chosen):
            value = float(result.activations[p][row_ids.index(feat)]) if feat in row_ids else 0.0
            xs.append(p)
            ys.append(str(feat))
            feats.append(int(feat))
            values.append(value)
            labels.append(tokens[p])
    peak = max(values, default=1.0) or 1.0
    source = ColumnDataSource({"x": xs, "y": ys, "feature": feats, "value": values, "token": labels,
                               "alpha": [v / peak for v in values]}, name=STRIP_SOURCE)
    if picked is not None:
        source.selected.indices = [i for i, f in enumerate(feats) if f == picked]
    fig = figure(height=40 + 22 * max(1, len(chosen)), width=max(400, 28 * len(tokens)),
                 y_range=[str(f) for f in reversed(chosen)], x_range=(-0.5, len(tokens) - 0.5),
                 title=f"{result.sae} at {result.point}: strongest features per token", toolbar_location=None,
                 tools="", name="sae-strip-figure")
    fig.rect("x", "y", 1, 1, source=source, fill_color="#c0392b", fill_alpha="alpha", line_color=None,
             selection_fill_alpha="alpha", selection_line_color="#1a1a1a",
             nonselection_fill_alpha="alpha", nonselection_line_color=None)
    fig.add_tools(HoverTool(tooltips=[("token", "@token"), ("feature", "@y"), ("activation", "@value{0.000}")]),
                  TapTool())
    fig.xaxis.ticker = list(range(len(tokens)))
    fig.xaxis.major_label_overrides = {i: t for i, t in enumerate(tokens)}
    fig.xaxis.major_label_orientation = 0.9
    err = figure(height=120, width=fig.width, x_range=fig.x_range, title="reconstruction error (share of ||x||²)",
                 toolbar_location=None)
    err.vbar(x=list(range(len(tokens))), top=result.reconstruction_error.tolist(), width=0.8, color="#7f8c8d")
    parts = [fig, err]
    card = analysis.methods.get("sae_feature")
    if picked is not None and isinstance(card, SAEFeatureResult) and card.feature == picked:
        parts.append(feature_card(analysis))
    elif "feature" in options:  # drawn by the dashboard, where a tap picks the feature
        parts.insert(0, Div(text="<i>click a cell to open its feature's card</i>", styles={"color": "#666"}))
    return _finish(column(*parts), save_path, f"SAE features: {result.sae}")


def feature_card(analysis: AnalysisResult, *, save_path: str | None = None, **options: Any) -> Any:
    """One feature: density, histogram, top contexts, promoted and suppressed tokens."""
    result = _pick(analysis, ("sae_feature",), SAEFeatureResult)
    contexts = "".join(
        f"<div style='font-family:monospace;margin:2px 0'>{_escape(c.before)}"
        f"<b style='background:rgba(192,57,43,{min(1.0, c.activation / (result.max_activation or 1)):.2f})'>"
        f"{_escape(c.token)}</b>{_escape(c.after)} <span style='color:#888'>({c.activation:.3g})</span></div>"
        for c in result.contexts
    )
    lens = "".join(
        f"<tr><td>{_escape(p.token)!s}</td><td>{p.score:+.3g}</td><td>{_escape(s.token)}</td><td>{s.score:+.3g}</td></tr>"
        for p, s in zip(result.promoted, result.suppressed, strict=False)
    )
    eval_density = "n/a" if result.eval_density is None else f"{result.eval_density:.3%}"
    head = Div(text=(
        f"<h3>{result.sae} feature {result.feature} ({result.point})</h3>"
        f"<p>density {result.density:.3%} of {result.n_tokens} tokens searched; {eval_density} of held-out "
        f"evaluation tokens; max activation {result.max_activation:.3g}</p>"
        f"<h4>top-activating contexts</h4>{contexts or '<p>none: the feature never fired here</p>'}"
        f"<h4>logit lens of the decoder direction</h4><table><tr><th>promoted</th><th></th><th>suppressed</th>"
        f"<th></th></tr>{lens}</table>"
    ), width=700)
    edges = np.asarray(result.histogram_edges)
    hist = figure(height=220, width=420, title="activation histogram (non-zero)", toolbar_location=None)
    hist.quad(top=result.histogram_counts, bottom=0, left=edges[:-1], right=edges[1:], color="#2980b9")
    return _finish(row(head, hist, name=CARD_NAME, tags=[int(result.feature)], css_classes=[CARD_NAME]), save_path,
                   f"SAE feature {result.feature}")
