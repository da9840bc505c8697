"""The anomaly panel: the text coloured by per-token score, and a bar per signal
against its normal range.

Each signal's bar is drawn on the scale of its own normal range: 0 is the 0.5%
quantile of normal texts, 1 the 99.5% quantile (the grey band). The bar ends at the
input's value on that scale, red when the signal fired.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from lmlens.errors import InvalidParamsError
from lmlens.wire import AnalysisResult
from lmlens_anomaly.result import AnomalyResult


def _unpack(result: Any) -> tuple[AnomalyResult, list[Any]]:
    if isinstance(result, AnalysisResult):
        found = result.methods.get("anomaly")
        if not isinstance(found, AnomalyResult):
            raise InvalidParamsError("the result has no 'anomaly' method result", field="result")
        return found, list(result.tokens)
    if isinstance(result, AnomalyResult):
        return result, []
    raise InvalidParamsError(f"cannot draw an anomaly panel for {type(result).__name__}", field="result")


def position(value: float, low: float, high: float) -> float:
    """``value`` on the scale where the normal range is [0, 1]."""
    span = high - low if high > low else max(abs(high), 1e-9)
    return (value - low) / span


def colored_html(found: AnomalyResult, tokens: list[Any]) -> str:
    if not tokens:
        return ""
    peak = max(float(found.threshold), float(max(found.token_scores, default=0.0)), 1e-9)
    spans = []
    for token, score in zip(tokens, found.token_scores, strict=False):
        alpha = min(1.0, max(0.0, float(score) / peak))
        spans.append(
            f'<span title="{float(score):.2f}" style="background: rgba(220, 40, 40, {alpha:.2f})">'
            f"{html.escape(token.text)}</span>"
        )
    return "<div style='font-family: monospace; white-space: pre-wrap'>" + "".join(spans) + "</div>"


def title(found: AnomalyResult) -> str:
    verdict = "ANOMALY" if found.is_anomaly else "normal"
    fired = ", ".join(s.name for s in found.anomaly_types) or "none"
    return f"{verdict} · score {found.score:.2f} (threshold {found.threshold:.2f}) · fired: {fired}"


def bokeh_layout(found: AnomalyResult, tokens: list[Any]) -> Any:
    from bokeh.layouts import column
    from bokeh.models import BoxAnnotation, ColumnDataSource, Div, HoverTool  # type: ignore[attr-defined]
    from bokeh.plotting import figure

    names = [s.name for s in found.signals][::-1]
    source = ColumnDataSource(
        {
            "name": names,
            "x": [position(s.value, s.normal_low, s.normal_high) for s in found.signals][::-1],
            "value": [s.value for s in found.signals][::-1],
            "low": [s.normal_low for s in found.signals][::-1],
            "high": [s.normal_high for s in found.signals][::-1],
            "p": [s.p_value for s in found.signals][::-1],
            "color": ["#d62728" if s.fired else "#1f77b4" for s in found.signals][::-1],
        }
    )
    plot = figure(y_range=names, height=40 + 22 * len(names), width=700, title="signals (normal range = grey band)")
    plot.add_layout(BoxAnnotation(left=0, right=1, fill_color="grey", fill_alpha=0.2))
    plot.hbar(y="name", left=0, right="x", height=0.6, color="color", source=source)
    plot.add_tools(HoverTool(tooltips=[("value", "@value"), ("normal", "@low .. @high"), ("p", "@p")]))
    parts = [Div(text=f"<b>{html.escape(title(found))}</b>"), plot]
    text = colored_html(found, tokens)
    if text:
        parts.insert(1, Div(text=text, width=700))
    return column(*parts)


def save_png(found: AnomalyResult, tokens: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(found.signals), 1)
    fig, (ax_text, ax) = plt.subplots(2, 1, figsize=(9, 2 + 0.35 * n), gridspec_kw={"height_ratios": [1, n / 3 + 1]})
    ax_text.axis("off")
    peak = max(float(found.threshold), float(max(found.token_scores, default=0.0)), 1e-9)
    x, line = 0.0, 0
    for token, score in zip(tokens, found.token_scores, strict=False):
        label = token.text.replace("\n", " ")
        if x + len(label) > 90:
            x, line = 0.0, line + 1
        alpha = min(1.0, max(0.0, float(score) / peak))
        ax_text.text(
            x / 90, 1 - 0.2 * line, label, family="monospace", fontsize=8, va="top",
            bbox={"facecolor": (0.86, 0.16, 0.16, alpha), "edgecolor": "none", "pad": 0.5},
        )
        x += len(label)
    ax_text.set_title(title(found), fontsize=9)
    names = [s.name for s in found.signals]
    ax.axvspan(0, 1, color="grey", alpha=0.2)
    ax.barh(
        names,
        [position(s.value, s.normal_low, s.normal_high) for s in found.signals],
        color=["#d62728" if s.fired else "#1f77b4" for s in found.signals],
    )
    ax.invert_yaxis()
    ax.set_xlabel("value on the normal-range scale (0 = 0.5% quantile, 1 = 99.5% quantile)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def anomaly_panel(result: Any, *, save_path: str | None = None, **options: Any) -> Any:
    """The registered panel: a Bokeh layout; ``save_path`` ending in .html or .png also saves it."""
    if options:
        raise InvalidParamsError(f"unknown picture options: {', '.join(sorted(options))}", field="options")
    found, tokens = _unpack(result)
    made = bokeh_layout(found, tokens)
    if save_path is not None:
        path = Path(save_path)
        if path.suffix == ".html":
            from bokeh.embed import file_html
            from bokeh.resources import CDN

            path.write_text(file_html(made, resources=CDN, title=title(found)), encoding="utf-8")
        elif path.suffix == ".png":
            save_png(found, tokens, path)
        else:
            raise InvalidParamsError(f"save_path must end in .html or .png, not {path.suffix!r}", field="save_path")
    return made
