"""Padded batches: several prepared requests in one shared forward pass.

Texts of similar length are grouped (``plan_batches``), right-padded into one
``[batch, pos]`` tensor with an attention mask (``pad``), and run through
``run_forward`` once. Every method then sees only its own text: each need is
wrapped so that its reducer (or the kept tensor) gets the text's row with the padding
stripped (``row_slice``), in the point's documented shape with a batch of 1, exactly
what an unbatched pass would hand it.

Why the stripped row equals the unpadded pass (to float32 tolerance; the batched
matrix products may round differently):

- right padding keeps every real token at positions ``0..n-1``, so the default
  position ids (and rotary angles) of the real tokens do not change;
- in a causal model a real query never attends to a later key, and padding is only
  ever later; the attention mask also removes the padded keys, which matters for
  encoders (BERT attends both ways); masked keys get exactly zero weight after the
  softmax, so a pattern's real ``[q, k]`` block is the unpadded pattern;
- the padded positions hold any valid token id (the tokenizer's pad token, else its
  end-of-text token, else 0; SmolLM2 and GPT-2 have no pad token): no real position
  reads them.

A method takes part only when it says so (``Method.batchable``); a request with a
method that does not runs alone, through the ordinary path. Methods that run extra
passes of their own (ablations, gradients) still run them per text, in ``run``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from lmlens.capture import Need
from lmlens.forward import run_forward
from lmlens.request import SEP, Progress, Request, method_results, run_request

if TYPE_CHECKING:
    from lmlens.artifacts import Artifact
    from lmlens.cache import Cache
    from lmlens.models import LoadedModel
    from lmlens.wire import AnalysisResult

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_TOKENS = 2048  # padded tokens (rows x longest) in one batched pass


def batchable(request: Request) -> bool:
    """Every method of the request accepts its needs from a padded batch."""
    return request.input_ids is not None and all(m.batchable for m in request.methods)


def plan_batches(
    lengths: Sequence[int], batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS
) -> list[list[int]]:
    """Indices grouped by length: sorted, then cut into batches of at most ``batch_size``
    rows and ``max_tokens`` padded tokens (a text longer than that runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # ascending: the newest is the longest
        if current and (len(current) >= batch_size or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def pad_token_id(loaded: LoadedModel) -> int:
    """The id written into padded positions; no real position ever reads it."""
    tokenizer = loaded.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1, n_i]`` token ids -> right-padded ``[batch, longest]`` ids and attention mask."""
    longest = max(int(r.shape[1]) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=rows[0].dtype)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        n = int(row.shape[1])
        ids[i, :n] = row[0]
        mask[i, :n] = 1
    return ids, mask


def row_slice(point: str, tensor: torch.Tensor, row: int, n: int) -> torch.Tensor:
    """One row of a batched activation, padding stripped, batch dimension of 1 kept.

    Patterns are ``[batch, head, q, k]``: both position axes are cut; every other point
    has positions on axis 1 (``[batch, pos, ...]``).
    """
    if point.endswith(".attn.pattern"):
        return tensor[row : row + 1, :, :n, :n]
    return tensor[row : row + 1, :n]


def _row_need(need: Need, key: str, row: int, n: int) -> Need:
    reducer = need.reducer

    def take(tensor: torch.Tensor) -> Any:
        # contiguous, as an unbatched pass hands it: kept tensors do not pin the whole batch,
        # and reducers (top-k among equal zeros) see the same memory layout
        part = row_slice(need.point, tensor, row, n).contiguous()
        return part if reducer is None else reducer(part)

    # no ``into`` hint: a map computed in place for one text cannot hold a batch's rows
    return Need(need.point, take, name=key, keeps=need.keeps)


def _row_key(row: int, key: str) -> str:
    return f"{row}{SEP}{key}"


def run_padded(
    requests: Sequence[Request],
    *,
    cache: Cache | None,
    resolve_artifact: Callable[[str, str], Artifact] | None,
    on_forward: Callable[[float, int], None] | None = None,
) -> list[AnalysisResult]:
    """One padded pass for ``requests`` (same model, every method batchable), then each
    method's ``run`` per text on its own row. ``on_forward(seconds, padded_length)``."""
    assert requests and all(batchable(r) for r in requests)
    loaded = requests[0].loaded
    assert all(r.loaded is loaded for r in requests), "one padded pass runs one model"
    rows = [r.input_ids for r in requests]
    ids, mask = pad([r for r in rows if r is not None], pad_token_id(loaded))
    needs: list[Need] = []
    for row, request in enumerate(requests):
        n = len(request.tokens or [])
        needs.extend(_row_need(need, _row_key(row, need.key), row, n) for need in request.shared_needs())
    started = time.perf_counter()
    activations = run_forward(loaded, needs, input_ids=ids, attention_mask=mask) if needs else {}
    elapsed = time.perf_counter() - started
    if needs and on_forward is not None:
        on_forward(elapsed, int(ids.shape[1]))
    results = []
    for row, request in enumerate(requests):
        prefix = _row_key(row, "")
        own = {k[len(prefix) :]: v for k, v in activations.items() if k.startswith(prefix)}
        timings = {"forward": elapsed * 1000 / len(requests), "forward_batch": elapsed * 1000}
        results.append(
            method_results(request, own, timings, cache=cache, resolve_artifact=resolve_artifact, progress=None)
        )
    return results


def run_many(
    requests: Sequence[Request],
    *,
    cache: Cache | None,
    resolve_artifact: Callable[[str, str], Artifact] | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    on_forward: Callable[[float, int, int], None] | None = None,
    on_result: Callable[[int, AnalysisResult], None] | None = None,
    progress: Progress | None = None,
) -> list[AnalysisResult]:
    """Every request's result, in order: batchable ones in padded batches grouped by
    length, the others one by one. ``on_result(index, result)`` as each one is ready;
    ``on_forward(seconds, rows, padded_length)`` after each pass."""
    results: list[AnalysisResult | None] = [None] * len(requests)

    def done(index: int, result: AnalysisResult) -> None:
        results[index] = result
        if on_result is not None:
            on_result(index, result)

    together: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    for index, request in enumerate(requests):
        if batch_size > 1 and batchable(request):
            together.setdefault((id(request.loaded), tuple(request.method_names)), []).append(index)
            continue
        single = None
        if on_forward is not None:
            n = len(request.tokens or [])
            single = lambda seconds, n=n: on_forward(seconds, 1, n)  # noqa: E731
        done(index, run_request(request, cache=cache, resolve_artifact=resolve_artifact,
                                progress=progress, on_forward=single))
    for indices in together.values():
        lengths = [len(requests[i].tokens or []) for i in indices]
        for batch in plan_batches(lengths, batch_size, max_tokens):
            chosen = [indices[b] for b in batch]
            measured = None
            if on_forward is not None:
                rows = len(chosen)
                measured = lambda seconds, length, rows=rows: on_forward(seconds, rows, length)  # noqa: E731
            found = run_padded([requests[i] for i in chosen], cache=cache, resolve_artifact=resolve_artifact,
                               on_forward=measured)
            for index, result in zip(chosen, found, strict=True):
                done(index, result)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_TOKENS",
    "batchable",
    "pad",
    "pad_token_id",
    "plan_batches",
    "row_slice",
    "run_many",
    "run_padded",
]
