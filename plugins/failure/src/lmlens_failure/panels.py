"""The ``failure`` panel: a gauge of the failure probability and the signals' contributions.

``failure_panel(result, save_path=None)`` takes an ``AnalysisResult`` with a ``failure``
result (or the ``FailureResult`` itself) and returns a Bokeh layout; ``.html`` writes a
standalone page with BokehJS inlined (``resources="cdn"`` for a small page that loads it),
``.png`` a matplotlib picture (no browser needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmlens.errors import InvalidParamsError


def _failure_result(result: Any) -> Any:
    from lmlens_failure.method import FailureResult

    if isinstance(result, FailureResult):
        return result
    found = getattr(result, "methods", {}).get("failure")
    if not isinstance(found, FailureResult):
        raise InvalidParamsError("the analysis has no 'failure' result to draw", field="method")
    return found


def _gauge(res: Any) -> Any:
    from bokeh.plotting import figure

    fig = figure(
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
    fig.segment(x0=0, y0=0, x1=0.95 * math.cos(angle), y1=0.95 * math.sin(angle), line_width=4, color="#222222")
    fig.scatter(x=[0], y=[0], size=10, color="#222222")
    return fig


def _bars(res: Any) -> Any:
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    rows = list(reversed(res.contributions))
    names = [s.name for s in rows] or ["(none)"]
    source = ColumnDataSource(
        {
            "name": [s.name for s in rows],
            "contribution": [s.contribution for s in rows],
            "value": [s.value for s in rows],
            "direction": [s.direction for s in rows],
            "color": ["#d9534f" if s.contribution > 0 else "#5cb85c" for s in rows],
        }
    )
    fig = figure(
        y_range=names,
        width=460,
        height=60 + 28 * len(names),
        toolbar_location=None,
        title="contributions to the log-odds of failure",
        x_axis_label="log-odds",
    )
    fig.hbar(y="name", right="contribution", left=0, height=0.7, color="color", source=source)
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("signal", "@name"),
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


def failure_panel(result: Any, *, save_path: str | None = None, **options: Any) -> Any:
    from bokeh.layouts import row

    res = _failure_result(result)
    layout = row(_gauge(res), _bars(res))
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
