"""The anomaly panel: a gauge of the score against the detector's threshold, the text
coloured by per-token score, and a bar per signal against its normal range.

The gauge's numbers are in the source named ``GAUGE_SOURCE``. Each signal's bar is drawn
on the scale of its own normal range: 0 is the 0.5% quantile of normal texts, 1 the 99.5%
quantile (the grey band). The bar ends at the input's value on that scale, red when the
signal fired. ``group``: only that group's signals (the dashboard's selector).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from lmlens.errors import InvalidParamsError
from lmlens.wire import AnalysisResult
from lmlens_anomaly.result import AnomalyResult

GAUGE_SOURCE = "anomaly-gauge"
BARS_SOURCE = "anomaly-signals"


def groups(found: AnomalyResult) -> list[str]:
    """The dashboard's group selector: "all", then each signal group present (when several)."""
    present = list(dict.fromkeys(s.group for s in found.signals))
    return ["all", *present] if len(present) > 1 else []


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


def gauge(found: AnomalyResult) -> Any:
    """A dial from 0 to a little past max(2 x threshold, score): green below the threshold, red above."""
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure

    top = max(2.0 * found.threshold, 1.15 * found.score, 1e-9)
    fig = figure(width=300, height=200, x_range=(-1.2, 1.2), y_range=(-0.3, 1.2), toolbar_location=None,
                 title=f"anomaly score {found.score:.2f} (threshold {found.threshold:.2f})",
                 name="anomaly-gauge-figure")
    fig.axis.visible = False
    fig.grid.visible = False
    cut = min(found.threshold / top, 1.0)
    for lo, hi, color in ((0.0, cut, "#8fd19e"), (cut, 1.0, "#f4a6a6")):
        fig.annular_wedge(x=0, y=0, inner_radius=0.6, outer_radius=1.0, start_angle=math.pi * (1 - hi),
                          end_angle=math.pi * (1 - lo), color=color)
    angle = math.pi * (1 - min(found.score / top, 1.0))
    needle = ColumnDataSource(
        {"value": [found.score], "threshold": [found.threshold], "target_fpr": [found.target_fpr],
         "x1": [0.95 * math.cos(angle)], "y1": [0.95 * math.sin(angle)]},
        name=GAUGE_SOURCE,
    )
    fig.segment(x0=0, y0=0, x1="x1", y1="y1", line_width=4, color="#222222", source=needle)
    fig.scatter(x=[0], y=[0], size=10, color="#222222")
    fig.text(x=[0], y=[-0.25], text=[f"{'ANOMALY' if found.is_anomaly else 'normal'} at a {found.target_fpr:.1%} "
                                     "false-positive rate"], text_align="center", text_font_size="11px")
    return fig


def bokeh_layout(found: AnomalyResult, tokens: list[Any], group: str = "all") -> Any:
    from bokeh.layouts import column, row
    from bokeh.models import BoxAnnotation, ColumnDataSource, Div, HoverTool  # type: ignore[attr-defined]
    from bokeh.plotting import figure

    shown = [s for s in found.signals if group in ("all", s.group)][::-1]
    names = [s.name for s in shown]
    source = ColumnDataSource(
        {
            "name": names,
            "group": [s.group for s in shown],
            "x": [position(s.value, s.normal_low, s.normal_high) for s in shown],
            "value": [s.value for s in shown],
            "low": [s.normal_low for s in shown],
            "high": [s.normal_high for s in shown],
            "p": [s.p_value for s in shown],
            "score": [s.score for s in shown],
            "color": ["#d62728" if s.fired else "#1f77b4" for s in shown],
        },
        name=BARS_SOURCE,
    )
    label = "signals" if group == "all" else f"{group} signals"
    plot = figure(y_range=names, height=40 + 22 * max(len(names), 1), width=560, name="anomaly-signals-figure",
                  title=f"{label} (normal range = grey band)")
    plot.add_layout(BoxAnnotation(left=0, right=1, fill_color="grey", fill_alpha=0.2))
    plot.hbar(y="name", left=0, right="x", height=0.6, color="color", source=source)
    plot.add_tools(HoverTool(tooltips=[("signal", "@name (@group)"), ("value", "@value"), ("normal", "@low .. @high"),
                                       ("p", "@p"), ("score", "@score")]))
    parts = [Div(text=f"<b>{html.escape(title(found))}</b>"), row(gauge(found), plot)]
    text = colored_html(found, tokens)
    if text:
        parts.insert(1, Div(text=text, width=860))
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
    """The registered panel: a Bokeh layout; ``save_path`` ending in .html or .png also saves it.

    ``group``: draw only that group's signals ("all", the default: every signal)."""
    group = options.pop("group", "all")
    if options:
        raise InvalidParamsError(f"unknown picture options: {', '.join(sorted(options))}", field="options")
    found, tokens = _unpack(result)
    if group != "all" and group not in {s.group for s in found.signals}:
        raise InvalidParamsError(f"no {group!r} signal in this result", field="group")
    made = bokeh_layout(found, tokens, group)
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
