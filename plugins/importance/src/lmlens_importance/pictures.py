"""The text coloured by score: a Bokeh layout (dashboard panel, HTML) and a matplotlib PNG.

Red raises the target, blue lowers it; the colour scale is the normalised score in
[-1, 1]. A result whose integrated gradients did not converge says so in the title,
in red, in both pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bokeh.core.property.vectorization import value
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import (  # type: ignore[attr-defined]  # bokeh's stubs omit lazily exported models
    ColorBar,
    ColumnDataSource,
    Div,
    HoverTool,
    LinearColorMapper,
    Range1d,
)
from bokeh.palettes import RdBu11
from bokeh.plotting import figure
from bokeh.resources import CDN, INLINE

from lmlens import InvalidParamsError
from lmlens.wire import AnalysisResult
from lmlens_importance.result import ImportanceResult

PALETTE = tuple(reversed(RdBu11))  # index 0 = most negative (blue)
LINE_HEIGHT = 1.0


@dataclass(frozen=True)
class Piece:
    label: str
    x: float  # left edge, in character widths
    line: int
    width: float
    score: float
    normalized: float


def _display(text: str) -> str:
    return text.replace("\n", "⏎").replace("\t", "⇥")


def layout(result: ImportanceResult, view: str, width_chars: int) -> list[Piece]:
    """Place tokens (or words) left to right, wrapping at ``width_chars`` characters."""
    if view == "tokens":
        items = [(_display(t.text) if t.text else f"[{t.index}]", t.score, t.normalized) for t in result.tokens]
    elif view == "words":
        items = [(_display(w.text) + " ", w.score, w.normalized) for w in result.words]
    else:
        raise InvalidParamsError(f"view must be 'tokens' or 'words', not {view!r}", field="view")
    pieces: list[Piece] = []
    x, line = 0.0, 0
    for label, score, normalized in items:
        width = float(max(1, len(label)))
        if x > 0 and x + width > width_chars:
            x, line = 0.0, line + 1
            label = label.lstrip() or label
            width = float(max(1, len(label)))
        pieces.append(Piece(label, x, line, width, score, normalized))
        x += width
    return pieces


def headline(result: ImportanceResult) -> tuple[str, str | None]:
    """(what was attributed, the reliability warning or None)."""
    title = f"{result.method} · {result.target.description} = {result.target.value:.4g}"
    c = result.convergence
    if c is not None:
        rel = "n/a" if c.relative_delta is None else f"{c.relative_delta:.1%}"
        title += f" · IG {c.steps} steps {c.rule}/{c.spacing}/{c.path}, delta {c.delta:.3g} ({rel})"
    warning = None
    if result.unreliable:
        warning = "UNRELIABLE: integrated gradients did not converge " + (
            f"(relative delta above {c.tolerance:.0%})" if c is not None else ""
        )
    return title, warning


def _color_index(normalized: float) -> int:
    return min(len(PALETTE) - 1, max(0, int((normalized + 1) / 2 * len(PALETTE))))


def _importance(result: AnalysisResult | ImportanceResult, method: str) -> ImportanceResult:
    if isinstance(result, ImportanceResult):
        return result
    found = result.methods.get(method)
    if not isinstance(found, ImportanceResult):
        raise InvalidParamsError(f"the result holds no importance result under {method!r}", field="method")
    return found


def bokeh_layout(result: ImportanceResult, *, view: str = "tokens", width_chars: int = 80) -> Any:
    pieces = layout(result, view, width_chars)
    lines = (pieces[-1].line + 1) if pieces else 1
    source = ColumnDataSource(
        {
            "x": [p.x + p.width / 2 for p in pieces],
            "left": [p.x + 0.1 for p in pieces],
            "y": [-p.line * LINE_HEIGHT for p in pieces],
            "w": [p.width for p in pieces],
            "label": [p.label for p in pieces],
            "score": [p.score for p in pieces],
            "normalized": [p.normalized for p in pieces],
        }
    )
    mapper = LinearColorMapper(palette=PALETTE, low=-1.0, high=1.0)
    fig = figure(
        width=int(width_chars * 9 + 40),
        height=int(lines * 28 + 90),
        tools="save",
        x_range=Range1d(start=-0.5, end=width_chars + 0.5),
        y_range=Range1d(start=-lines * LINE_HEIGHT + 0.4, end=0.6),
        toolbar_location="right",
    )
    fig.rect(
        "x",
        "y",
        width="w",
        height=0.9,
        source=source,
        line_color=None,
        fill_color={"field": "normalized", "transform": mapper},
    )
    fig.text(
        "left",
        "y",
        text="label",
        source=source,
        text_baseline="middle",
        text_font=value("monospace"),
        text_font_size="13px",
    )
    fig.add_tools(
        HoverTool(tooltips=[("text", "@label"), ("score", "@score{0.0000}"), ("normalised", "@normalized{0.000}")])
    )
    fig.add_layout(
        ColorBar(color_mapper=mapper, title="normalised score", height=10, orientation="horizontal"), "below"
    )
    fig.axis.visible = False
    fig.grid.visible = False
    fig.outline_line_color = None
    title, warning = headline(result)
    header = f"<b>{_escape(title)}</b>"
    if warning:
        header += f'<br><span style="color:#b00020;font-weight:bold">{_escape(warning)}</span>'
    return column(Div(text=header, width=fig.width), fig)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def save_png(result: ImportanceResult, path: str | Path, *, view: str = "tokens", width_chars: int = 80) -> None:
    """A static PNG with matplotlib's Agg canvas: no browser, no global pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    pieces = layout(result, view, width_chars)
    lines = (pieces[-1].line + 1) if pieces else 1
    char_in = 0.105
    font = char_in * 72 / 0.62  # a monospace glyph is about 0.6 em wide: one glyph per cell
    fig = Figure(figsize=(width_chars * char_in + 0.6, lines * 0.32 + 1.1), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.05, 0.96, 0.95 * lines * 0.32 / (lines * 0.32 + 1.1)))
    cmap = LinearSegmentedColormap.from_list("importance", PALETTE)
    norm = Normalize(-1.0, 1.0)
    for p in pieces:
        y = -p.line * LINE_HEIGHT
        ax.add_patch(Rectangle((p.x, y - 0.45), p.width, 0.9, facecolor=cmap(norm(p.normalized)), edgecolor="none"))
        ax.text(p.x + 0.05, y, p.label, family="monospace", fontsize=font, va="center", ha="left")
    ax.set_xlim(-0.5, width_chars + 0.5)
    ax.set_ylim(-lines * LINE_HEIGHT + 0.4, 0.6)
    ax.axis("off")
    title, warning = headline(result)
    fig.text(0.02, 0.97, title, fontsize=8, va="top", ha="left", wrap=True)
    if warning:
        fig.text(
            0.02,
            0.97 - 0.22 / (lines * 0.32 + 1.1) * 1.5,
            warning,
            fontsize=9,
            color="#b00020",
            weight="bold",
            va="top",
            ha="left",
        )
    fig.savefig(str(path))


