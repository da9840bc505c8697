"""Training: the optimiser step, schedules, dead-latent bookkeeping and checkpoint state.

The trainer knows nothing about models or text: it eats batches of raw activations
([N, d_in] float32) from any iterator, so tests feed it synthetic data and the job feeds
it the shuffled buffer of a model's activations (``activations.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lmlens_sae.errors import TrainingDivergedError
from lmlens_sae.model import SAEConfig, SparseAutoencoder, _SparseEncoderGrad, geometric_median, scale_for


@dataclass
class TrainConfig:
    architecture: str = "topk"
    d_sae: int = 4608
    k: int | None = 32
    l1_coeff: float = 5.0  # ReLU only: the weight of sum_i f_i ||W_dec_i||
    lr: float = 4e-4
    batch_size: int = 4096
    total_tokens: int = 300_000
    l1_warmup_frac: float = 0.05  # the L1 weight rises linearly from 0 over this share of steps
    lr_warmup_frac: float = 0.02
    lr_decay_frac: float = 0.2  # the learning rate falls linearly to 0 over the last share of steps
    aux_k: int | None = None  # AuxK: latents that reconstruct the residual from the dead ones (d_in / 2)
    aux_coeff: float = 1 / 32
    dead_after_tokens: int = 50_000  # a latent silent for this many tokens counts as dead
    dense_above: float = 0.1  # a latent firing on more than this share of tokens counts as dense
    b_dec_init: str = "geometric_median"  # or "mean" or "zeros"
    apply_b_dec_to_input: bool | None = None  # default: False for relu (Anthropic), True otherwise
    seed: int = 0

    def sae_config(self, d_in: int) -> SAEConfig:
        apply = self.apply_b_dec_to_input
        if apply is None:
            apply = self.architecture != "relu"
        k = self.k if self.architecture in ("topk", "batchtopk") else None
        return SAEConfig(d_in=d_in, d_sae=self.d_sae, architecture=self.architecture, k=k,
                         apply_b_dec_to_input=apply)

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.total_tokens / self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepStats:
    step: int
    tokens: int
    loss: float
    mse: float  # per element, in scaled units
    explained_variance: float
    l0: float
    aux_loss: float
    dead_fraction: float
    lr: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    initialized: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Owns one SAE, its Adam state and the schedules."""

    def __init__(self, cfg: TrainConfig, d_in: int) -> None:
        if cfg.architecture in ("topk", "batchtopk"):
            if not cfg.k or cfg.k <= 0:
                raise ValueError("k must be positive")
            if cfg.k >= cfg.d_sae:
                raise ValueError(f"k={cfg.k} must be below d_sae={cfg.d_sae}")
        self.cfg = cfg
        self.d_in = d_in
        torch.manual_seed(cfg.seed)
        self.sae = SparseAutoencoder(cfg.sae_config(d_in), seed=cfg.seed)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.state = TrainState()
        # tokens since each latent last fired (starts "fresh": nothing is dead at step 0)
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.float64)
        self.fire_counts = torch.zeros(cfg.d_sae, dtype=torch.float64)  # over the current window
        self.window_tokens = 0
        self.aux_k = cfg.aux_k or max(1, d_in // 2)
        self.unit_norm = cfg.architecture in ("topk", "batchtopk")

    # --- set-up ------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, sample: torch.Tensor) -> None:
        """Activation scale and b_dec from a sample of raw activations [N, d_in]."""
        sample = sample.float()
        scale = scale_for(sample)
        self.sae.scale.fill_(scale)
        scaled = sample[:8192] * scale
        if self.cfg.b_dec_init == "geometric_median":
            self.sae.b_dec.copy_(geometric_median(scaled))
        elif self.cfg.b_dec_init == "mean":
            self.sae.b_dec.copy_(scaled.mean(dim=0))
        self.state.initialized = True

    def schedules(self, step: int) -> tuple[float, float]:
        """(learning rate, L1 weight) at ``step``."""
        total = self.cfg.total_steps
        lr = self.cfg.lr
        warm = max(1, int(self.cfg.lr_warmup_frac * total))
        if step < warm:
            lr *= (step + 1) / warm
        decay_start = int((1 - self.cfg.lr_decay_frac) * total)
        if step >= decay_start and total > decay_start:
            lr *= max(0.0, (total - step) / (total - decay_start))
        l1 = self.cfg.l1_coeff
        l1_warm = int(self.cfg.l1_warmup_frac * total)
        if l1_warm > 0 and step < l1_warm:
            l1 *= (step + 1) / l1_warm
        return lr, l1

    # --- one step ----------------------------------------------------------------------

    def step(self, x_raw: torch.Tensor) -> StepStats:
        if not self.state.initialized:
            self.initialize(x_raw)
        sae = self.sae
        x = x_raw.float() * sae.scale
        lr, l1 = self.schedules(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = sae.train_forward(x)
        recon = out["recon"]
        err = x - recon
        mse = err.pow(2).mean()
        loss = mse
        if self.cfg.architecture == "relu":
            acts = out["acts"]
            sparsity = (acts * sae.W_dec.norm(dim=1)).sum(dim=1).mean() / self.d_in
            loss = loss + l1 * sparsity
        fired = self._fired(out)
        aux = self._aux_loss(out, err)
        if aux is not None:
            loss = loss + self.cfg.aux_coeff * aux
        if not torch.isfinite(loss.detach()):
            raise TrainingDivergedError(
                f"the loss became {float(loss.detach())} at step {self.state.step} "
                f"(after {self.state.tokens} tokens); the last good checkpoint is kept",
                step=self.state.step,
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.unit_norm:
            sae.remove_parallel_grad()
        self.optimizer.step()
        if self.unit_norm:
            sae.normalize_decoder()
        if self.cfg.architecture == "batchtopk":
            self._update_threshold(out)
        n = x.shape[0]
        with torch.no_grad():
            self._update_dead(fired, n)
            total_var = (x - x.mean(dim=0)).pow(2).sum()
            ev = 1.0 - float(err.detach().pow(2).sum() / total_var.clamp_min(1e-12))
        self.state.step += 1
        self.state.tokens += n
        stats = StepStats(
            step=self.state.step, tokens=self.state.tokens, loss=float(loss.detach()), mse=float(mse.detach()),
            explained_variance=ev, l0=self._l0(out, n), aux_loss=float(aux.detach()) if aux is not None else 0.0,
            dead_fraction=self.dead_fraction(), lr=lr,
        )
        return stats

    def _fired(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per latent, how many tokens of the batch it fired on [d_sae]."""
        with torch.no_grad():
            if "idx" in out:
                live = out["values"].detach() > 0
                return torch.bincount(out["idx"][live], minlength=self.cfg.d_sae).double()
            return (out["acts"].detach() > 0).sum(dim=0).double()

    def _l0(self, out: dict[str, torch.Tensor], n: int) -> float:
        if "idx" in out:
            return float((out["values"].detach() > 0).sum()) / n
        return float((out["acts"].detach() > 0).sum()) / n

    def _aux_loss(self, out: dict[str, torch.Tensor], err: torch.Tensor) -> torch.Tensor | None:
        """AuxK (Gao et al.): the dead latents' top pre-activations reconstruct the residual."""
        dead = self.since_fired >= self.cfg.dead_after_tokens
        n_dead = int(dead.sum())
        if n_dead == 0:
            return None
        k_aux = min(self.aux_k, n_dead)
        sae = self.sae
        pre = out["pre"]  # no grad; the sparse function below gives the chosen entries their gradient
        masked = pre.masked_fill(~dead.to(pre.device)[None, :], float("-inf"))
        picked, idx = masked.topk(k_aux, dim=-1, sorted=False)
        x_in = (err + out["recon"]).detach()  # the scaled input x
        with torch.no_grad():
            enc_in = x_in - sae.b_dec if sae.cfg.apply_b_dec_to_input else x_in
        b_dec = sae.b_dec if sae.cfg.apply_b_dec_to_input else sae.b_dec.detach()
        values = torch.relu(_SparseEncoderGrad.apply(enc_in, sae.W_enc, sae.b_enc, b_dec, picked, idx))
        e_hat = torch.nn.functional.embedding_bag(idx, sae.W_dec, per_sample_weights=values, mode="sum")
        target = err.detach()
        denom = (target - target.mean(dim=0)).pow(2).sum(dim=1).mean().clamp_min(1e-12)
        return (e_hat - target).pow(2).sum(dim=1).mean() / denom

    @torch.no_grad()
    def _update_threshold(self, out: dict[str, torch.Tensor]) -> None:
        acts = out["values"].detach() if "values" in out else out["acts"].detach()
        positive = acts[acts > 0]
        if positive.numel() == 0:
            return
        smallest = float(positive.min())
        current = float(self.sae.threshold[0])
        new = smallest if self.state.step == 0 else 0.99 * current + 0.01 * smallest
        self.sae.threshold.fill_(new)

    def _update_dead(self, fired: torch.Tensor, n: int) -> None:
        fired_any = fired > 0
        self.since_fired += n
        self.since_fired[fired_any] = 0
        self.fire_counts += fired
        self.window_tokens += n
        if self.window_tokens > max(self.cfg.dead_after_tokens, n) * 2:
            self.fire_counts /= 2
            self.window_tokens //= 2

    def dead_fraction(self) -> float:
        return float((self.since_fired >= self.cfg.dead_after_tokens).double().mean())

    def dense_fraction(self) -> float:
        if self.window_tokens == 0:
            return 0.0
        return float((self.fire_counts / self.window_tokens > self.cfg.dense_above).double().mean())

    # --- loops -------------------------------------------------------------------------

    def train(
        self,
        batches: Iterable[torch.Tensor],
        *,
        on_step: Callable[[StepStats], None] | None = None,
        max_steps: int | None = None,
    ) -> list[StepStats]:
        """Step over ``batches`` until the config's token budget (or ``max_steps``) is spent."""
        seen: list[StepStats] = []
        for batch in batches:
            if self.state.tokens >= self.cfg.total_tokens:
                break
            if max_steps is not None and len(seen) >= max_steps:
                break
            stats = self.step(batch)
            seen.append(stats)
            if on_step is not None:
                on_step(stats)
        return seen

    # --- checkpoint state --------------------------------------------------------------

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Everything a resumed run needs, as numpy arrays (SAE, Adam moments, counters)."""
        out = {name: t.numpy(force=True).astype(np.float32) for name, t in self.sae.tensors().items()}
        out["threshold"] = self.sae.threshold.numpy(force=True).astype(np.float32)
        names = dict(self.sae.named_parameters())
        state = self.optimizer.state
        for name, param in names.items():
            if param in state:
                out[f"adam.{name}.exp_avg"] = state[param]["exp_avg"].numpy(force=True)
                out[f"adam.{name}.exp_avg_sq"] = state[param]["exp_avg_sq"].numpy(force=True)
        out["train.since_fired"] = self.since_fired.numpy()
        out["train.fire_counts"] = self.fire_counts.numpy()
        return out

    def state_config(self) -> dict[str, Any]:
        adam_step = 0
        for param in self.sae.parameters():
            if param in self.optimizer.state:
                adam_step = int(self.optimizer.state[param]["step"])
                break
        return {
            "step": self.state.step,
            "tokens": self.state.tokens,
            "initialized": self.state.initialized,
            "window_tokens": self.window_tokens,
            "adam_step": adam_step,
            "history": self.state.history,
        }

    def load_state(self, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        sae = self.sae
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
                getattr(sae, name).copy_(torch.from_numpy(np.asarray(tensors[name], dtype=np.float32)))
            sae.scale.fill_(float(np.asarray(tensors["scale"]).reshape(-1)[0]))
        adam_step = int(config.get("adam_step", 0))
        if adam_step:
            for name, param in sae.named_parameters():
                key = f"adam.{name}.exp_avg"
                if key in tensors:
                    self.optimizer.state[param] = {
                        "step": torch.tensor(float(adam_step)),
                        "exp_avg": torch.from_numpy(np.array(tensors[key], dtype=np.float32)),
                        "exp_avg_sq": torch.from_numpy(np.array(tensors[f"adam.{name}.exp_avg_sq"], dtype=np.float32)),
                    }
        self.since_fired = torch.from_numpy(np.array(tensors["train.since_fired"], dtype=np.float64))
        self.fire_counts = torch.from_numpy(np.array(tensors["train.fire_counts"], dtype=np.float64))
        self.window_tokens = int(config.get("window_tokens", 0))
        self.state = TrainState(
            step=int(config["step"]), tokens=int(config["tokens"]),
            initialized=bool(config.get("initialized", True)), history=list(config.get("history", [])),
        )
