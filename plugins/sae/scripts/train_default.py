"""Train, evaluate and package the default SAE: TopK (k=32, 8x = 4608 latents) on SmolLM2-135M
at blocks.15.resid_post.

    python plugins/sae/scripts/corpus.py generate            # the model's own generations (optional)
    python plugins/sae/scripts/train_default.py extract      # activations -> WORK/acts.f16 (once)
    python plugins/sae/scripts/train_default.py train        # epochs over them, checkpoints, EV curve
    python plugins/sae/scripts/train_default.py evaluate     # held-out EV/L0/dead, CE recovered, KL; package

Activations are extracted once through the kernel's ``run_forward`` (stopped at block 15)
and kept on disk as float16, so the several epochs a CPU budget allows do not rerun the
model; the trainer still reads them through the same shuffled buffer as the job. The
packaged artifact (float16 tensors) lands in ``src/lmlens_sae/default/``; its metrics and
the EV-vs-tokens curve in ``scripts/default_metrics.json`` (the README quotes them).
Environment: ``SAE_WORK`` (default /tmp/lmlens-sae-default), ``SAE_TOKENS`` (activations to
extract, default 60000), ``SAE_EPOCHS`` (default 12), ``SAE_THREADS`` (default 1).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402

from lmlens import Analyzer, data_provenance, model_fingerprint  # noqa: E402
from lmlens.artifacts import write_artifact  # noqa: E402
from lmlens_sae.activations import ShuffledBuffer, make_windows, stream_activations  # noqa: E402
from lmlens_sae.fit import evaluate  # noqa: E402
from lmlens_sae.methods import DEFAULT_SAE  # noqa: E402
from lmlens_sae.metrics import activation_metrics  # noqa: E402
from lmlens_sae.record import SAERecord  # noqa: E402
from lmlens_sae.train import Trainer, TrainConfig  # noqa: E402

WORK = Path(os.environ.get("SAE_WORK", "/tmp/lmlens-sae-default"))
POINT = "blocks.15.resid_post"
MODEL = "smollm2-135m"
N_TOKENS = int(os.environ.get("SAE_TOKENS", "60000"))
EPOCHS = int(os.environ.get("SAE_EPOCHS", "12"))
PACKAGE = HERE.parent / "src" / "lmlens_sae" / "default" / DEFAULT_SAE
METRICS = HERE / "default_metrics.json"
CONFIG = TrainConfig(architecture="topk", d_sae=4608, k=32, lr=5e-4, batch_size=2048, total_tokens=0,
                     dead_after_tokens=100_000, lr_warmup_frac=0.02, lr_decay_frac=0.2, seed=0)


def _loaded():  # type: ignore[no-untyped-def]
    torch.set_num_threads(int(os.environ.get("SAE_THREADS", "1")))
    return Analyzer(model=MODEL).load_model()


def extract() -> None:
    loaded = _loaded()
    WORK.mkdir(parents=True, exist_ok=True)
    train_texts = corpus.load("train")
    windows = make_windows(loaded, train_texts, 128)
    order = np.random.default_rng(0).permutation(len(windows)).tolist()
    d = loaded.info.d_model
    out = np.lib.format.open_memmap(WORK / "acts.npy", mode="w+", dtype=np.float16, shape=(N_TOKENS, d))
    n = 0
    started = time.time()
    for _, acts in stream_activations(loaded, windows, POINT, batch_windows=16, order=order):
        take = min(N_TOKENS - n, acts.shape[0])
        out[n:n + take] = acts[:take].numpy().astype(np.float16)
        n += take
        print(f"extract {n}/{N_TOKENS} tokens, {n / (time.time() - started):.0f} tok/s", flush=True)
        if n >= N_TOKENS:
            break
    out.flush()
    held = make_windows(loaded, corpus.load("held_out"), 128)
    chunks, m = [], 0
    for _, acts in stream_activations(loaded, held, POINT, batch_windows=16):
        chunks.append(acts.numpy().astype(np.float16))
        m += acts.shape[0]
        if m >= 4096:
            break
    np.save(WORK / "held_out.npy", np.concatenate(chunks)[:4096])
    (WORK / "extract.json").write_text(json.dumps({
        "tokens": n, "windows_available": len(windows), "usable_tokens_available": windows.usable,
        "seconds": round(time.time() - started, 1), "texts": len(train_texts),
        "provenance": data_provenance(train_texts),
    }))


def _disk_stream(acts: np.ndarray, epoch: int, chunk: int = 4096):  # type: ignore[no-untyped-def]
    """Chunks of the cached activations in a fresh random order per epoch."""
    starts = np.arange(0, acts.shape[0], chunk)
    for i, s in enumerate(np.random.default_rng(100 + epoch).permutation(starts)):
        yield i, torch.from_numpy(np.asarray(acts[s:s + chunk], dtype=np.float32))


def train() -> None:
    torch.set_num_threads(int(os.environ.get("SAE_THREADS", "1")))
    acts = np.load(WORK / "acts.npy", mmap_mode="r")
    held = torch.from_numpy(np.load(WORK / "held_out.npy").astype(np.float32))
    cfg = CONFIG
    cfg.total_tokens = acts.shape[0] * EPOCHS
    trainer = Trainer(cfg, acts.shape[1])
    trainer.initialize(torch.from_numpy(np.asarray(acts[:8192], dtype=np.float32)))
    curve = []
    started = time.time()
    every = max(1, cfg.total_steps // 12)
    for epoch in range(EPOCHS):
        buffer = ShuffledBuffer(acts.shape[1], budget_bytes=64 << 20, batch_size=cfg.batch_size, seed=epoch)
        for batch in buffer.batches(_disk_stream(acts, epoch)):
            if trainer.state.tokens >= cfg.total_tokens:
                break
            stats = trainer.step(batch)
            if stats.step % every == 0 or stats.tokens >= cfg.total_tokens:
                m = activation_metrics(trainer.sae, held)
                row = {"tokens": stats.tokens, "step": stats.step, "train_loss": stats.loss,
                       "held_out_ev": m["explained_variance"], "held_out_l0": m["l0"],
                       "held_out_dead_fraction": m["dead_fraction"], "train_dead_fraction": stats.dead_fraction,
                       "seconds": round(time.time() - started, 1)}
                curve.append(row)
                print(json.dumps(row), flush=True)
                from safetensors.numpy import save_file

                save_file({k: np.ascontiguousarray(v) for k, v in trainer.state_tensors().items()},
                          str(WORK / "checkpoint.safetensors"))
                (WORK / "checkpoint.json").write_text(json.dumps(trainer.state_config()))
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in trainer.state_tensors().items()}, str(WORK / "final.safetensors"))
    (WORK / "train.json").write_text(json.dumps({
        "curve": curve, "config": cfg.to_dict(), "seconds": round(time.time() - started, 1),
        "tokens_trained": trainer.state.tokens, "steps": trainer.state.step, "epochs": EPOCHS,
        "distinct_tokens": int(acts.shape[0]), "train_dense_fraction": trainer.dense_fraction(),
    }))


def evaluate_and_package() -> None:
    from safetensors.numpy import load_file

    loaded = _loaded()
    info = json.loads((WORK / "train.json").read_text())
    extracted = json.loads((WORK / "extract.json").read_text())
    cfg = TrainConfig(**info["config"])
    trainer = Trainer(cfg, loaded.info.d_model)
    tensors = load_file(str(WORK / "final.safetensors"))
    trainer.load_state({"step": info["steps"], "tokens": info["tokens_trained"]}, tensors)
    sae = trainer.sae.eval()
    with torch.no_grad():  # evaluate what ships: float16 weights
        for p in sae.parameters():
            p.copy_(p.half().float())
    held_texts = corpus.load("held_out")
    windows = make_windows(loaded, held_texts, 128)
    started = time.time()
    metrics, density = evaluate(loaded, sae, POINT, windows, evaluate_ce=True,
                                max_tokens=int(os.environ.get("SAE_EVAL", "4096")))
    metrics.update({
        "train_tokens": info["tokens_trained"], "train_distinct_tokens": info["distinct_tokens"],
        "train_epochs": info["epochs"], "train_steps": info["steps"], "train_seconds": info["seconds"],
        "extract_seconds": extracted["seconds"], "eval_seconds": round(time.time() - started, 1),
        "train_dense_fraction": info["train_dense_fraction"],
    })
    record = SAERecord(
        name=DEFAULT_SAE, sae=sae, point=POINT, model=model_fingerprint(loaded), model_name=loaded.name,
        metrics=metrics, density=density,
        extra={"train": info["config"], "corpus": "pydoc_data topics + SmolLM2-135M-Instruct generations "
               "(plugins/sae/scripts/corpus.py)", "curve": info["curve"]},
        provenance={**extracted["provenance"], "script": "plugins/sae/scripts/train_default.py"},
    )
    artifact = record.to_artifact(dtype=np.float16)
    import shutil

    shutil.rmtree(PACKAGE, ignore_errors=True)
    write_artifact(artifact, PACKAGE)
    METRICS.write_text(json.dumps({"metrics": metrics, "curve": info["curve"]}, indent=1))
    print(json.dumps(metrics, indent=1))
    size = sum(p.stat().st_size for p in PACKAGE.iterdir())
    print(f"packaged {PACKAGE} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    stage = sys.argv[1] if len(sys.argv) > 1 else "all"
    if stage in ("extract", "all"):
        extract()
    if stage in ("train", "all"):
        train()
    if stage in ("evaluate", "all"):
        evaluate_and_package()
