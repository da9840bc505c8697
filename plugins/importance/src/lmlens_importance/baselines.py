"""Reference inputs: where integrated gradients starts, and what replaces a removed token.

Special tokens ([CLS], [SEP], <bos>) keep their own embedding in every baseline, so
attributions and removals concern the text only.
"""

from __future__ import annotations

import torch

from lmlens import InvalidParamsError, LoadedModel
from lmlens_importance.params import FIELD
from lmlens_importance.targets import embed_ids, tokenize_plain


def _token_id(loaded: LoadedModel, kind: str, field: str) -> int:
    token_id = getattr(loaded.tokenizer, f"{kind}_token_id", None)
    if token_id is None:
        raise InvalidParamsError(
            f"{loaded.name} has no {kind} token; choose another {field.rsplit('.', 1)[-1]} (zero)",
            field=field,
        )
    return int(token_id)


def reference_embeds(
    loaded: LoadedModel,
    embeds: torch.Tensor,  # [1, pos, d_model] the text
    special: torch.Tensor,  # [pos] bool
    kind: str,
    *,
    text: str | None = None,
    field: str = f"{FIELD}.baseline",
) -> tuple[torch.Tensor, str]:
    """The reference ``[1, pos, d_model]`` of ``kind`` (zero, pad, mask, text) and a label."""
    n = embeds.shape[1]
    keep = special.to(embeds.device)[None, :, None]  # [1, pos, 1]
    if kind == "zero":
        ref = torch.zeros_like(embeds)
        label = "zero embedding"
    elif kind in ("pad", "mask"):
        token = _token_id(loaded, kind, field)
        ids = torch.full((1, n), token, dtype=torch.long)
        ref = embed_ids(loaded, ids).to(embeds.dtype)
        label = f"{kind} token {loaded.tokenizer.convert_ids_to_tokens(token)!r}"
    elif kind == "text":
        assert text is not None
        ids_list = tokenize_plain(loaded, text)
        slots = int((~special).sum())
        filler = getattr(loaded.tokenizer, "pad_token_id", None)
        # A baseline text rarely has the text's exact length: cut it, or fill with pad
        # (zero embedding when the model has no pad token).
        fill = 0 if filler is None else filler
        padded = (ids_list + [fill] * slots)[:slots]
        placed = torch.full((1, n), fill, dtype=torch.long)
        placed[0, ~special] = torch.tensor(padded, dtype=torch.long)
        ref = embed_ids(loaded, placed).to(embeds.dtype)
        if filler is None and len(ids_list) < slots:
            mask = torch.zeros(n, dtype=torch.bool)
            mask[torch.nonzero(~special)[len(ids_list) :, 0]] = True
            ref[:, mask] = 0
        label = f"text {text!r} ({len(ids_list)} tokens for {slots} slots)"
    else:  # pragma: no cover - msgspec validated the literal
        raise InvalidParamsError(f"unknown baseline {kind!r}", field=field)
    return torch.where(keep, embeds, ref), label
