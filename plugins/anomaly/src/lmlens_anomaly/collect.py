"""Run the normal texts through the model (one pass each) and collect features."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lmlens.forward import run_forward
from lmlens_anomaly.detector import MIN_TEXTS, TOKENS_PER_TEXT, FitData
from lmlens_anomaly.errors import EmptyNormalTextError, MixedModelsError, TooFewTextsError
from lmlens_anomaly.features import Features, Plan, extract

Progress = Callable[[float, str], None]
MAX_FIT_TOKENS = 512


def normal_texts(items: Sequence[Any], model_name: str) -> list[str]:
    """Validate the normal texts: strings (or ``{"text", "model"}`` records), none
    empty, all for one model, at least ``MIN_TEXTS``."""
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise TooFewTextsError(
            f"normal_texts must be a list of at least {MIN_TEXTS} texts", field="normal_texts"
        )
    texts: list[str] = []
    models: set[str] = set()
    for i, item in enumerate(items):
        if isinstance(item, dict):
            if item.get("model"):
                models.add(str(item["model"]))
            item = item.get("text")
        if not isinstance(item, str):
            raise EmptyNormalTextError(f"normal_texts[{i}] is not a string", field=f"normal_texts[{i}]")
        if not item.strip():
            raise EmptyNormalTextError(
                f"normal_texts[{i}] is empty or only whitespace", field=f"normal_texts[{i}]"
            )
        texts.append(item)
    if len(models) > 1 or (models and models != {model_name}):
        raise MixedModelsError(
            f"the normal texts name models {sorted(models)}; a detector is fitted to one model "
            f"(this analyzer's is {model_name!r})",
            field="normal_texts",
        )
    if len(texts) < MIN_TEXTS:
        raise TooFewTextsError(
            f"a detector needs at least {MIN_TEXTS} normal texts (got {len(texts)}): the covariance "
            "is estimated from 5 folds of the fitting split and the threshold on a held-out split",
            field="normal_texts",
        )
    return texts


def special_ids(loaded: Any) -> set[int]:
    return {int(i) for i in getattr(loaded.tokenizer, "all_special_ids", [])}


def encode(loaded: Any, text: str, max_tokens: int = MAX_FIT_TOKENS) -> torch.Tensor:
    ids = loaded.tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
    return ids[:, :max_tokens]


def features_of(loaded: Any, plan: Plan, input_ids: torch.Tensor, text: str) -> Features:
    activations = run_forward(loaded, plan.needs(), input_ids=input_ids)
    return extract(plan, activations, input_ids, text, special_ids(loaded))


def subsample_states(f: Features, rng: np.random.Generator, keep: int = TOKENS_PER_TEXT) -> Features:
    idx = np.flatnonzero(f.content)
    if idx.size > keep:
        idx = np.sort(rng.choice(idx, keep, replace=False))
    f.states = {layer: h[idx].astype(np.float32).astype(np.float64) for layer, h in f.states.items()}
    f.content = np.ones(idx.size, dtype=bool)
    return f


def corrupt(input_ids: torch.Tensor, specials: set[int], vocab: int, rng: np.random.Generator) -> torch.Tensor:
    """Replace a quarter of the content tokens with random vocabulary tokens."""
    ids = input_ids.clone()
    positions = [i for i, t in enumerate(ids[0].tolist()) if t not in specials]
    n = max(1, len(positions) // 4)
    for pos in rng.choice(positions, n, replace=False):
        token = int(rng.integers(vocab))
        while token in specials:
            token = int(rng.integers(vocab))
        ids[0, int(pos)] = token
    return ids


def candidate_layers(n_layers: int) -> list[int]:
    if n_layers <= 8:
        return list(range(n_layers))
    step = max(1, n_layers // 10)
    return sorted({*range(step - 1, n_layers, step), n_layers - 1})


def collect(
    loaded: Any,
    texts: Sequence[str],
    *,
    holdout: float = 0.25,
    seed: int = 0,
    progress: Progress | None = None,
) -> FitData:
    """Features of every text (one pass each) and of corrupted held-out copies."""
    notify = progress or (lambda fraction, message: None)
    info = loaded.info
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_held = max(10, round(holdout * len(texts)))
    held_idx = set(order[:n_held].tolist())
    candidates = candidate_layers(info.n_layers)
    plan = Plan(
        hidden_layers=tuple(candidates),
        attention_layers=tuple(range(info.n_layers)),
        surprisal=bool(info.causal and info.has_lm_head),
        causal=bool(info.causal),
    )
    corrupt_plan = Plan(hidden_layers=tuple(candidates), attention_layers=(), surprisal=False, causal=plan.causal)
    specials = special_ids(loaded)
    fit: list[Features] = []
    held: list[Features] = []
    corrupted: list[Features] = []
    total = len(texts) + n_held
    done = 0
    for i, text in enumerate(texts):
        ids = encode(loaded, text)
        f = subsample_states(features_of(loaded, plan, ids, text), rng)
        if i in held_idx:
            held.append(f)
            bad = corrupt(ids, specials, info.vocab_size, rng)
            corrupted.append(subsample_states(features_of(loaded, corrupt_plan, bad, text), rng))
            done += 1
        else:
            fit.append(f)
        done += 1
        if done % 10 == 0 or done == total:
            notify(done / total, f"{done}/{total} passes")
    return FitData(
        fit=fit,
        held=held,
        corrupted=corrupted,
        candidates=candidates,
        attention_layers=list(plan.attention_layers),
        causal=plan.causal,
        surprisal=plan.surprisal,
        n_layers=info.n_layers,
    )
