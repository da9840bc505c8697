"""Sparse autoencoders in torch: ReLU with decoder-norm-weighted L1, TopK, BatchTopK.

Shapes follow SAELens: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]``. Inputs are raw model activations; ``scale`` (a constant recorded in the
artifact) multiplies them before encoding and divides the reconstruction after decoding,
so that every user of the SAE works in the model's own units.

Encoding:

- ``relu``      f = ReLU(x W_enc + b_enc)                      (Anthropic, April 2024 update)
- ``topk``      f = scatter(TopK(ReLU((x - b_dec) W_enc + b_enc)))   (Gao et al. 2024)
- ``batchtopk`` training: the k * batch largest ReLU pre-activations over the whole batch;
                inference: a JumpReLU at a global threshold learnt during training
                (Bussmann et al. 2024)
- ``jumprelu``  f = pre * (pre > threshold)  (imported SAELens SAEs only)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")
TRAINABLE = ("relu", "topk", "batchtopk")


@dataclass(frozen=True)
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None
    apply_b_dec_to_input: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "architecture": self.architecture,
            "k": self.k,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
        }


class _SparseEncoderGrad(torch.autograd.Function):
    """The k chosen pre-activations, with the encoder gradient computed sparsely.

    The forward value is ``pre[n, idx[n]]`` (already computed without grad by the dense
    matmul); the backward pass forms ``dL/dW_enc`` from only the N*k non-zero gradient
    entries (a CSR sparse x dense product) instead of a dense [d_in, N] x [N, d_sae] one.
    The input ``x`` is data, so it gets no gradient.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                picked: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # h = x - b_dec (or x): the encoder's input
        ctx.save_for_backward(h, w_enc, idx)
        ctx.d_sae = w_enc.shape[1]
        ctx.b_dec_in_input = b_dec.requires_grad
        return picked.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
        x, w_enc, idx = ctx.saved_tensors
        n, k = idx.shape
        flat_idx = idx.reshape(-1)
        flat_grad = grad.reshape(-1).to(x.dtype)
        # rows of the sparse matrix are latents, columns are tokens: [d_sae, N]
        order = torch.argsort(flat_idx, stable=True)
        cols = torch.arange(n, device=x.device).repeat_interleave(k)[order]
        counts = torch.bincount(flat_idx, minlength=ctx.d_sae)
        crow = torch.zeros(ctx.d_sae + 1, dtype=torch.int64, device=x.device)
        crow[1:] = torch.cumsum(counts, 0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            sparse = torch.sparse_csr_tensor(crow, cols, flat_grad[order], size=(ctx.d_sae, n),
                                             check_invariants=False)
            grad_w = (sparse @ x).T  # [d_in, d_sae]
        grad_b = torch.zeros(ctx.d_sae, dtype=x.dtype, device=x.device).index_add_(0, flat_idx, flat_grad)
        # h = x - b_dec: dL/db_dec through the encoder is -sum_n W_enc[:, idx] g = -W_enc @ grad_b
        grad_b_dec = -(w_enc @ grad_b) if ctx.b_dec_in_input else None
        return None, grad_w, grad_b, grad_b_dec, None, None


class SparseAutoencoder(nn.Module):
    """One SAE. ``encode``/``decode``/``forward`` take and return raw activations."""

    def __init__(self, cfg: SAEConfig, *, seed: int = 0, init_norm: float | None = None) -> None:
        super().__init__()
        if cfg.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {cfg.architecture!r}; one of {', '.join(ARCHITECTURES)}")
        if cfg.architecture in ("topk", "batchtopk") and not cfg.k:
            raise ValueError(f"{cfg.architecture} needs k")
        self.cfg = cfg
        generator = torch.Generator().manual_seed(seed)
        # Decoder rows are random directions with a fixed norm (unit for TopK, 0.1 for ReLU as
        # in Anthropic's update); the encoder starts as the decoder's transpose.
        norm = init_norm if init_norm is not None else (0.1 if cfg.architecture == "relu" else 1.0)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * norm
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("threshold", torch.zeros(cfg.d_sae))
        self.register_buffer("scale", torch.ones(()))
        self.sparse_decode = cfg.architecture in ("topk", "batchtopk")

    # --- pieces ---------------------------------------------------------------------------

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    def pre_acts(self, x_scaled: torch.Tensor) -> torch.Tensor:
        h = x_scaled - self.b_dec if self.cfg.apply_b_dec_to_input else x_scaled
        if h.dim() == 2:
            return torch.addmm(self.b_enc, h, self.W_enc)
        return h @ self.W_enc + self.b_enc

    def _activate(self, pre: torch.Tensor, *, training: bool) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "relu":
            return F.relu(pre)
        if arch == "topk":
            k = int(self.cfg.k or 0)
            values, idx = pre.topk(k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, idx, F.relu(values))
        if arch == "batchtopk" and training:
            acts = F.relu(pre)
            flat = acts.reshape(-1)
            n_keep = int(self.cfg.k or 0) * (flat.numel() // pre.shape[-1])
            values, idx = flat.topk(min(n_keep, flat.numel()), sorted=False)
            return torch.zeros_like(flat).scatter(0, idx, values).reshape(pre.shape)
        # batchtopk at inference and jumprelu: a threshold per latent
        return pre * (pre > self.threshold).to(pre.dtype) * (pre > 0).to(pre.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations [..., d_in] -> feature activations [..., d_sae]."""
        x = x.to(self.W_enc.dtype)
        return self._activate(self.pre_acts(x * self.scale), training=False)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae] -> reconstruction in raw units [..., d_in]."""
        return (f @ self.W_dec + self.b_dec) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def encode_topk_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK only: (values [N, k], indices [N, k]) of raw activations x [N, d_in]."""
        pre = self.pre_acts(x.to(self.W_enc.dtype) * self.scale)
        values, idx = pre.topk(int(self.cfg.k or 0), dim=-1)
        return F.relu(values), idx

    def decode_sparse(self, values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Decode from k (value, index) pairs per row without forming the dense codes."""
        out = F.embedding_bag(idx, self.W_dec, per_sample_weights=values, mode="sum")
        return (out + self.b_dec) / self.scale

    # --- training -------------------------------------------------------------------------

    def train_forward(self, x_scaled: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step's forward pass on already scaled activations [N, d_in].

        Returns ``recon`` (scaled units), ``acts`` (dense codes, or None for the sparse TopK
        path), ``pre`` (pre-activations, no grad), ``idx``/``values`` for TopK.
        """
        arch = self.cfg.architecture
        if arch in ("topk", "batchtopk") and self.sparse_decode:
            k = int(self.cfg.k or 0)
            with torch.no_grad():
                h = x_scaled - self.b_dec if self.cfg.apply_b_dec_to_input else x_scaled
                pre = torch.addmm(self.b_enc, h, self.W_enc)
                if arch == "topk":
                    picked, idx = pre.topk(k, dim=-1, sorted=False)
                    keep = None
                else:
                    picked, idx, keep = _batch_topk_candidates(pre, k)
            b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else self.b_dec.detach()
            values = F.relu(_SparseEncoderGrad.apply(h, self.W_enc, self.b_enc, b_dec, picked, idx))
            if keep is not None:
                values = values * keep
            recon = F.embedding_bag(idx, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
            return {"recon": recon, "pre": pre, "idx": idx, "values": values}
        pre = self.pre_acts(x_scaled)
        acts = self._activate(pre, training=True)
        recon = acts @ self.W_dec + self.b_dec
        return {"recon": recon, "pre": pre.detach(), "acts": acts}

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm decoder rows (TopK / BatchTopK)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the gradient component parallel to each unit-norm decoder row."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_dec.grad.sub_((self.W_dec.grad * w).sum(dim=1, keepdim=True) * w)

    # --- (de)serialisation ----------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "W_enc": self.W_enc.detach(),
            "b_enc": self.b_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_dec": self.b_dec.detach(),
            "scale": self.scale.detach().reshape(1),
        }
        if self.cfg.architecture in ("batchtopk", "jumprelu"):
            out["threshold"] = self.threshold.detach()
        return out

    @classmethod
    def from_tensors(cls, cfg: SAEConfig, tensors: dict[str, Any]) -> SparseAutoencoder:
        sae = cls(cfg)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
                if name in tensors:
                    getattr(sae, name).copy_(torch.as_tensor(tensors[name], dtype=torch.float32))
            if "scale" in tensors:
                sae.scale.copy_(torch.as_tensor(tensors["scale"], dtype=torch.float32).reshape(()))
        return sae


@torch.no_grad()
def _batch_topk_candidates(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchTopK's choice (the k * N largest ReLU pre-activations of the batch) as per-row candidates.

    Each row's top ``m = 4k`` pre-activations are the candidates; the global top k * N among them is
    exact unless some row has all m candidates chosen (it might have more), and then the whole
    batch is ranked instead. Returns (values [N, m], indices [N, m], chosen mask [N, m] as 0/1).
    """
    n, d_sae = pre.shape
    acts = F.relu(pre)
    n_keep = min(k * n, acts.numel())
    m = min(d_sae, 4 * k)
    while True:
        values, idx = acts.topk(m, dim=-1, sorted=False)
        flat = values.reshape(-1)
        chosen = torch.zeros_like(flat)
        chosen[flat.topk(n_keep, sorted=False).indices] = 1.0
        chosen = chosen.reshape(n, m)
        if m == d_sae or not bool((chosen.sum(-1) == m).any()):
            return values, idx, chosen * (values > 0)
        m = min(d_sae, 4 * m)


@torch.no_grad()
def geometric_median(points: torch.Tensor, *, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance."""
    guess = points.mean(dim=0)
    for _ in range(iters):
        dist = (points - guess).norm(dim=1).clamp_min(1e-8)
        weights = 1.0 / dist
        new = (weights[:, None] * points).sum(dim=0) / weights.sum()
        if (new - guess).norm() < tol * max(1.0, float(guess.norm())):
            return new
        guess = new
    return guess


def scale_for(sample: torch.Tensor) -> float:
    """The constant that makes E||x|| = sqrt(d_in) on ``sample`` [N, d_in]."""
    mean_norm = float(sample.norm(dim=1).mean())
    return math.sqrt(sample.shape[1]) / max(mean_norm, 1e-12)
