"""What an attribution explains: f(token embeddings) -> one number per batch row.

Every method here differentiates or perturbs the input embeddings, so an
``Objective`` takes embeddings ``[batch, pos, d_model]`` of the text and returns the
target ``[batch]``. The shared pass runs under inference mode, so embeddings are
computed afresh from ``trace.input_ids``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lmlens import InvalidParamsError, LoadedModel, Need, Trace
from lmlens.errors import TextTooLongError
from lmlens.forward import run_forward
from lmlens.special import special_positions as kernel_special_positions
from lmlens_importance.errors import NonFiniteAttributionError
from lmlens_importance.params import FIELD, ImportanceParams

LM_TARGETS = ("next_token", "continuation", "loss")


def embed_ids(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """[batch, pos] token ids -> [batch, pos, d_model] input embeddings, no graph."""
    module = loaded.modules.resolve("embed").module
    with torch.inference_mode(False), torch.no_grad():
        embeds: torch.Tensor = module(ids.to(loaded.device))
        return embeds.detach().clone()


def tokenize_plain(loaded: LoadedModel, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])


def special_positions(loaded: LoadedModel, trace: Trace) -> torch.Tensor:
    """[pos] bool: special tokens ([CLS], <bos>) that attributions hold fixed."""
    return torch.tensor(kernel_special_positions(loaded.tokenizer, trace.tokens), dtype=torch.bool)


def check_finite(values: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteAttributionError(
            f"{what} contains NaN or infinity; the attribution would be meaningless "
            "(try another baseline, rule or spacing, or float32 instead of float16)",
            field=FIELD,
        )


@dataclass
class Objective:
    """The target as a function of the text's input embeddings."""

    loaded: LoadedModel
    kind: str
    description: str
    embeds: torch.Tensor  # [1, pos, d_model] the text's embeddings (what is attributed)
    score: Callable[[torch.Tensor], torch.Tensor]  # final hidden [batch, pos_all, d_model] -> [batch]
    suffix: torch.Tensor | None = None  # [1, extra, d_model] held fixed after the text
    token_ids: list[int] = field(default_factory=list)
    token_text: str = ""
    lm_positions: int = 0  # positions that go through the LM head (memory estimate)
    f_input: float | None = None  # f(embeds) when building the target already computed it

    def __call__(self, embeds: torch.Tensor, *, grad: bool) -> torch.Tensor:
        """[batch, pos, d_model] -> [batch]. ``grad`` keeps the graph for a backward pass."""
        if self.suffix is not None:
            embeds = torch.cat([embeds, self.suffix.expand(embeds.shape[0], -1, -1)], dim=1)
        hidden = run_forward(self.loaded, [Need("final")], inputs_embeds=embeds, grad=grad)["final"]
        if grad:
            return self.score(hidden)
        with torch.inference_mode():
            return self.score(hidden)

    def values(self, embeds: torch.Tensor, batch_size: int) -> torch.Tensor:
        """f for many rows, batched, without gradients: [rows, pos, d_model] -> [rows] float64."""
        out = []
        for start in range(0, embeds.shape[0], batch_size):
            chunk = self(embeds[start : start + batch_size], grad=False)  # [chunk]
            check_finite(chunk, "the target")
            out.append(chunk.double().cpu())
        return torch.cat(out)


def _lm_head(loaded: LoadedModel) -> nn.Module:
    assert loaded.arch.lm_head is not None
    return loaded.model.get_submodule(loaded.arch.lm_head)


def _logprobs(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """[batch, n, d_model] -> [batch, n, vocab] log-probabilities in at least float32.

    ``hidden`` is usually a slice of positions; made contiguous (a small copy), the head is
    one GEMM. A strided 3-D input goes through a batched matmul that reads the whole
    [vocab, d_model] weight once per row: 8x slower for 33 rows of SmolLM2 (issue 13)."""
    logits = head(hidden.contiguous())
    return torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)


def _check_fits(loaded: LoadedModel, n_tokens: int, name: str, what: str) -> None:
    """A typed 413 before the extra passes, not an index error from inside the model."""
    limit = loaded.info.max_positions
    if limit and n_tokens > limit:
        raise TextTooLongError(
            f"{what} come to {n_tokens} tokens; {loaded.name} takes at most {limit}", field=f"{FIELD}.{name}"
        )