def importance_panel(
    result: AnalysisResult | ImportanceResult,
    *,
    save_path: str | None = None,
    method: str = "importance",
    view: str = "tokens",
    width_chars: int = 80,
    resources: str = "inline",
    **options: Any,
) -> Any:
    """The registered panel: a Bokeh layout; ``save_path`` ending in .html or .png also saves it.

    HTML pages inline BokehJS (``resources="inline"``) so they open offline; ``"cdn"``
    writes a small page that loads it from cdn.bokeh.org.
    """
    if resources not in ("inline", "cdn"):
        raise InvalidParamsError(f"resources must be inline or cdn, not {resources!r}", field="resources")
    if options:
        raise InvalidParamsError(f"unknown picture options: {', '.join(sorted(options))}", field="options")
    found = _importance(result, method)
    made = bokeh_layout(found, view=view, width_chars=width_chars)
    if save_path is not None:
        path = Path(save_path)
        if path.suffix == ".html":
            chosen = INLINE if resources == "inline" else CDN  # inline: the page opens offline
            path.write_text(file_html(made, resources=chosen, title=headline(found)[0]), encoding="utf-8")
        elif path.suffix == ".png":
            save_png(found, path, view=view, width_chars=width_chars)
        else:
            raise InvalidParamsError(f"save_path must end in .html or .png, not {path.suffix!r}", field="save_path")
    return made
