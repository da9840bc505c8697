"""Merge token scores into whole words by character offsets.

A word is a run of word characters (with inner apostrophes) or a run of punctuation;
a token belongs to the word holding its first non-space character, so byte-level
pieces and leading-space pieces (``Ġcat``) land in the right word. Whitespace-only
and special tokens belong to no word.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from lmlens import Token
from lmlens_importance.result import WordScore

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")


def word_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in WORD.finditer(text)]


def merge_words(
    text: str, tokens: Sequence[Token], scores: Sequence[float], special: Sequence[bool]
) -> list[WordScore]:
    spans = word_spans(text)
    starts = [s for s, _ in spans]
    members: dict[int, list[int]] = {}
    for index, token in enumerate(tokens):
        if special[index] or token.end <= token.start:
            continue
        piece = text[token.start : token.end]
        offset = len(piece) - len(piece.lstrip())
        if offset == len(piece):
            continue  # whitespace only
        char = token.start + offset
        w = bisect.bisect_right(starts, char) - 1
        if w >= 0 and spans[w][0] <= char < spans[w][1]:
            members.setdefault(w, []).append(index)
    totals = {w: sum(float(scores[i]) for i in idx) for w, idx in members.items()}
    peak = max((abs(v) for v in totals.values()), default=0.0) or 1.0
    return [
        WordScore(
            text=text[spans[w][0] : spans[w][1]],
            start=spans[w][0],
            end=spans[w][1],
            tokens=members[w],
            score=totals[w],
            normalized=totals[w] / peak,
        )
        for w in sorted(members)
    ]
