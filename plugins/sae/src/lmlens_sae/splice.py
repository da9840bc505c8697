"""CE loss recovered and KL: splice the SAE's reconstruction into the model with a Patch.

Three passes per batch of windows, each through the kernel's ``run_forward``: clean,
with the activation at the hook point replaced by the SAE's reconstruction, and with it
zero-ablated. ``CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)``; ``KL`` is the
mean KL(clean || spliced) of the next-token distributions. Only the positions the SAE
was trained on are replaced (the first position of each window and special tokens stay
clean, both for the splice and for the zero ablation), and losses count every next-token
prediction of the window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from lmlens import Need, Patch, PatchContext, run_forward
from lmlens.models import LoadedModel
from lmlens_sae.model import SparseAutoencoder


def _batch(loaded: LoadedModel, windows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special = torch.tensor(sorted(set(getattr(tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
    length = max(len(w) for w in windows)
    ids = torch.full((len(windows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.tensor(window)
        mask[row, : len(window)] = 1
    splice = mask.bool().clone()
    splice[:, 0] = False
    if special.numel():
        splice &= ~torch.isin(ids, special)
    return ids, mask, splice


@torch.no_grad()
def ce_recovered(
    loaded: LoadedModel,
    sae: SparseAutoencoder,
    point: str,
    windows: Sequence[list[int]],
    *,
    batch_windows: int = 16,
) -> dict[str, float]:
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    count = 0
    for start in range(0, len(windows), batch_windows):
        ids, mask, splice = _batch(loaded, windows[start:start + batch_windows])

        def replace(act: torch.Tensor, ctx: PatchContext, *, splice: torch.Tensor = splice) -> torch.Tensor:
            shape = act.shape  # [batch, pos, d] or [batch, pos, head, d_head]
            flat = act.flatten(2)
            where = splice.to(act.device)[..., None]
            recon = sae(flat.float()).to(act.dtype)
            return torch.where(where, recon, flat).reshape(shape)

        def zero(act: torch.Tensor, ctx: PatchContext, *, splice: torch.Tensor = splice) -> torch.Tensor:
            mask = splice.to(act.device).reshape(*splice.shape, *([1] * (act.dim() - 2)))
            return act.masked_fill(mask, 0.0)

        logits = {}
        for name, patches in (("clean", []), ("sae", [Patch(point, replace)]), ("zero", [Patch(point, zero)])):
            out = run_forward(loaded, [Need("logits")], input_ids=ids, attention_mask=mask, patches=patches)
            logits[name] = out["logits"].float()
        targets = ids[:, 1:]
        valid = mask[:, 1:].bool()
        for name in ("clean", "sae", "zero"):
            lp = F.log_softmax(logits[name][:, :-1], dim=-1)
            nll = -lp.gather(-1, targets[..., None].to(lp.device))[..., 0]
            sums[name] += float(nll[valid].double().sum())
        clean_lp = F.log_softmax(logits["clean"][:, :-1], dim=-1)
        sae_lp = F.log_softmax(logits["sae"][:, :-1], dim=-1)
        kl = (clean_lp.exp() * (clean_lp - sae_lp)).sum(-1)
        sums["kl"] += float(kl[valid].double().sum())
        count += int(valid.sum())
    ce = {name: sums[name] / max(count, 1) for name in ("clean", "sae", "zero")}
    denom = ce["zero"] - ce["clean"]
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / denom if abs(denom) > 1e-9 else float("nan"),
        "kl_div": sums["kl"] / max(count, 1),
        "ce_tokens": count,
    }
