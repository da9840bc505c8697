"""Head classification: per-head scores from texts and probes, aggregated into labels.

Text scores (previous-token, positional, sink, locality) come from the analysed text's
shared pass and from an optional corpus; probe scores (induction, duplicate-token)
from the cached probe pass. Each is a mean over samples (texts or probe sequences);
a head's confidence is the share of samples in which its label's score clears the
threshold, so a head that behaves one way on every text is confident and one that
switches between texts is not. The sink label goes only to heads with nothing else
above the threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from lmlens import LoadedModel, ModelInfo, Need
from lmlens.forward import run_forward
from lmlens_attention.scores import PROBE_SCORES, TEXT_SCORES, text_head_scores
from lmlens_attention.threading_policy import on_one_thread

# Rows of HeadPatternsResult.scores. Locality is an axis (1 local, 0 global), not a label.
CATEGORIES = ("previous_token", "induction", "duplicate_token", "positional", "sink", "locality")
LABELS = CATEGORIES[:-1]
UNCLASSIFIED = "mixed"
CORPUS_BATCH = 8  # texts per corpus pass: bounds the [batch, head, pos, pos] map of one layer


def text_reducer(info: ModelInfo, window: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return on_one_thread(partial(text_head_scores, causal=info.causal, window=window))


def text_needs(info: ModelInfo, window: int, prefix: str) -> list[Need]:
    reducer = text_reducer(info, window)
    return [
        Need(f"blocks.{i}.attn.pattern", reducer, name=f"{prefix}.{i}") for i in range(info.n_layers)
    ]


def stack_layers(values: Sequence[torch.Tensor]) -> np.ndarray:
    """layer-list of [batch, score, head] -> [batch, score, layer, head]."""
    return torch.stack(list(values), dim=2).float().numpy(force=True)


def _padded_text_scores(
    pattern: torch.Tensor, lengths: list[int], causal: bool, window: int
) -> torch.Tensor:
    """[batch, head, pos, pos] of right-padded texts -> [batch, len(TEXT_SCORES), head]."""
    rows = [
        text_head_scores(pattern[b : b + 1, :, :n, :n], causal=causal, window=window)
        for b, n in enumerate(lengths)
    ]
    return torch.cat(rows)


def corpus_text_scores(
    loaded: LoadedModel, texts: Sequence[str], window: int, max_tokens: int
) -> np.ndarray:
    """[n_texts, len(TEXT_SCORES), layer, head], in passes of ``CORPUS_BATCH`` padded texts."""
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for first in range(0, len(texts), CORPUS_BATCH):
        encoded = [
            tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens]
            for t in texts[first : first + CORPUS_BATCH]
        ]
        lengths = [len(ids) for ids in encoded]
        width = max(lengths)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # [batch, pos]
        mask = torch.zeros(len(encoded), width, dtype=torch.long)  # [batch, pos]
        for b, ids in enumerate(encoded):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            mask[b, : len(ids)] = 1
        reducer = on_one_thread(
            partial(_padded_text_scores, lengths=lengths, causal=loaded.info.causal, window=window)
        )
        needs = [
            Need(f"blocks.{i}.attn.pattern", reducer, name=f"attention.corpus.{i}")
            for i in range(loaded.info.n_layers)
        ]
        got = run_forward(loaded, needs, input_ids=input_ids, attention_mask=mask)
        out.append(stack_layers([got[f"attention.corpus.{i}"] for i in range(loaded.info.n_layers)]))
    return np.concatenate(out)


@dataclass(frozen=True)
class Classification:
    scores: np.ndarray  # [category, layer, head], in [0, 1]
    spread: np.ndarray  # [category, layer, head]: standard deviation over samples
    labels: list[list[str]]  # [layer][head]
    confidence: np.ndarray  # [layer, head], in [0, 1]


def classify(text_samples: np.ndarray, probe_samples: np.ndarray, threshold: float) -> Classification:
    """text_samples [n_texts, len(TEXT_SCORES), layer, head], probe_samples
    [n_probes, len(PROBE_SCORES), layer, head] -> scores, labels and confidences."""
    per_category = {name: text_samples[:, i] for i, name in enumerate(TEXT_SCORES)}
    per_category |= {name: probe_samples[:, i] for i, name in enumerate(PROBE_SCORES)}
    samples = [per_category[c] for c in CATEGORIES]  # each [n_samples, layer, head]
    scores = np.clip(np.stack([s.mean(0) for s in samples]), 0.0, 1.0).astype(np.float32)
    spread = np.stack([s.std(0) for s in samples]).astype(np.float32)
    # share of samples in which each category clears the threshold: [label, layer, head]
    agreement = np.stack([(per_category[c] >= threshold).mean(0) for c in LABELS])
    # Attention parked on the first token is what a head does when its pattern finds
    # nothing to act on (an induction head on a text without repeats), so a sink
    # label goes only to heads with no other category above the threshold.
    labelled = scores[: len(LABELS)]  # [label, layer, head]
    functional = labelled.copy()
    functional[LABELS.index("sink")] = -1.0
    best = np.where(functional.max(0) >= threshold, functional.argmax(0), labelled.argmax(0))  # [layer, head]
    strong = labelled.max(0) >= threshold
    n_layers, n_heads = best.shape
    labels = [
        [LABELS[best[i, h]] if strong[i, h] else UNCLASSIFIED for h in range(n_heads)]
        for i in range(n_layers)
    ]
    confidence = np.where(
        strong,
        np.take_along_axis(agreement, best[None], 0)[0],
        1.0 - agreement.max(0),
    ).astype(np.float32)
    return Classification(scores=scores, spread=spread, labels=labels, confidence=confidence)
