"""Activations from text: windows of tokens, one stopped-early pass each, a shuffled buffer.

Texts are tokenized once (ids are small); activations are produced lazily, a few windows
at a time, through the kernel's ``run_forward`` with a single ``Need`` at the hook point,
so the pass stops at that block. Excluded positions: padding, special tokens (BOS/EOS/...)
and the first position of every window: a model without a BOS (SmolLM2) uses its first
token as the attention sink, with a norm that would dominate the loss.

``ShuffledBuffer`` holds at most ``budget_bytes`` of activations: it fills, shuffles,
serves half, refills that half from the stream, and so on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmlens.architectures import point_names
from lmlens.capture import Need
from lmlens.models import LoadedModel
from lmlens_sae.errors import CorpusTooSmallError, UnknownHookPointError

try:  # kernel v2 exports run_forward at the top level
    from lmlens import run_forward
except ImportError:  # pragma: no cover - kernel v1
    from lmlens.forward import run_forward

VECTOR_POINTS = ("embed", "resid_pre", "attn.heads", "attn.out", "mlp.out", "resid_post", "final")
_SAELENS = re.compile(r"^blocks\.(\d+)\.(?:hook_(resid_pre|resid_post|attn_out|mlp_out)|attn\.hook_(z))$")


def valid_points(loaded: LoadedModel) -> list[str]:
    """Hook points with one vector per token (what an SAE reads); ``attn.heads`` is read with its
    heads concatenated ([pos, head * d_head])."""
    return [p for p in point_names(loaded.info.n_layers)
            if p in ("embed", "final") or p.split(".", 2)[-1] in VECTOR_POINTS]


def resolve_point(loaded: LoadedModel, point: str | None, layer: int | None = None) -> str:
    """A canonical point from a name, a SAELens hook name, or the seed's ``layer`` (-1 = last)."""
    n = loaded.info.n_layers
    if point is None:
        layer = n // 2 if layer is None else layer
        if not -n <= layer < n:
            raise UnknownHookPointError(f"layer {layer} does not exist: {loaded.name} has layers 0..{n - 1}",
                                        field="layer")
        return f"blocks.{layer % n}.resid_post"
    match = _SAELENS.match(point)
    if match:
        name = match.group(2) or "z"
        kind = {"attn_out": "attn.out", "mlp_out": "mlp.out", "z": "attn.heads"}.get(name, name)
        point = f"blocks.{match.group(1)}.{kind}"
    valid = valid_points(loaded)
    if point not in valid:
        raise UnknownHookPointError(
            f"{loaded.name} has no hook point {point!r} an SAE can read; it has: {', '.join(valid)}",
            field="point",
        )
    return point


def flat(acts: torch.Tensor) -> torch.Tensor:
    """[batch, pos, head, d_head] -> [batch, pos, head * d_head]; other points pass through."""
    return acts.flatten(2) if acts.dim() == 4 else acts


def point_width(loaded: LoadedModel, point: str) -> int:
    """The vector width an SAE at ``point`` reads."""
    if point.endswith(".attn.heads"):
        return loaded.info.n_heads * loaded.info.d_head
    return loaded.info.d_model


def saelens_hook_name(point: str) -> str:
    """``blocks.15.resid_post`` -> ``blocks.15.hook_resid_post`` (SAELens / TransformerLens)."""
    parts = point.split(".")
    if point.endswith(".attn.heads"):  # TransformerLens's z, heads concatenated
        return f"blocks.{parts[1]}.attn.hook_z"
    if len(parts) >= 3 and parts[0] == "blocks":
        return f"blocks.{parts[1]}.hook_{'_'.join(parts[2:])}"  # attn.out -> hook_attn_out
    return {"embed": "hook_embed", "final": "ln_final.hook_normalized"}.get(point, point)


@dataclass
class TokenWindows:
    """The corpus as windows of token ids, and how many trainable tokens they hold."""

    windows: list[list[int]]
    usable: int  # tokens kept after exclusions

    def __len__(self) -> int:
        return len(self.windows)


