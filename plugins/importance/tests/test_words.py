"""Word merging by character offsets."""

from __future__ import annotations

import pytest

from lmlens import Token
from lmlens_importance.words import merge_words


def _tokens(text: str, spans: list[tuple[int, int]]) -> list[Token]:
    return [Token(id=i, piece=text[s:e], text=text[s:e], start=s, end=e) for i, (s, e) in enumerate(spans)]


def test_leading_space_pieces_and_subwords_join_their_word():
    text = "The unbelievable cat."
    # 'The' ' un' 'believ' 'able' ' cat' '.'  (SmolLM2-style pieces carry their leading space)
    tokens = _tokens(text, [(0, 3), (3, 6), (6, 12), (12, 16), (16, 20), (20, 21)])
    words = merge_words(text, tokens, [1.0, 0.5, 0.25, 0.25, -2.0, 0.1], [False] * 6)
    assert [w.text for w in words] == ["The", "unbelievable", "cat", "."]
    assert [w.tokens for w in words] == [[0], [1, 2, 3], [4], [5]]
    assert [w.score for w in words] == pytest.approx([1.0, 1.0, -2.0, 0.1])
    assert [w.normalized for w in words] == pytest.approx([0.5, 0.5, -1.0, 0.05])
    assert (words[1].start, words[1].end) == (4, 16)


def test_specials_and_whitespace_tokens_belong_to_no_word():
    text = "hi  yo"
    tokens = [
        Token(id=0, piece="[CLS]", text="", start=0, end=0),
        *_tokens(text, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]),
    ]
    words = merge_words(text, tokens, [9.0, 1, 1, 5, 5, 2, 2], [True] + [False] * 6)
    assert [(w.text, w.tokens, w.score) for w in words] == [("hi", [1, 2], 2.0), ("yo", [5, 6], 4.0)]


def test_apostrophes_stay_inside_a_word_and_punctuation_is_its_own():
    text = "don't stop!"
    tokens = _tokens(text, [(0, 3), (3, 5), (5, 10), (10, 11)])
    words = merge_words(text, tokens, [1, 1, 1, 1], [False] * 4)
    assert [w.text for w in words] == ["don't", "stop", "!"]
