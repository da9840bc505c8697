"""Reconstruction and sparsity metrics of an SAE on a set of activations."""

from __future__ import annotations

import torch

from lmlens_sae.model import SparseAutoencoder


@torch.no_grad()
def activation_metrics(sae: SparseAutoencoder, x: torch.Tensor, *, dense_above: float = 0.1,
                       batch: int = 4096) -> dict[str, float]:
    """MSE (raw units, per element), explained variance, L0, dead and dense fractions over x [N, d_in].

    Dead: latents that never fire on these N tokens; dense: latents firing on more than
    ``dense_above`` of them. Explained variance is 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2.
    """
    x = x.float()
    n = x.shape[0]
    err_sq = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    cos = 0.0
    for start in range(0, n, batch):
        chunk = x[start:start + batch]
        f = sae.encode(chunk)
        recon = sae.decode(f)
        err_sq += float((chunk - recon).double().pow(2).sum())
        active = f > 0
        l0 += float(active.sum())
        fired += active.sum(dim=0).double()
        cos += float(torch.nn.functional.cosine_similarity(chunk, recon, dim=-1).double().sum())
    total_var = float((x.double() - x.double().mean(dim=0)).pow(2).sum())
    frequency = fired / max(n, 1)
    return {
        "mse": err_sq / (n * x.shape[1]),
        "explained_variance": 1.0 - err_sq / max(total_var, 1e-30),
        "l0": l0 / max(n, 1),
        "dead_fraction": float((fired == 0).double().mean()),
        "dense_fraction": float((frequency > dense_above).double().mean()),
        "cosine": cos / max(n, 1),
    }
