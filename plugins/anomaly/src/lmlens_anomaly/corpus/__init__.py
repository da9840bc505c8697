"""The normal prose the shipped detectors are fitted on, and its fixed train/test split.

Sources (all may ship with lmlens):

- ``generated.txt``: SmolLM2-135M-Instruct's answers to everyday prompts
  (``scripts/generate_corpus.py``; the model is Apache-2.0);
- ``written.txt``: everyday paragraphs written for lmlens (MIT, like the project);
- prose paragraphs of the Python documentation topics in the standard library's
  ``pydoc_data`` (PSF license), filtered to plain sentences, and capped so that
  technical writing stays a minority.

The split is by a hash of each text, so the benchmark's held-out "normal" texts are the
same ones the shipping script never fitted on. After the split, every second text also
gives a short text (its first sentences, at least 8 words): single sentences are common
inputs, and attention statistics and pooled states drift with length, so the normal
corpus must span short lengths too (a detector fitted on paragraphs only flagged short
plain sentences). A short text stays on its paragraph's side of the split.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_PYDOC = 60


def _paragraphs(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def pydoc_prose(limit: int = MAX_PYDOC) -> list[str]:
    """Plain-sentence paragraphs from the stdlib's documentation topics (PSF license)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without pydoc_data
        return []
    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith((" ", "\t")) or ">>>" in para or "::" in para or "*" in para:
                continue
            words = para.split()
            if not 30 <= len(words) <= 120:
                continue
            flat = " ".join(words)
            letters = sum(c.isalpha() or c.isspace() for c in flat) / len(flat)
            if letters < 0.93 or "(" in flat or "=" in flat or "_" in flat:
                continue
            out.append(flat)
    return out[:limit]


def normal_corpus() -> list[tuple[str, str]]:
    """``(source, text)`` for every normal text."""
    rows = [("generated", t) for t in _paragraphs(HERE / "generated.txt")]
    rows += [("written", t) for t in _paragraphs(HERE / "written.txt")]
    rows += [("pydoc", t) for t in pydoc_prose()]
    return rows


def is_test(text: str) -> bool:
    """One text in five, by hash, is held out from every shipped fit."""
    return hashlib.sha256(text.encode("utf-8")).digest()[0] % 5 == 0


def first_sentences(text: str, min_words: int = 8) -> str | None:
    """The shortest run of leading sentences with at least ``min_words`` words, if shorter than the text."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    for k in range(1, len(sentences)):
        head = " ".join(sentences[:k])
        if len(head.split()) >= min_words:
            return head
    return None


def with_short(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = list(rows)
    for i, (source, text) in enumerate(rows):
        head = first_sentences(text) if i % 2 == 0 else None
        if head:
            out.append((f"{source}-short", head))
    return out


def split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    rows = normal_corpus()
    train = [r for r in rows if not is_test(r[1])]
    test = [r for r in rows if is_test(r[1])]
    return with_short(train), with_short(test)
