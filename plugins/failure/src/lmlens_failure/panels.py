"""The ``failure`` panel: a gauge of the failure probability and the signals' contributions.

``failure_panel(result, save_path=None, group="all")`` takes an ``AnalysisResult`` with a
``failure`` result (or the ``FailureResult`` itself) and returns a Bokeh layout: the gauge
(the probability against the threshold; its numbers in the source named ``GAUGE_SOURCE``)
and one bar per contributing signal (``group``: only that group's signals); ``.html`` writes
a standalone page with BokehJS inlined (``resources="cdn"`` for a small page that loads it),
``.png`` a matplotlib picture (no browser needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmlens.errors import InvalidParamsError

GAUGE_SOURCE = "failure-gauge"
BARS_SOURCE = "failure-signals"


def groups(res: Any) -> list[str]:
    """The dashboard's group selector: "all", then each group among the contributions (when several)."""
    found = list(dict.fromkeys(s.group for s in res.contributions))
    return ["all", *found] if len(found) > 1 else []


def _failure_result(result: Any) -> Any:
    from lmlens_failure.method import FailureResult

    if isinstance(result, FailureResult):
        return result
    found = getattr(result, "methods", {}).get("failure")
    if not isinstance(found, FailureResult):
        raise InvalidParamsError("the analysis has no 'failure' result to draw", field="method")
    return found


def _gauge(res: Any) -> Any:
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure

    fig = figure(
        name="failure-gauge-figure",
        width=320,
        height=200,
        x_range=(-1.2, 1.2),
        y_range=(-0.25, 1.2),
        toolbar_location=None,
        title=f"failure probability {res.failure_probability:.2f} ({res.label})",
    )
    fig.axis.visible = False
    fig.grid.visible = False
    # the dial runs from pi (p = 0) to 0 (p = 1)
    bands = [(0.0, res.threshold, "#8fd19e"), (res.threshold, 1.0, "#f4a6a6")]
    for lo, hi, color in bands:
        fig.annular_wedge(
            x=0,
            y=0,
            inner_radius=0.6,
            outer_radius=1.0,
            start_angle=math.pi * (1 - hi),
            end_angle=math.pi * (1 - lo),
            color=color,
        )
    angle = math.pi * (1 - res.failure_probability)
    needle = ColumnDataSource(
        {"value": [res.failure_probability], "threshold": [res.threshold], "x1": [0.95 * math.cos(angle)],
         "y1": [0.95 * math.sin(angle)]},
        name=GAUGE_SOURCE,
    )
    fig.segment(x0=0, y0=0, x1="x1", y1="y1", line_width=4, color="#222222", source=needle)
    tick = math.pi * (1 - res.threshold)
    fig.segment(x0=0.55 * math.cos(tick), y0=0.55 * math.sin(tick), x1=1.05 * math.cos(tick),
                y1=1.05 * math.sin(tick), line_width=2, color="#222222", line_dash="dashed")
    fig.text(x=[0], y=[-0.2], text=[f"threshold {res.threshold:.2f}"], text_align="center", text_font_size="11px")
    fig.scatter(x=[0], y=[0], size=10, color="#222222")
    return fig


def _bars(res: Any, group: str = "all") -> Any:
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    rows = [s for s in reversed(res.contributions) if group in ("all", s.group)]
    names = [s.name for s in rows] or ["(none)"]
    source = ColumnDataSource(
        {
            "name": [s.name for s in rows],
            "contribution": [s.contribution for s in rows],
            "value": [s.value for s in rows],
            "direction": [s.direction for s in rows],
            "group": [s.group for s in rows],
            "description": [s.description for s in rows],
            "color": ["#d9534f" if s.contribution > 0 else "#5cb85c" for s in rows],
        },
        name=BARS_SOURCE,
    )
    fig = figure(
        name="failure-signals-figure",
        y_range=names,
        width=460,
        height=60 + 28 * len(names),
        toolbar_location=None,
        title="contributions to the log-odds of failure" + ("" if group == "all" else f" ({group} signals)"),
        x_axis_label="log-odds",
    )
    fig.hbar(y="name", right="contribution", left=0, height=0.7, color="color", source=source)
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("signal", "@name (@group): @description"),
                ("value", "@value{0.0000}"),
                ("contribution", "@contribution{+0.000}"),
                ("", "@direction failure"),
            ]
        )
    )
    return fig


def _png(res: Any, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [1, 1.6]})
    ax1.barh([0], [res.failure_probability], color="#d9534f" if res.predicted_failure else "#5cb85c")
    ax1.axvline(res.threshold, color="k", linestyle="--")
    ax1.set_xlim(0, 1)
    ax1.set_yticks([])
    ax1.set_title(f"failure probability {res.failure_probability:.2f} ({res.label})")
    rows = list(reversed(res.contributions))
    ax2.barh(
        [s.name for s in rows],
        [s.contribution for s in rows],
        color=["#d9534f" if s.contribution > 0 else "#5cb85c" for s in rows],
    )
    ax2.axvline(0, color="k", linewidth=0.8)
    ax2.set_title("contributions (log-odds of failure)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def failure_panel(result: Any, *, save_path: str | None = None, group: str = "all", **options: Any) -> Any:
    from bokeh.layouts import column, row
    from bokeh.models import Div

    res = _failure_result(result)
    if group != "all" and group not in {s.group for s in res.contributions}:
        raise InvalidParamsError(f"no {group!r} signal among the contributions", field="group")
    layout: Any = row(_gauge(res), _bars(res, group))
    if res.warnings:
        import html

        note = "; ".join(html.escape(w) for w in res.warnings)
        layout = column(layout, Div(text=f"<span style='color:#b36b00'>{note}</span>"))
    if save_path is None:
        return layout
    path = Path(save_path)
    suffix = path.suffix.lower()
    if suffix == ".html":
        from bokeh.embed import file_html
        from bokeh.resources import CDN, INLINE

        resources = options.get("resources", "inline")  # inline: the page opens offline
        if resources not in ("inline", "cdn"):
            raise InvalidParamsError(f"resources must be inline or cdn, not {resources!r}", field="resources")
        path.write_text(file_html(layout, INLINE if resources == "inline" else CDN, "failure"), encoding="utf-8")
    elif suffix == ".png":
        _png(res, str(path))
    else:
        raise InvalidParamsError(
            f"save_path must end in .html or .png, not {path.suffix or 'nothing'}", field="save_path"
        )
    return layout
