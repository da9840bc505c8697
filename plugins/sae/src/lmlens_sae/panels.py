"""Panels: the per-token feature strip (``sae_features``/``sae``) and the feature card (``sae_feature``).

``panel(result, *, save_path=None, **options)`` returns a Bokeh layout; a ``save_path``
ending in ``.html`` writes a standalone page (BokehJS from the CDN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool
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


def feature_strip(analysis: AnalysisResult, *, save_path: str | None = None, features: int = 12,
                  **options: Any) -> Any:
    """A heat strip: rows are the text's strongest features, columns its tokens."""
    result = _pick(analysis, ("sae_features", "sae"), SAEFeaturesResult)
    chosen = [s.feature for s in result.top_features[:features]]
    tokens = [t.text or t.piece for t in analysis.tokens]
    xs, ys, values, labels = [], [], [], []
    for p in range(len(tokens)):
        row_ids = result.feature_ids[p].tolist()
        for _r, feat in enumerate(chosen):
            value = float(result.activations[p][row_ids.index(feat)]) if feat in row_ids else 0.0
            xs.append(p)
            ys.append(str(feat))
            values.append(value)
            labels.append(tokens[p])
    peak = max(values, default=1.0) or 1.0
    source = ColumnDataSource({"x": xs, "y": ys, "value": values, "token": labels,
                               "alpha": [v / peak for v in values]})
    fig = figure(height=40 + 22 * max(1, len(chosen)), width=max(400, 28 * len(tokens)),
                 y_range=[str(f) for f in reversed(chosen)], x_range=(-0.5, len(tokens) - 0.5),
                 title=f"{result.sae} at {result.point}: strongest features per token", toolbar_location=None)
    fig.rect("x", "y", 1, 1, source=source, fill_color="#c0392b", fill_alpha="alpha", line_color=None)
    fig.add_tools(HoverTool(tooltips=[("token", "@token"), ("feature", "@y"), ("activation", "@value{0.000}")]))
    fig.xaxis.ticker = list(range(len(tokens)))
    fig.xaxis.major_label_overrides = {i: t for i, t in enumerate(tokens)}
    fig.xaxis.major_label_orientation = 0.9
    err = figure(height=120, width=fig.width, x_range=fig.x_range, title="reconstruction error (share of ||x||²)",
                 toolbar_location=None)
    err.vbar(x=list(range(len(tokens))), top=result.reconstruction_error.tolist(), width=0.8, color="#7f8c8d")
    return _finish(column(fig, err), save_path, f"SAE features: {result.sae}")


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
    return _finish(row(head, hist), save_path, f"SAE feature {result.feature}")