def resolve_kind(loaded: LoadedModel, params: ImportanceParams) -> str:
    kind = params.target
    if kind == "auto":
        kind = "next_token" if loaded.info.has_lm_head else "similarity"
    if kind in LM_TARGETS and not loaded.info.has_lm_head:
        raise InvalidParamsError(
            f"target {kind!r} needs a language-model head, and {loaded.name} has none; "
            'for an encoder use target "similarity" with other_text',
            field=f"{FIELD}.target",
        )
    if kind == "similarity" and not params.other_text:
        raise InvalidParamsError(
            "the similarity target compares the text with other_text; give params.importance.other_text",
            field=f"{FIELD}.other_text",
        )
    if kind == "continuation" and not params.continuation:
        raise InvalidParamsError('target "continuation" needs a non-empty continuation', field=f"{FIELD}.continuation")
    return kind


def build_objective(trace: Trace, params: ImportanceParams) -> Objective:
    loaded = trace.model
    kind = resolve_kind(loaded, params)
    ids = trace.input_ids.to(loaded.device)  # [1, pos]
    embeds = embed_ids(loaded, ids)  # [1, pos, d_model]
    n = ids.shape[1]
    if kind == "next_token":
        head = _lm_head(loaded)
        f_input: float | None = None
        if params.target_token is not None:
            wanted = tokenize_plain(loaded, params.target_token)
            if len(wanted) != 1:
                raise InvalidParamsError(
                    f"target_token {params.target_token!r} is {len(wanted)} tokens; give one token, "
                    'or use target "continuation"',
                    field=f"{FIELD}.target_token",
                )
            token = wanted[0]
        else:
            hidden = run_forward(loaded, [Need("final")], inputs_embeds=embeds)["final"]
            with torch.inference_mode():
                logp = _logprobs(head, hidden[:, -1:])[0, 0]  # [vocab]
                token = int(logp.argmax())
                f_input = float(logp[token])  # the target at the text: no second pass for it

        def next_token(hidden: torch.Tensor) -> torch.Tensor:
            return _logprobs(head, hidden[:, -1:])[:, 0, token]  # [batch]

        piece = loaded.tokenizer.decode([token])
        return Objective(
            loaded,
            kind,
            f"log p({piece!r} | text)",
            embeds,
            next_token,
            token_ids=[token],
            token_text=piece,
            lm_positions=1,
            f_input=f_input,
        )
    if kind == "continuation":
        head = _lm_head(loaded)
        assert params.continuation
        cont = tokenize_plain(loaded, params.continuation)
        if not cont:
            raise InvalidParamsError("the continuation has no tokens", field=f"{FIELD}.continuation")
        _check_fits(loaded, n + len(cont), "continuation", "the text and the continuation")
        cont_ids = torch.tensor(cont, device=loaded.device)  # [extra]
        suffix = embed_ids(loaded, cont_ids[None])  # [1, extra, d_model]

        def continuation(hidden: torch.Tensor) -> torch.Tensor:
            logp = _logprobs(head, hidden[:, n - 1 : n - 1 + len(cont)])  # [batch, extra, vocab]
            index = cont_ids.expand(hidden.shape[0], -1)[..., None]
            return logp.gather(-1, index)[..., 0].sum(-1)  # [batch]

        return Objective(
            loaded,
            kind,
            f"log p({params.continuation!r} | text), summed over {len(cont)} tokens",
            embeds,
            continuation,
            suffix=suffix,
            token_ids=cont,
            token_text=params.continuation,
            lm_positions=len(cont),
        )
    if kind == "loss":
        if n < 2:
            raise InvalidParamsError("the loss target needs a text of at least two tokens", field="text")
        head = _lm_head(loaded)

        def loss(hidden: torch.Tensor) -> torch.Tensor:
            logp = _logprobs(head, hidden[:, :-1])  # [batch, pos-1, vocab]
            index = ids[:, 1:].expand(hidden.shape[0], -1)[..., None]
            return -logp.gather(-1, index)[..., 0].mean(-1)  # [batch]

        return Objective(loaded, kind, "mean next-token loss (nats) over the text", embeds, loss, lm_positions=n - 1)
    assert params.other_text
    other = loaded.tokenizer(params.other_text, return_tensors="pt")["input_ids"].to(loaded.device)
    _check_fits(loaded, int(other.shape[1]), "other_text", "other_text")
    other_hidden = run_forward(loaded, [Need("final")], input_ids=other)["final"]
    with torch.inference_mode(False):
        reference = other_hidden.mean(1).clone()  # [1, d_model] mean-pooled

    def similarity(hidden: torch.Tensor) -> torch.Tensor:
        pooled = hidden.mean(1)  # [batch, d_model]
        return torch.cosine_similarity(pooled, reference.to(pooled.dtype), dim=-1)  # [batch]

    return Objective(
        loaded,
        kind,
        f"cosine similarity of mean-pooled embeddings with {params.other_text!r}",
        embeds,
        similarity,
        token_text=params.other_text,
    )
