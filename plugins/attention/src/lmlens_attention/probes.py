"""Probe inputs for induction and duplicate-token heads, the batched probe pass, and its cache.

The probe (Olsson et al. 2022): ``prefix + r + r``, where ``r`` is a run of distinct
random tokens from the model's own vocabulary. In the second copy an induction head
attends to the token after the query token's first occurrence, a duplicate-token head
to the first occurrence itself. The answer depends on the model, not on the analysed
text, so it is computed once per model (name, revision, dtype) and probe settings.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial

import msgspec
import numpy as np
import torch

from lmlens import LoadedModel, Need
from lmlens.cache import Cache
from lmlens.forward import run_forward
from lmlens.special import special_tokens
from lmlens_attention.scores import probe_head_scores
from lmlens_attention.threading_policy import on_one_thread

PROBE_VERSION = "1"  # bump when the probe inputs or scores change meaning


@dataclass(frozen=True)
class ProbeInputs:
    input_ids: torch.Tensor  # [batch, prefix + 2 * half (+ suffix)]
    half: int  # length of the repeated run r
    start: int  # position of r's first token


def token_pool(loaded: LoadedModel) -> torch.Tensor:
    """[n_ids]: ordinary vocabulary ids (no special or padding tokens)."""
    size = min(loaded.info.vocab_size, len(loaded.tokenizer))
    special = set(loaded.tokenizer.all_special_ids)
    return torch.tensor([i for i in range(size) if i not in special])


def repeated_tokens(loaded: LoadedModel, half: int, batch: int, seed: int) -> ProbeInputs:
    """``batch`` probe sequences, each with its own run of ``half`` distinct random tokens."""
    pool = token_pool(loaded)
    if len(pool) < half:
        raise ValueError(f"the vocabulary has {len(pool)} ordinary tokens; a probe needs {half}")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    start = 0
    for _ in range(batch):
        run = pool[torch.randperm(len(pool), generator=generator)[:half]].tolist()
        row, start = _with_special_tokens(loaded, run + run)
        rows.append(row)
    return ProbeInputs(input_ids=torch.tensor(rows), half=half, start=start)


def _with_special_tokens(loaded: LoadedModel, ids: list[int]) -> tuple[list[int], int]:
    """The tokenizer's own framing, and a leading BOS for causal models whose tokenizer
    adds none: a sink head needs a first token that carries no content."""
    prefix, suffix = special_tokens(loaded.tokenizer)
    bos = getattr(loaded.tokenizer, "bos_token_id", None)
    if loaded.info.causal and not prefix and bos is not None:
        prefix = [bos]
    return [*prefix, *ids, *suffix], len(prefix)


def probe_pass(loaded: LoadedModel, probe: ProbeInputs) -> np.ndarray:
    """[batch, len(PROBE_SCORES), layer, head]: one batched forward pass; each layer's
    ``[batch, head, q, k]`` map is reduced to scores inside its hook and then dropped."""
    reducer = on_one_thread(partial(probe_head_scores, half=probe.half, start=probe.start))
    needs = [
        Need(f"blocks.{i}.attn.pattern", reducer, name=f"attention.probe.{i}")
        for i in range(loaded.info.n_layers)
    ]
    got = run_forward(loaded, needs, input_ids=probe.input_ids)
    per_layer = [got[f"attention.probe.{i}"] for i in range(loaded.info.n_layers)]  # [batch, 2, head]
    return torch.stack(per_layer, dim=2).float().numpy(force=True)


class _Stored(msgspec.Struct, array_like=True):
    shape: list[int]
    data: bytes


class ProbeCache:
    """Probe scores per model and probe settings.

    In-process always; with ``use_shared(cache)`` (any ``lmlens.cache.Cache``, such as
    the Redis adapter's) the scores are also stored there, so every process of a
    service computes them once.
    """

    def __init__(self) -> None:
        self._local: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._shared: Cache | None = None
        self.computed = 0  # probe passes run by this process, for tests and benchmarks

    def use_shared(self, cache: Cache | None) -> None:
        self._shared = cache

    def clear(self) -> None:
        with self._lock:
            self._local.clear()

    @staticmethod
    def key(loaded: LoadedModel, half: int, batch: int, seed: int) -> str:
        return (
            f"lmlens:attention-probe:{PROBE_VERSION}:{loaded.name}:{loaded.revision}:"
            f"{loaded.info.dtype}:{half}:{batch}:{seed}"
        )

    def scores(self, loaded: LoadedModel, half: int, batch: int, seed: int) -> tuple[np.ndarray, bool]:
        """(scores [batch, 2, layer, head], whether they came from a cache)."""
        key = self.key(loaded, half, batch, seed)
        with self._lock:
            if key in self._local:
                return self._local[key], True
        found = self._shared.get(key) if self._shared is not None else None
        if found is not None:
            stored = msgspec.msgpack.decode(found, type=_Stored)
            value = np.frombuffer(stored.data, dtype=np.float32).reshape(stored.shape)
            cached = True
        else:
            value = probe_pass(loaded, repeated_tokens(loaded, half, batch, seed))
            self.computed += 1
            cached = False
            if self._shared is not None:
                blob = _Stored(shape=list(value.shape), data=value.astype(np.float32).tobytes())
                self._shared.set(key, msgspec.msgpack.encode(blob))
        with self._lock:
            self._local[key] = value
        return value, cached


PROBE_CACHE = ProbeCache()
