"""The model's special tokens: how a tokenizer frames a text, and where those tokens sit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmlens.wire import Token


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text ([CLS] / [SEP], BOS)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    return [], []


def special_positions(tokenizer: Any, tokens: Sequence[Token]) -> list[bool]:
    """Per token: is it a special token the tokenizer added ([CLS], <bos>), spanning no text?"""
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [t.id in specials and t.start == t.end for t in tokens]
