"""Static PNG pictures with matplotlib (Agg): no browser, works headless and in CI.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot, so no global
state is touched and threads of a server can draw at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmlens import Token
from lmlens_attention.pictures import token_labels

_MAX_TICKS = 48  # more token labels than this are unreadable; show every k-th


def _ticks(n: int) -> list[int]:
    step = max(1, -(-n // _MAX_TICKS))
    return list(range(0, n, step))


def _token_names(tokens: Sequence[Token]) -> list[str]:
    return [label.split(": ", 1)[1] for label in token_labels(tokens)]


def _save(fig: Figure, path: str, dpi: int) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")


def pattern_png(pattern: np.ndarray, tokens: Sequence[Token], title: str, path: str, dpi: int = 100) -> None:
    """pattern [q_pos, k_pos] -> PNG heatmap with token labels."""
    n_q, n_k = pattern.shape
    names = _token_names(tokens)
    side = min(12.0, 3.0 + 0.12 * max(n_q, n_k))
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(pattern, cmap="viridis", vmin=0.0, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    xs, ys = _ticks(n_k), _ticks(n_q)
    ax.set_xticks(xs, [names[i] for i in xs], rotation=90, fontsize=7)
    ax.set_yticks(ys, [names[i] for i in ys], fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    _save(fig, path, dpi)


def grid_png(patterns: np.ndarray, heads: Sequence[int], layer: int, path: str, columns: int = 4,
             dpi: int = 80) -> None:
    """patterns [head, q_pos, k_pos] -> PNG of small multiples."""
    rows = -(-len(heads) // columns)
    fig = Figure(figsize=(2.6 * columns, 2.6 * rows))
    for i, head in enumerate(heads):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(patterns[i], cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set_title(f"layer {layer} head {head}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path, dpi)


def map_png(values: np.ndarray, layers: Sequence[int], heads: Sequence[int], title: str, path: str,
            dpi: int = 100) -> None:
    """values [layer, head] -> PNG layer x head map."""
    n_layers, n_heads = values.shape
    fig = Figure(figsize=(max(5.0, 2.0 + 0.45 * n_heads), 1.5 + 0.25 * n_layers))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads), [str(h) for h in heads], fontsize=7)
    ax.set_yticks(range(n_layers), [str(i) for i in layers], fontsize=7)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, path, dpi)
