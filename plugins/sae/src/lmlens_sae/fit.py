"""Train an SAE on a model's activations at one hook point: stream, buffer, step, checkpoint.

``fit`` is what the job, the CLI, ``Analyzer.train_sae`` and the default's training
script call. Checkpoints go through a callback (the job hands it ``store.checkpoint``);
a resumed run restores the SAE, Adam's moments and the dead-latent counters, and
continues the activation stream at the window where the checkpoint was taken (tokens
that were in the shuffled buffer then, not yet trained on, are skipped, so a resumed run
matches an uninterrupted one within noise, not bit for bit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmlens.models import LoadedModel
from lmlens_sae.activations import (
    ShuffledBuffer,
    TokenWindows,
    check_corpus,
    epoch_order,
    make_windows,
    point_width,
    resolve_point,
    stream_activations,
)
from lmlens_sae.errors import TrainingDivergedError
from lmlens_sae.metrics import activation_metrics
from lmlens_sae.model import SparseAutoencoder
from lmlens_sae.train import StepStats, TrainConfig, Trainer

Checkpoint = Callable[[dict[str, Any], dict[str, np.ndarray]], None]
Progress = Callable[[float, str, StepStats | None], None]


@dataclass
class FitResult:
    sae: SparseAutoencoder
    point: str
    train_config: TrainConfig
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0
    diverged: TrainingDivergedError | None = None
    density: np.ndarray | None = None  # [d_sae]: share of held-out tokens each feature fires on


def split_windows(windows: TokenWindows, held_out: float, special: set[int]) -> tuple[TokenWindows, TokenWindows]:
    n_eval = 0 if held_out <= 0 else max(1, round(len(windows) * held_out))
    n_eval = min(n_eval, max(0, len(windows) - 1))
    train_w = windows.windows[: len(windows) - n_eval]
    eval_w = windows.windows[len(windows) - n_eval:]

    def usable(ws: list[list[int]]) -> int:
        return sum(1 for w in ws for t in w[1:] if t not in special)

    return TokenWindows(train_w, usable(train_w)), TokenWindows(eval_w, usable(eval_w))


def _batches_from(
    loaded: LoadedModel,
    windows: TokenWindows,
    point: str,
    cfg: TrainConfig,
    *,
    budget_bytes: int,
    batch_windows: int,
    epoch: int,
    start: int,
    where: dict[str, int],
) -> Iterator[torch.Tensor]:
    """Batches over as many epochs as the token budget needs; ``where`` tracks the position."""
    d_in = point_width(loaded, point)
    while True:
        order = epoch_order(len(windows), epoch, cfg.seed)
        buffer = ShuffledBuffer(d_in, budget_bytes=budget_bytes, batch_size=cfg.batch_size,
                                seed=cfg.seed + epoch * 7919 + start)
        stream = stream_activations(loaded, windows, point, batch_windows=batch_windows, order=order, start=start)
        where["buffer_bytes"] = buffer.nbytes
        for batch in buffer.batches(stream):
            where["epoch"], where["window"] = epoch, buffer.position
            yield batch
        epoch, start = epoch + 1, 0


def fit(
    loaded: LoadedModel,
    texts: Sequence[str],
    cfg: TrainConfig,
    *,
    point: str | None = None,
    layer: int | None = None,
    context: int = 128,
    n_epochs: int | None = None,
    buffer_mb: float = 128.0,
    batch_windows: int = 16,
    held_out: float = 0.05,
    eval_texts: Sequence[str] | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 50,
    resume: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None,
    progress: Progress | None = None,
    evaluate_ce: bool = True,
    eval_tokens: int = 8192,
) -> FitResult:
    point = resolve_point(loaded, point, layer)
    special = set(getattr(loaded.tokenizer, "all_special_ids", []) or [])
    windows = make_windows(loaded, texts, context)
    if eval_texts is not None:
        train_windows, eval_windows = windows, make_windows(loaded, eval_texts, context)
    else:
        train_windows, eval_windows = split_windows(windows, held_out, special)
    if n_epochs is not None:
        cfg.total_tokens = max(1, int(n_epochs) * train_windows.usable)
    check_corpus(train_windows, cfg.total_tokens if n_epochs is None else 1)
    d_in = point_width(loaded, point)
    trainer = Trainer(cfg, d_in)
    where = {"epoch": 0, "window": 0, "buffer_bytes": 0}
    resumed = 0
    if resume is not None:
        config, tensors = resume
        trainer.load_state(config["trainer"], tensors)
        where["epoch"], where["window"] = int(config["epoch"]), int(config["window"])
        resumed = trainer.state.step
    budget = int(buffer_mb * 1024 * 1024)
    batches = _batches_from(loaded, train_windows, point, cfg, budget_bytes=budget, batch_windows=batch_windows,
                            epoch=where["epoch"], start=where["window"], where=where)

    def save() -> None:
        if checkpoint is None:
            return
        config = {"trainer": trainer.state_config(), "epoch": where["epoch"], "window": where["window"],
                  "point": point, "train_config": cfg.to_dict(), "context": context}
        checkpoint(config, trainer.state_tensors())

    started = time.perf_counter()
    diverged: TrainingDivergedError | None = None
    log_every = max(1, cfg.total_steps // 50)

    def on_step(stats: StepStats) -> None:
        if stats.step % log_every == 0 or stats.tokens >= cfg.total_tokens:
            trainer.state.history.append(stats.to_dict())
        if progress is not None:
            rate = (stats.tokens - (resumed * cfg.batch_size)) / max(time.perf_counter() - started, 1e-9)
            progress(
                min(1.0, stats.tokens / cfg.total_tokens),
                f"{stats.tokens}/{cfg.total_tokens} tokens, loss {stats.loss:.4g}, L0 {stats.l0:.1f}, "
                f"EV {stats.explained_variance:.3f}, dead {stats.dead_fraction:.1%}, {rate:.0f} tok/s",
                stats,
            )
        if checkpoint is not None and stats.step % checkpoint_every == 0:
            save()

    try:
        trainer.train(batches, on_step=on_step)
    except TrainingDivergedError as exc:
        diverged = exc
    if diverged is None:
        save()
    elapsed = time.perf_counter() - started
    sae = trainer.sae
    metrics: dict[str, Any] = {
        "train_tokens": trainer.state.tokens,
        "train_steps": trainer.state.step,
        "train_seconds": round(elapsed, 2),
        "train_dead_fraction": trainer.dead_fraction(),
        "train_dense_fraction": trainer.dense_fraction(),
        "buffer_bytes": where["buffer_bytes"],
    }
    density = None
    if diverged is None and eval_windows.usable > 0:
        found, density = evaluate(loaded, sae, point, eval_windows, evaluate_ce=evaluate_ce, max_tokens=eval_tokens,
                                  batch_windows=batch_windows)
        metrics.update(found)
    return FitResult(sae=sae, point=point, train_config=cfg, metrics=metrics, history=trainer.state.history,
                     resumed_from_step=resumed, diverged=diverged, density=density)


@torch.no_grad()
def evaluate(
    loaded: LoadedModel,
    sae: SparseAutoencoder,
    point: str,
    windows: TokenWindows,
    *,
    evaluate_ce: bool = True,
    max_tokens: int = 8192,
    batch_windows: int = 16,
) -> tuple[dict[str, Any], np.ndarray]:
    """Held-out metrics (MSE, EV, L0, dead/dense fractions, CE loss recovered, KL) and the
    share of held-out tokens each feature fires on."""
    chunks = []
    n = 0
    used: list[list[int]] = []
    for _, acts in stream_activations(loaded, windows, point, batch_windows=batch_windows):
        chunks.append(acts)
        n += acts.shape[0]
        if n >= max_tokens:
            break
    for w in windows.windows:
        used.append(w)
        if sum(len(u) for u in used) >= max_tokens:
            break
    x = torch.cat(chunks)[:max_tokens]
    out = {f"eval_{k}": v for k, v in activation_metrics(sae, x).items()}
    density = (sae.encode(x) > 0).double().mean(0).numpy().astype(np.float32)
    out["eval_tokens"] = int(x.shape[0])
    if evaluate_ce and loaded.info.has_lm_head and loaded.info.causal:
        from lmlens_sae.splice import ce_recovered

        found = ce_recovered(loaded, sae, point, used, batch_windows=batch_windows)
        out.update({f"eval_{k}": v for k, v in found.items()})
    clean = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in clean.items()}, density
