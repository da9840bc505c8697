"""Signals of one shared forward pass, read at the prompt's last token.

Every signal comes from ``Need``s with reducers, so a pass keeps only small arrays:

- logit confidence of the next token: max probability, entropy (nats), top-2 margin,
  top-5 mass;
- the residual stream after every block at the last token (the probe picks layers);
- per-head attention statistics of the last token's attention row: sink mass (share
  on token 0), entropy (nats), and the lookback ratio: the share of the row's
  non-sink attention that reaches back past the last ``RECENT`` tokens (the last
  token itself included in the recent ones);
- input length in tokens.

Reducers take the index of each row's last real token, so a right-padded batch
gives the same numbers as one unpadded text (a causal model never looks right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmlens import InvalidParamsError, ModelInfo, Need

LOGIT_FEATURES = ("max_prob", "entropy", "margin", "top5_mass")
ATTN_STATS = ("lookback_ratio", "attn_entropy", "sink_mass")
RECENT = 4
PREFIX = "failure"


def check_model(info: ModelInfo) -> None:
    if not info.causal or not info.has_lm_head:
        raise InvalidParamsError("failure prediction needs a causal language model with an LM head", field="model")


def _rows(last: torch.Tensor | None, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(batch, device=device)
    if last is None:
        return rows, torch.full((batch,), -1, dtype=torch.long, device=device)
    return rows, last.to(device)


def logit_reducer(last: torch.Tensor | None):  # type: ignore[no-untyped-def]
    """[batch, pos, vocab] -> [batch, 5]: the four confidence features and the argmax id."""

    def reduce(logits: torch.Tensor) -> torch.Tensor:
        rows, idx = _rows(last, logits.shape[0], logits.device)
        z = logits[rows, idx].double()  # [batch, vocab]
        logp = torch.log_softmax(z, dim=-1)
        p = logp.exp()
        top = torch.topk(p, k=min(5, p.shape[-1]), dim=-1).values  # [batch, 5]
        entropy = -(p * logp).sum(-1)
        margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
        argmax = p.argmax(-1).double()
        return torch.stack([top[:, 0], entropy, margin, top.sum(-1), argmax], dim=-1).cpu()

    return reduce


def next_token_reducer(last: torch.Tensor | None):  # type: ignore[no-untyped-def]
    def reduce(logits: torch.Tensor) -> torch.Tensor:
        rows, idx = _rows(last, logits.shape[0], logits.device)
        return logits[rows, idx].argmax(-1).cpu()

    return reduce


def hidden_reducer(last: torch.Tensor | None):  # type: ignore[no-untyped-def]
    def reduce(hidden: torch.Tensor) -> torch.Tensor:
        rows, idx = _rows(last, hidden.shape[0], hidden.device)
        return hidden[rows, idx].float().cpu()  # [batch, d_model]

    return reduce


def attention_reducer(last: torch.Tensor | None):  # type: ignore[no-untyped-def]
    """[batch, head, q, k] -> [batch, 3, head]: lookback ratio, entropy, sink mass."""

    def reduce(pattern: torch.Tensor) -> torch.Tensor:
        b, _, q, k = pattern.shape
        rows, idx = _rows(last, b, pattern.device)
        idx = torch.where(idx < 0, idx + q, idx)
        a = pattern[rows, :, idx, :].double()  # [batch, head, k]
        pos = torch.arange(k, device=a.device)[None, :]  # [1, k]
        end = idx[:, None]  # [batch, 1]
        sink = a[..., 0]
        entropy = -torch.special.xlogy(a, a).sum(-1)
        nonsink = ((pos >= 1) & (pos <= end)).to(a.dtype)[:, None, :]
        old = ((pos >= 1) & (pos <= end - RECENT)).to(a.dtype)[:, None, :]
        denom = (a * nonsink).sum(-1)
        lookback = torch.where(denom > 0, (a * old).sum(-1) / denom.clamp_min(1e-12), torch.zeros_like(denom))
        return torch.stack([lookback, entropy, sink], dim=1).float().cpu()

    return reduce


def feature_needs(info: ModelInfo, last: torch.Tensor | None = None) -> list[Need]:
    """The needs of the failure signals; ``last`` = each row's last real position (None: -1)."""
    check_model(info)
    needs = [Need("logits", reducer=logit_reducer(last), name=f"{PREFIX}.logits")]
    for i in range(info.n_layers):
        needs.append(Need(f"blocks.{i}.resid_post", reducer=hidden_reducer(last), name=f"{PREFIX}.hidden.{i}"))
        needs.append(Need(f"blocks.{i}.attn.pattern", reducer=attention_reducer(last), name=f"{PREFIX}.attn.{i}"))
    return needs


@dataclass
class Signals:
    """Raw signals for a set of texts (row i = text i)."""

    logit: np.ndarray  # [n, 4] LOGIT_FEATURES
    n_tokens: np.ndarray  # [n]
    hidden: np.ndarray  # [n, layer, d_model]
    attn: np.ndarray  # [n, layer, 3, head] ATTN_STATS
    next_id: np.ndarray  # [n] greedy next token

    def __len__(self) -> int:
        return int(self.logit.shape[0])

    def take(self, index: Sequence[int] | np.ndarray) -> Signals:
        idx = np.asarray(index)
        return Signals(self.logit[idx], self.n_tokens[idx], self.hidden[idx], self.attn[idx], self.next_id[idx])

    @staticmethod
    def concat(parts: Sequence[Signals]) -> Signals:
        return Signals(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("logit", "n_tokens", "hidden", "attn", "next_id")
            )
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in ("logit", "n_tokens", "hidden", "attn", "next_id")}


def signals_from_activations(acts: dict[str, object], info: ModelInfo, n_tokens: Sequence[int]) -> Signals:
    logit = torch.as_tensor(acts[f"{PREFIX}.logits"]).numpy()
    hidden = np.stack([torch.as_tensor(acts[f"{PREFIX}.hidden.{i}"]).numpy() for i in range(info.n_layers)], axis=1)
    attn = np.stack([torch.as_tensor(acts[f"{PREFIX}.attn.{i}"]).numpy() for i in range(info.n_layers)], axis=1)
    return Signals(
        logit=logit[:, :4].astype(np.float64),
        n_tokens=np.asarray(n_tokens, dtype=np.float64),
        hidden=hidden.astype(np.float32),
        attn=attn.astype(np.float32),
        next_id=logit[:, 4].astype(np.int64),
    )
