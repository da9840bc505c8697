"""What a patching run measures: one number per batch row, from the last position's logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlens import InvalidParamsError, LoadedModel, ModelInfo
from lmlens_patching.errors import NoLanguageModelHeadError


def require_lm_head(info: ModelInfo, method: str) -> None:
    if not (info.causal and info.has_lm_head):
        raise NoLanguageModelHeadError(
            f"{method} scores the next token, and this {info.family} model has no language-model head "
            "(an encoder); use a causal model such as smollm2-135m or tiny-gpt2",
            field="model",
        )


def encode(loaded: LoadedModel, text: str) -> torch.Tensor:
    """[1, pos] token ids, tokenized as the analyzer tokenizes the analysed text (special tokens added)."""
    ids: torch.Tensor = loaded.tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
    return ids


def token_strings(loaded: LoadedModel, ids: Sequence[int]) -> list[str]:
    return [loaded.tokenizer.decode([i]) for i in ids]


def single_token(loaded: LoadedModel, text: str, field: str) -> int:
    """The id of ``text`` if it is exactly one token (no special tokens added); refuse otherwise."""
    ids = list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) != 1:
        pieces = token_strings(loaded, ids)
        raise InvalidParamsError(
            f"{field.rsplit('.', 1)[-1]} must be exactly one token for {loaded.name}; {text!r} is "
            f"{len(ids)} tokens {pieces!r} (mind the leading space: ' Paris' and 'Paris' differ)",
            field=field,
        )
    return int(ids[0])


def last_logits(logits: torch.Tensor) -> torch.Tensor:
    """[batch, pos, vocab] -> [batch, vocab] float64: the next-token logits after the last position."""
    return logits[:, -1].double()


@dataclass(frozen=True)
class Target:
    """``logit_diff``: logit(correct) - logit(wrong); ``logprob``: log p(correct), both at the last position."""

    kind: str
    correct: int
    wrong: int | None = None

    def __call__(self, last: torch.Tensor) -> torch.Tensor:
        """[batch, vocab] -> [batch] float64."""
        last = last.double()
        if self.kind == "logit_diff":
            assert self.wrong is not None
            return last[:, self.correct] - last[:, self.wrong]
        return last[:, self.correct] - torch.logsumexp(last, dim=-1)

    def from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch, pos, vocab] -> [batch]: a reducer on the ``logits`` point keeps only this."""
        return self(last_logits(logits))