def make_windows(loaded: LoadedModel, texts: Sequence[str], context: int = 128) -> TokenWindows:
    tokenizer = loaded.tokenizer
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    windows: list[list[int]] = []
    usable = 0
    limit = min(context, loaded.info.max_positions or context)
    for text in texts:
        if not text or not text.strip():
            continue
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        for start in range(0, len(ids), limit):
            window = list(ids[start:start + limit])
            if len(window) < 2:
                continue
            windows.append(window)
            usable += sum(1 for t in window[1:] if t not in special)
    return TokenWindows(windows, usable)


def check_corpus(windows: TokenWindows, tokens: int) -> None:
    if windows.usable < tokens:
        raise CorpusTooSmallError(
            f"the corpus has {windows.usable} usable tokens (after excluding special tokens and each "
            f"window's first position); {tokens} were asked for",
            field="tokens",
        )


def stream_activations(
    loaded: LoadedModel,
    windows: TokenWindows,
    point: str,
    *,
    batch_windows: int = 16,
    order: Sequence[int] | None = None,
    start: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(windows consumed so far, activations [n_kept, d])`` batch by batch."""
    tokenizer = loaded.tokenizer
    special = torch.tensor(sorted(set(getattr(tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sequence = list(order) if order is not None else list(range(len(windows.windows)))
    for begin in range(start, len(sequence), batch_windows):
        chosen = [windows.windows[i] for i in sequence[begin:begin + batch_windows]]
        length = max(len(w) for w in chosen)
        ids = torch.full((len(chosen), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chosen), length), dtype=torch.long)
        for row, window in enumerate(chosen):
            ids[row, : len(window)] = torch.tensor(window)
            mask[row, : len(window)] = 1
        out = run_forward(loaded, [Need(point)], input_ids=ids, attention_mask=mask)
        acts = flat(out[point]).float()  # [batch, pos, d]
        keep = mask.bool().to(acts.device)
        keep[:, 0] = False
        if special.numel():
            keep &= ~torch.isin(ids, special).to(acts.device)
        yield begin + len(chosen), acts[keep].detach().cpu()


class ShuffledBuffer:
    """Mix activations from many windows before they reach the optimiser."""

    def __init__(self, d_in: int, *, budget_bytes: int, batch_size: int, seed: int = 0) -> None:
        # never above the budget (but room for two batches), never more than 64 batches
        self.capacity = max(batch_size * 2, min(budget_bytes // (4 * d_in), 64 * batch_size))
        self.data = torch.empty((self.capacity, d_in), dtype=torch.float32)
        self.size = 0
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.position = 0  # windows consumed from the stream when the last batch was served

    @property
    def nbytes(self) -> int:
        return self.data.numel() * 4

    def batches(self, stream: Iterator[tuple[int, torch.Tensor]]) -> Iterator[torch.Tensor]:
        """Serve shuffled batches; ``position`` is the stream position all served tokens came from."""
        pending: torch.Tensor | None = None
        exhausted = False
        while True:
            while self.size < self.capacity and not exhausted:
                if pending is None:
                    try:
                        self.position, pending = next(stream)
                    except StopIteration:
                        exhausted = True
                        break
                take = min(self.capacity - self.size, pending.shape[0])
                self.data[self.size:self.size + take] = pending[:take]
                self.size += take
                pending = pending[take:] if take < pending.shape[0] else None
            if self.size == 0:
                return
            perm = torch.randperm(self.size, generator=self.generator)
            self.data[: self.size] = self.data[perm]
            # serve half the buffer (all of it once the stream has run dry), keep the rest to mix
            serve = self.size if exhausted else max(self.batch_size, self.size // 2)
            served = 0
            while served + self.batch_size <= serve or (exhausted and served < serve):
                end = min(served + self.batch_size, serve)
                yield self.data[served:end].clone()
                served = end
            keep = self.data[served:self.size].clone()
            self.data[: keep.shape[0]] = keep
            self.size = keep.shape[0]
            if exhausted and self.size == 0:
                return


def epoch_order(n_windows: int, epoch: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed + 1000 * epoch)
    return [int(i) for i in rng.permutation(n_windows)]
