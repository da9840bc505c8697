"""What the detector reads from one forward pass, and from the text itself.

Every signal comes from the one shared pass (``Need``s with reducers that run inside
the hook) plus the characters of the text:

- ``blocks.{l}.resid_post`` at the chosen layers: mean-pooled over content tokens (special
  tokens, and a causal model's first position, which is an attention sink with outsized
  activations, are left out), and kept per token at one layer for per-token scores;
- ``blocks.{l}.attn.pattern`` reduced in the hook to two numbers per head: the mean
  normalised entropy of the query rows (entropy / log of the number of keys the row can
  see) and the mean attention mass on position 0 (the sink);
- ``logits`` (causal models with an LM head): the surprisal of each token given its left
  context;
- the characters: class shares, word and token lengths, vowel share; and repetition of
  token trigrams.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmlens import Need

_DROP_PUNCT = str.maketrans("", "", string.punctuation)
_DROP_VOWELS = str.maketrans("", "", "aeiouAEIOU")
CHAR_FEATURES = (
    "letters",
    "digits",
    "whitespace",
    "punctuation",
    "other",
    "non_ascii",
    "upper_share",
    "vowel_share",
    "log_word_length",
    "log_chars_per_token",
    "long_words",
)


def attention_key(layer: int) -> str:
    return f"anomaly.attn.{layer}"


def hidden_point(layer: int) -> str:
    return f"blocks.{layer}.resid_post"


def attention_reducer(causal: bool):  # type: ignore[no-untyped-def]
    """Reduce ``[batch, head, q, k]`` to ``[batch, head, 2]``: normalised entropy and sink mass."""

    def reduce(pattern: torch.Tensor) -> np.ndarray:
        p = pattern.detach().float()
        q = p.shape[-2]
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)  # [batch, head, q]
        if causal:
            visible = torch.arange(1, q + 1, dtype=p.dtype, device=p.device)  # keys row i can see
        else:
            visible = torch.full((q,), float(p.shape[-1]), dtype=p.dtype, device=p.device)
        rows = visible > 1
        if not bool(rows.any()):  # a one-token text: nothing to normalise
            return np.zeros((p.shape[0], p.shape[1], 2))
        norm_entropy = (entropy[..., rows] / torch.log(visible[rows])).mean(-1)
        sink = p[..., rows, 0].mean(-1)
        return torch.stack([norm_entropy, sink], dim=-1).double().cpu().numpy()

    return reduce


@dataclass(frozen=True)
class Plan:
    """Which parts of the pass a detector reads."""

    hidden_layers: tuple[int, ...]
    attention_layers: tuple[int, ...]
    surprisal: bool
    causal: bool

    def needs(self) -> list[Need]:
        needs = [Need(hidden_point(layer)) for layer in self.hidden_layers]
        reducer = attention_reducer(self.causal)
        needs += [
            Need(f"blocks.{layer}.attn.pattern", reducer=reducer, name=attention_key(layer))
            for layer in self.attention_layers
        ]
        if self.surprisal:
            needs.append(Need("logits"))
        return needs


@dataclass
class Features:
    """One text's raw features (float64 numpy)."""

    pooled: dict[int, np.ndarray]  # layer -> [d_model]
    states: dict[int, np.ndarray]  # layer -> [pos, d_model] (content tokens only where used)
    attention: np.ndarray | None  # [layer, head, 2]
    surprisal: np.ndarray | None  # [pos], nan where undefined (first token, special tokens)
    chars: np.ndarray  # [len(CHAR_FEATURES)]
    repetition: float
    content: np.ndarray  # [pos] bool: tokens that carry text
    n_tokens: int = 0  # tokens in the pass (what attention statistics depend on)


def content_mask(input_ids: Sequence[int], special_ids: set[int], causal: bool) -> np.ndarray:
    mask = np.array([i not in special_ids for i in input_ids], dtype=bool)
    if causal and mask.size > 1:
        mask[0] = False  # the causal sink position
    if not mask.any():
        mask[:] = True
    return mask


def char_features(text: str, n_tokens: int) -> np.ndarray:
    n = max(len(text), 1)
    letters = sum(map(str.isalpha, text))
    digits = sum(map(str.isdigit, text))
    space = sum(map(str.isspace, text))
    punct = len(text) - len(text.translate(_DROP_PUNCT))
    other = n - letters - digits - space - punct
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    upper = sum(map(str.isupper, text))
    ascii_letters = sum(c.isascii() and c.isalpha() for c in text) if non_ascii else letters
    vowels = len(text) - len(text.translate(_DROP_VOWELS))
    words = text.split()
    mean_word = sum(map(len, words)) / max(len(words), 1)
    long_words = sum(len(w) > 12 for w in words) / max(len(words), 1)
    return np.array(
        [
            letters / n,
            digits / n,
            space / n,
            punct / n,
            other / n,
            non_ascii / n,
            upper / max(letters, 1),
            vowels / max(ascii_letters, 1),
            math.log(max(mean_word, 1e-3)),
            math.log(max(len(text), 1) / max(n_tokens, 1)),
            long_words,
        ],
        dtype=np.float64,
    )


def repetition(ids: Sequence[int]) -> float:
    """Share of token trigrams that already occurred earlier in the text."""
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def token_surprisal(logits: torch.Tensor, input_ids: torch.Tensor, content: np.ndarray) -> np.ndarray:
    """Surprisal in nats of each token given its left context; nan where undefined."""
    x = logits[0].float()  # [pos, vocab]
    ids = input_ids[0].to(x.device)
    out = np.full(ids.shape[0], np.nan)
    if ids.shape[0] > 1:
        # surprisal = logsumexp(logits) - logit of the next token
        s = torch.logsumexp(x[:-1], dim=-1) - x[:-1].gather(-1, ids[1:, None])[:, 0]
        out[1:] = s.double().cpu().numpy()
    out[~content] = np.nan
    return out


def extract(
    plan: Plan,
    activations: dict[str, Any],
    input_ids: torch.Tensor,  # [1, pos]
    text: str,
    special_ids: set[int],
) -> Features:
    ids = input_ids[0].tolist()
    content = content_mask(ids, special_ids, plan.causal)
    pooled: dict[int, np.ndarray] = {}
    states: dict[int, np.ndarray] = {}
    for layer in plan.hidden_layers:
        h = activations[hidden_point(layer)][0].detach().double().cpu().numpy()  # [pos, d]
        states[layer] = h
        pooled[layer] = h[content].mean(0)
    attention = None
    if plan.attention_layers:
        attention = np.stack([activations[attention_key(layer)][0] for layer in plan.attention_layers])
    surprisal = None
    if plan.surprisal:
        surprisal = token_surprisal(activations["logits"], input_ids, content)
    content_ids = [i for i, keep in zip(ids, content, strict=True) if keep]
    return Features(
        pooled=pooled,
        states=states,
        attention=attention,
        surprisal=surprisal,
        chars=char_features(text, len(content_ids)),
        repetition=repetition(content_ids),
        content=content,
        n_tokens=len(ids),
    )
