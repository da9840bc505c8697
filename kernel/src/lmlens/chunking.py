"""Windows over long documents, and stitching per-token results back onto them.

A document is tokenized once; windows of ``window_size`` tokens start every
``stride`` tokens, the last one aligned to the document's end, so every token is in
at least one window. Each window is analysed as its own text (with the model's
special tokens around it); per-token fields are then mapped back onto the
document's tokens by an ownership rule:

- causal models: a token takes its values from the window where it has the most
  left context (the farthest from the window's start): a causal model never sees
  the right side, so only the left edge matters;
- encoders: from the window where it sits farthest from either edge.

Ties go to the earlier window.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from lmlens.errors import InvalidParamsError
from lmlens.wire import AnalysisResult, FieldAccess, Float32Array, ModelRef, Token

RULE_CAUSAL = "most-left-context: each token takes the window where it has the most tokens before it"
RULE_ENCODER = "farthest-from-edge: each token takes the window where it is farthest from both edges"


class Window(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    start: int  # first document token
    end: int  # one past the last document token
    char_start: int
    char_end: int


class WindowResult(msgspec.Struct, frozen=True, kw_only=True):
    """One window's analysis, as soon as it is computed.

    ``result.tokens`` are the window's tokens, special tokens included, with character
    offsets into the document; the window's first document token is
    ``result.tokens[offset]``.
    """

    window: Window
    n_windows: int
    offset: int
    result: AnalysisResult


class DocumentResult(FieldAccess, msgspec.Struct, frozen=True, kw_only=True):
    """A whole document's analysis, stitched from windows."""

    model: ModelRef
    n_tokens: int
    tokens: list[Token]
    windows: list[Window]
    stitch_rule: str
    per_token: dict[str, dict[str, Float32Array]]  # method -> field -> array, token axis = document
    window_results: list[WindowResult] | None = None
    window_size: int = 0  # document tokens per window actually used (special tokens not counted)
    stride: int = 0
    requested_window_size: int = 0  # what was asked (max_length); above window_size when clamped
    notes: list[str] = []  # adjustments made to the request, e.g. a max_length clamped to the limit


def plan_windows(n_tokens: int, window_size: int, stride: int) -> list[tuple[int, int]]:
    if window_size < 1:
        raise InvalidParamsError("window_size must be at least 1", field="window_size")
    if not 1 <= stride <= window_size:
        raise InvalidParamsError(
            f"stride must be between 1 and window_size ({window_size}), not {stride}", field="stride"
        )
    if n_tokens <= window_size:
        return [(0, n_tokens)]
    starts = [*range(0, n_tokens - window_size, stride), n_tokens - window_size]
    return [(s, s + window_size) for s in dict.fromkeys(starts)]


def owners(spans: list[tuple[int, int]], n_tokens: int, *, causal: bool) -> np.ndarray:
    """[n_tokens] -> index of the window each document token takes its values from."""
    owner = np.full(n_tokens, -1, dtype=np.int64)
    best = np.full(n_tokens, -1, dtype=np.int64)
    for w, (start, end) in enumerate(spans):
        pos = np.arange(start, end)
        score = pos - start if causal else np.minimum(pos - start, end - 1 - pos)
        better = score > best[start:end]
        owner[start:end][better] = w
        best[start:end][better] = score[better]
    assert (owner >= 0).all(), "windows must cover the document"
    return owner


def stitch_field(
    arrays: list[np.ndarray], axis: int, offsets: list[int], spans: list[tuple[int, int]], owner: np.ndarray
) -> np.ndarray:
    """Gather one per-token field from each window into a document-long array."""
    first = arrays[0]
    axis = axis % first.ndim
    shape = list(first.shape)
    shape[axis] = len(owner)
    out = np.empty(shape, dtype=first.dtype)
    for w, (array, offset, (start, _end)) in enumerate(zip(arrays, offsets, spans, strict=True)):
        doc_positions = np.flatnonzero(owner == w)
        if doc_positions.size == 0:
            continue
        window_positions = doc_positions - start + offset
        taken = np.take(array, window_positions, axis=axis)
        index: list[Any] = [slice(None)] * out.ndim
        index[axis] = doc_positions
        out[tuple(index)] = taken
    return out
