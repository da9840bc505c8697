"""Train, evaluate and package the default SAE: TopK (k=32, 8x = 4608 latents) on SmolLM2-135M
at blocks.15.resid_post.

    python plugins/sae/scripts/corpus.py generate            # the model's own generations (optional)
    python plugins/sae/scripts/train_default.py extract [pydoc|generations]  # -> WORK/acts_*.npy (once)
    python plugins/sae/scripts/train_default.py train        # epochs over them, checkpoints, EV curve
    python plugins/sae/scripts/train_default.py evaluate     # held-out EV/L0/dead, CE recovered, KL; package

Activations are extracted once through the kernel's ``run_forward`` (stopped at block 15)
and kept on disk as float16, so the several epochs a CPU budget allows do not rerun the
model; the trainer still reads them through the same shuffled buffer as the job. The
packaged artifact (float16 tensors) lands in ``src/lmlens_sae/default/``; its metrics and
the EV-vs-tokens curve in ``scripts/default_metrics.json`` (the README quotes them).
Environment: ``SAE_WORK`` (default /tmp/lmlens-sae-default), ``SAE_TOKENS`` (activations to
extract per source, default 60000), ``SAE_EPOCHS`` (default 12), ``SAE_THREADS`` (default 1).
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
from lmlens_sae.activations import ShuffledBuffer, make_windows, stream_activations  # noqa: E402
from lmlens_sae.fit import evaluate  # noqa: E402
from lmlens_sae.methods import DEFAULT_SAE  # noqa: E402
from lmlens_sae.metrics import activation_metrics  # noqa: E402
from lmlens_sae.record import SAERecord  # noqa: E402
from lmlens_sae.train import TrainConfig, Trainer  # noqa: E402

from lmlens import Analyzer, data_provenance, model_fingerprint  # noqa: E402
from lmlens.artifacts import write_artifact  # noqa: E402

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


def extract(source: str) -> None:
    """Activations of the training texts of ``source`` -> WORK/acts_<source>.npy (float16)."""
    loaded = _loaded()
    WORK.mkdir(parents=True, exist_ok=True)
    train_texts = corpus.load("train", source)
    windows = make_windows(loaded, train_texts, 128)
    order = np.random.default_rng(0).permutation(len(windows)).tolist()
    d = loaded.info.d_model
    limit = min(N_TOKENS, windows.usable)
    out = np.lib.format.open_memmap(WORK / f"acts_{source}.npy", mode="w+", dtype=np.float16, shape=(limit, d))
    n = 0
    started = time.time()
    for _, acts in stream_activations(loaded, windows, POINT, batch_windows=16, order=order):
        take = min(limit - n, acts.shape[0])
        out[n:n + take] = acts[:take].numpy().astype(np.float16)
        n += take
        print(f"extract {source} {n}/{limit} tokens, {n / (time.time() - started):.0f} tok/s", flush=True)
        if n >= limit:
            break
    out.flush()
    held = make_windows(loaded, corpus.load("held_out", source), 128)
    chunks, m = [], 0
    for _, acts in stream_activations(loaded, held, POINT, batch_windows=16):
        chunks.append(acts.numpy().astype(np.float16))
        m += acts.shape[0]
        if m >= 2048:
            break
    np.save(WORK / f"held_out_{source}.npy", np.concatenate(chunks)[:2048])
    (WORK / f"extract_{source}.json").write_text(json.dumps({
        "tokens": n, "windows_available": len(windows), "usable_tokens_available": windows.usable,
        "seconds": round(time.time() - started, 1), "texts": len(train_texts),
        "provenance": data_provenance(train_texts),
    }))


def _disk_stream(parts: list[np.ndarray], epoch: int, chunk: int = 4096):  # type: ignore[no-untyped-def]
    """Chunks of the cached activations (all parts) in a fresh random order per epoch."""
    starts = [(p, s) for p, acts in enumerate(parts) for s in range(0, acts.shape[0], chunk)]
    order = np.random.default_rng(100 + epoch).permutation(len(starts))
    for i, j in enumerate(order):
        p, s = starts[j]
        yield i, torch.from_numpy(np.asarray(parts[p][s:s + chunk], dtype=np.float32))


SOURCES = ("pydoc", "generations")


def _parts(prefix: str) -> dict[str, np.ndarray]:
    return {s: np.load(WORK / f"{prefix}_{s}.npy", mmap_mode="r") for s in SOURCES
            if (WORK / f"{prefix}_{s}.npy").is_file()}


def train() -> None:
    torch.set_num_threads(int(os.environ.get("SAE_THREADS", "1")))
    parts = list(_parts("acts").values())
    helds = {s: torch.from_numpy(np.asarray(a, dtype=np.float32)) for s, a in _parts("held_out").items()}
    n_distinct = sum(p.shape[0] for p in parts)
    d = parts[0].shape[1]
    cfg = CONFIG
    cfg.total_tokens = n_distinct * EPOCHS
    trainer = Trainer(cfg, d)
    first = ShuffledBuffer(d, budget_bytes=64 << 20, batch_size=8192, seed=0)
    sample = next(iter(first.batches(_disk_stream(parts, 0))))
    trainer.initialize(sample)
    curve = []
    started = time.time()
    every = max(1, cfg.total_steps // 12)
    for epoch in range(EPOCHS):
        buffer = ShuffledBuffer(d, budget_bytes=64 << 20, batch_size=cfg.batch_size, seed=epoch)
        for batch in buffer.batches(_disk_stream(parts, epoch)):
            if trainer.state.tokens >= cfg.total_tokens:
                break
            stats = trainer.step(batch)
            if stats.step % every == 0 or stats.tokens >= cfg.total_tokens:
                row = {"tokens": stats.tokens, "step": stats.step, "train_loss": stats.loss,
                       "train_dead_fraction": stats.dead_fraction, "seconds": round(time.time() - started, 1)}
                for source, held in helds.items():
                    m = activation_metrics(trainer.sae, held)
                    row[f"held_out_{source}_ev"] = m["explained_variance"]
                    row[f"held_out_{source}_l0"] = m["l0"]
                    row[f"held_out_{source}_dead_fraction"] = m["dead_fraction"]
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
        "distinct_tokens": n_distinct, "train_dense_fraction": trainer.dense_fraction(),
    }))


def evaluate_and_package() -> None:
    """Held-out metrics per source (pydoc, generations), packaged as float16 with the curve."""
    import shutil

    from safetensors.numpy import load_file

    loaded = _loaded()
    info = json.loads((WORK / "train.json").read_text())
    extracted = {s: json.loads((WORK / f"extract_{s}.json").read_text()) for s in SOURCES
                 if (WORK / f"extract_{s}.json").is_file()}
    cfg = TrainConfig(**info["config"])
    trainer = Trainer(cfg, loaded.info.d_model)
    tensors = load_file(str(WORK / "final.safetensors"))
    trainer.load_state({"step": info["steps"], "tokens": info["tokens_trained"]}, tensors)
    sae = trainer.sae.eval()
    with torch.no_grad():  # evaluate what ships: float16 weights
        for p in sae.parameters():
            p.copy_(p.half().float())
    started = time.time()
    metrics: dict = {}
    densities = []
    eval_tokens = int(os.environ.get("SAE_EVAL", "2048"))
    for source in extracted:
        windows = make_windows(loaded, corpus.load("held_out", source), 128)
        found, density = evaluate(loaded, sae, POINT, windows, evaluate_ce=True, max_tokens=eval_tokens)
        metrics.update({k.replace("eval_", f"eval_{source}_", 1): v for k, v in found.items()})
        densities.append((found["eval_tokens"], density))
    # the headline numbers: token-weighted over both held-out sources
    total = sum(n for n, _ in densities)
    density = sum(n * d for n, d in densities) / total
    for key in ("explained_variance", "l0", "ce_loss_recovered", "kl_div", "mse"):
        values = [(metrics.get(f"eval_{s}_tokens", 0), metrics.get(f"eval_{s}_{key}")) for s in extracted]
        if all(v is not None for _, v in values):
            metrics[f"eval_{key}"] = round(sum(n * v for n, v in values) / sum(n for n, _ in values), 6)
    metrics["eval_dead_fraction"] = float((density == 0).mean())
    metrics["eval_tokens"] = total
    metrics.update({
        "train_tokens": info["tokens_trained"], "train_distinct_tokens": info["distinct_tokens"],
        "train_epochs": info["epochs"], "train_steps": info["steps"], "train_seconds": info["seconds"],
        "extract_seconds": round(sum(e["seconds"] for e in extracted.values()), 1),
        "eval_seconds": round(time.time() - started, 1), "train_dense_fraction": info["train_dense_fraction"],
    })
    record = SAERecord(
        name=DEFAULT_SAE, sae=sae, point=POINT, model=model_fingerprint(loaded), model_name=loaded.name,
        metrics=metrics, density=density.astype(np.float32),
        extra={"train": info["config"], "corpus": "pydoc_data topics + SmolLM2-135M-Instruct generations "
               "(plugins/sae/scripts/corpus.py)", "curve": info["curve"]},
        provenance={"sources": {s: e["provenance"] for s, e in extracted.items()},
                    "script": "plugins/sae/scripts/train_default.py"},
    )
    artifact = record.to_artifact(dtype=np.float16)
    shutil.rmtree(PACKAGE, ignore_errors=True)
    write_artifact(artifact, PACKAGE)
    METRICS.write_text(json.dumps({"metrics": metrics, "curve": info["curve"]}, indent=1))
    write_readme_table(metrics, info["curve"])
    print(json.dumps(metrics, indent=1))
    size = sum(p.stat().st_size for p in PACKAGE.iterdir())
    print(f"packaged {PACKAGE} ({size / 1e6:.1f} MB)")


README = HERE.parent / "README.md"
START, END = "<!-- default-metrics:start -->", "<!-- default-metrics:end -->"


def write_readme_table(metrics: dict, curve: list[dict]) -> None:
    """The README's numbers of the default, written from the stored metrics (a test compares them)."""
    rows = [
        ("explained variance", "eval_explained_variance"), ("L0", "eval_l0"),
        ("dead fraction", "eval_dead_fraction"), ("CE loss recovered", "eval_ce_loss_recovered"),
        ("KL", "eval_kl_div"),
    ]
    lines = [START, "", "| held-out metric (both sources, token-weighted) | value |", "|---|---|"]
    lines += [f"| {label} | {metrics[key]:.3f} |" for label, key in rows]
    lines += ["", "| per source | EV | L0 | CE recovered | KL | CE clean / SAE / zero |", "|---|---|---|---|---|---|"]
    for source in SOURCES:
        if f"eval_{source}_explained_variance" in metrics:
            prefix = f"eval_{source}_"
            m = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
            lines.append(f"| {source} ({m['tokens']} tokens) | {m['explained_variance']:.3f} | {m['l0']:.1f} | "
                         f"{m['ce_loss_recovered']:.3f} | {m['kl_div']:.3f} | "
                         f"{m['ce_clean']:.2f} / {m['ce_sae']:.2f} / {m['ce_zero_ablation']:.2f} |")
    lines += ["", "EV against tokens trained (held-out activations, checkpoints of the same run):", "",
              "| tokens | epoch | EV pydoc | EV generations | L0 | dead (held-out) |", "|---|---|---|---|---|---|"]
    distinct = metrics["train_distinct_tokens"]
    for row in curve:
        nan = float("nan")
        lines.append(f"| {row['tokens']} | {row['tokens'] / distinct:.1f} | {row.get('held_out_pydoc_ev', nan):.3f} | "
                     f"{row.get('held_out_generations_ev', nan):.3f} | {row.get('held_out_pydoc_l0', 0):.1f} | "
                     f"{row.get('held_out_pydoc_dead_fraction', 0):.3f} |")
    lines += ["", END]
    text = README.read_text()
    a, b = text.index(START), text.index(END) + len(END)
    README.write_text(text[:a] + "\n".join(lines) + text[b:])


if __name__ == "__main__":
    stage = sys.argv[1] if len(sys.argv) > 1 else "all"
    if stage in ("extract", "all"):
        for source in ([sys.argv[2]] if len(sys.argv) > 2 else SOURCES):
            extract(source)
    if stage in ("train", "all"):
        train()
    if stage in ("evaluate", "all"):
        evaluate_and_package()
    if stage == "readme":
        stored = json.loads(METRICS.read_text())
        write_readme_table(stored["metrics"], stored["curve"])
