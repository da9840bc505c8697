"""How many rows (IG steps, occluded copies, ablations) one extra pass may hold within a memory budget.

Methods that batch their extra passes through ``run_forward`` size the batches here, so
every plugin budgets memory the same way.

The estimate counts what autograd keeps per row: a handful of ``d_model`` and
``d_mlp`` vectors per position and layer, the attention scores, and the
log-softmax over the vocabulary for the positions the target reads.
"""

from __future__ import annotations

from lmlens.models import LoadedModel


def _d_mlp(loaded: LoadedModel) -> int:
    config = loaded.model.config
    value = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return int(value or 4 * loaded.info.d_model)


def row_bytes(loaded: LoadedModel, pos: int, lm_positions: int, *, grad: bool) -> int:
    """Estimated bytes one row of a batched pass over ``pos`` positions needs."""
    info = loaded.info
    element = 8 if info.dtype == "float64" else 4
    d, d_mlp, heads = info.d_model, _d_mlp(loaded), info.n_heads
    vocab = info.vocab_size * lm_positions
    if grad:
        # Measured on smollm2-135m (128 tokens, frozen weights): autograd saves about
        # 5 d_model + 3 d_mlp values per position and layer; 1.3x covers the backward's
        # transients. Eager attention would add the [head, q, k] maps, counted here too.
        per_layer = pos * (5 * d + 3 * d_mlp) + heads * pos * pos
        return int(1.3 * element * (info.n_layers * per_layer + 3 * vocab + 4 * pos * d))
    # Without a graph only one layer's temporaries live at a time.
    return element * (pos * (6 * d + 3 * d_mlp) + 3 * heads * pos * pos + 2 * vocab + 2 * pos * d)


def rows_per_pass(
    loaded: LoadedModel,
    pos: int,
    lm_positions: int,
    *,
    grad: bool,
    budget_mb: float,
    requested: int | None = None,
    cap: int = 512,
) -> int:
    if requested is not None:
        return requested
    per_row = row_bytes(loaded, pos, lm_positions, grad=grad)
    return max(1, min(cap, int(budget_mb * 2**20 // per_row)))
