"""Benchmark the SAE plugin, side by side on the same activations.

1. Training throughput (tokens/s), 576 -> 4608, batch 4096, Adam, one process, interleaved:
   - lmlens TopK (k=32: sparse encoder gradient + embedding_bag decode, AuxK bookkeeping);
   - a plain PyTorch loop of the same architecture (dense TopK, MSE, Adam, unit-norm decoder);
   - lmlens TopK with the dense decode (the path it replaced);
   - lmlens ReLU and BatchTopK beside a plain ReLU loop;
   - SAELens 6 TopK when ``--saelens PYTHON`` names an interpreter that has sae_lens (it runs in
     that process on the same activations saved to a temporary .npy).
2. TopK decode alone, forward and forward+backward: embedding_bag over the k active latents
   vs the dense [N, d_sae] x [d_sae, d_in] matmul vs a naive gather + einsum.
3. ``sae_features`` on 512 tokens of smollm2-135m with the shipped default vs the bare forward
   pass (``model(input_ids)``), medians of interleaved runs (goal: <= 1.2x).
4. The activation buffer's bytes against its budget.

Activations: real SmolLM2-135M blocks.15.resid_post activations of the stdlib's pydoc topics
(extracted here through ``run_forward``; ``--tokens``), or the default's training cache when
``SAE_WORK`` holds one. Run:
    LMLENS_CACHE_DIR=... python plugins/sae/bench/bench_sae.py [--threads 1] [--steps 4] [--saelens PY]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lmlens_sae.activations import ShuffledBuffer, make_windows, stream_activations
from lmlens_sae.train import TrainConfig, Trainer
from torch.nn import functional as F

from lmlens import Analyzer

D_SAE, K, BATCH = 4608, 32, 4096


def real_activations(analyzer: Analyzer, n: int) -> torch.Tensor:
    work = Path(os.environ.get("SAE_WORK", "/tmp/lmlens-sae-default"))
    cached = work / "acts_pydoc.npy"
    if cached.is_file():
        acts = np.load(cached, mmap_mode="r")
        if acts.shape[0] >= n:
            return torch.from_numpy(np.asarray(acts[:n], dtype=np.float32))
    import pydoc_data.topics

    loaded = analyzer.load_model()
    windows = make_windows(loaded, [b for _, b in sorted(pydoc_data.topics.topics.items())], 128)
    chunks, got = [], 0
    for _, acts in stream_activations(loaded, windows, "blocks.15.resid_post"):
        chunks.append(acts)
        got += acts.shape[0]
        if got >= n:
            break
    return torch.cat(chunks)[:n]


class PlainTopK(torch.nn.Module):
    """The reference loop: what one writes from the paper in a few lines."""

    def __init__(self, d_in: int) -> None:
        super().__init__()
        w = torch.randn(D_SAE, d_in)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w)
        self.W_enc = torch.nn.Parameter(w.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(D_SAE))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def forward(self, x: torch.Tensor, relu_only: bool = False) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        if relu_only:
            f = F.relu(pre)
        else:
            v, i = pre.topk(K, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, i, F.relu(v))
        return f @ self.W_dec + self.b_dec, f


def plain_step_fn(x: torch.Tensor, relu: bool) -> Callable[[torch.Tensor], None]:
    model = PlainTopK(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)

    def step(batch: torch.Tensor) -> None:
        recon, f = model(batch, relu_only=relu)
        loss = (recon - batch).pow(2).mean()
        if relu:
            loss = loss + 1e-3 * (f * model.W_dec.norm(dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not relu:
            with torch.no_grad():
                model.W_dec /= model.W_dec.norm(dim=1, keepdim=True)

    return step


def lmlens_step_fn(x: torch.Tensor, arch: str, *, sparse: bool = True) -> Callable[[torch.Tensor], None]:
    cfg = TrainConfig(architecture=arch, d_sae=D_SAE, k=K, batch_size=BATCH, total_tokens=10**12)
    trainer = Trainer(cfg, x.shape[1])
    trainer.initialize(x[:4096])
    trainer.sae.sparse_decode = sparse and arch == "topk"
    return lambda batch: trainer.step(batch) and None


def measure(steps: dict[str, Callable[[torch.Tensor], None]], x: torch.Tensor, n: int) -> dict[str, float]:
    """Median seconds per step, the contenders interleaved step by step."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    batches = [x[(i * BATCH) % (len(x) - BATCH):][:BATCH] for i in range(n + 1)]
    for step in steps.values():  # warm-up
        step(batches[0])
    for i in range(1, n + 1):
        for name, step in steps.items():
            started = time.perf_counter()
            step(batches[i])
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


SAELENS_SCRIPT = textwrap.dedent("""
    import sys, time, statistics, json, numpy as np, torch
    torch.set_num_threads(int(sys.argv[3]))
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    x = torch.from_numpy(np.load(sys.argv[1]))
    n = int(sys.argv[2])
    cfg = TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=%d, k=%d, dtype="float32", device="cpu")
    sae = TopKTrainingSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    B = %d
    times = []
    for i in range(n + 1):
        batch = x[(i * B) %% (len(x) - B):][:B]
        t = time.perf_counter()
        out = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients={},
                                                       dead_neuron_mask=None, n_training_steps=i,
                                                       is_logging_step=False))
        opt.zero_grad(); out.loss.backward(); opt.step()
        if i:
            times.append(time.perf_counter() - t)
    print(json.dumps({"seconds_per_step": statistics.median(times), "version": __import__("sae_lens").__version__}))
""") % (D_SAE, K, BATCH)


def saelens_throughput(python: str, x: torch.Tensor, n: int, threads: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.npy"
        np.save(path, x.numpy())
        script = Path(tmp) / "run.py"
        script.write_text(SAELENS_SCRIPT)
        done = subprocess.run([python, str(script), str(path), str(n), str(threads)], capture_output=True,
                              text=True, timeout=1800, check=False)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def decode_bench(x: torch.Tensor, n: int) -> dict[str, float]:
    d = x.shape[1]
    w = torch.randn(D_SAE, d, requires_grad=True)
    pre = torch.randn(BATCH, D_SAE)
    vals, idx = pre.topk(K, dim=-1)
    vals = vals.relu().requires_grad_(True)
    dense_codes = torch.zeros(BATCH, D_SAE).scatter(-1, idx, vals.detach()).requires_grad_(True)

    def sparse() -> None:
        F.embedding_bag(idx, w, per_sample_weights=vals, mode="sum").sum().backward()

    def dense() -> None:
        (dense_codes @ w).sum().backward()

    def gather() -> None:
        torch.einsum("nk,nkd->nd", vals, w[idx]).sum().backward()

    def sparse_fwd() -> None:
        with torch.no_grad():
            F.embedding_bag(idx, w, per_sample_weights=vals, mode="sum")

    def dense_fwd() -> None:
        with torch.no_grad():
            dense_codes @ w

    out = {}
    for name, fn in (("sparse_fwd_bwd", sparse), ("dense_fwd_bwd", dense), ("gather_einsum_fwd_bwd", gather),
                     ("sparse_fwd", sparse_fwd), ("dense_fwd", dense_fwd)):
        fn()
        ts = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - started)
        out[name] = statistics.median(ts)
    return out


def features_bench(analyzer: Analyzer, n: int) -> dict[str, float]:
    loaded = analyzer.load_model()
    base = "The river rose through the night, and by morning the lower fields were under water. " * 60
    ids = loaded.tokenizer(base, add_special_tokens=False)["input_ids"][:512]
    text = loaded.tokenizer.decode(ids)
    input_ids = analyzer.tokenize(loaded, text)[0]

    def bare() -> None:
        with torch.inference_mode():
            loaded.model(input_ids=input_ids)

    def features() -> None:
        analyzer.analyze(text, methods=["sae_features"], use_cache=False)

    bare()
    features()
    a, b = [], []
    for _ in range(n):
        started = time.perf_counter()
        bare()
        a.append(time.perf_counter() - started)
        started = time.perf_counter()
        features()
        b.append(time.perf_counter() - started)
    return {"tokens": int(input_ids.shape[1]), "forward_s": statistics.median(a),
            "sae_features_s": statistics.median(b), "ratio": statistics.median(b) / statistics.median(a)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=3 * BATCH)
    parser.add_argument("--saelens", default=None, help="a python that has sae_lens installed")
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--topk-only", action="store_true", help="only TopK training throughput (and SAELens)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    analyzer = Analyzer(model="smollm2-135m")
    x = real_activations(analyzer, max(args.tokens, 2 * BATCH))
    print(f"activations: {tuple(x.shape)} real smollm2-135m blocks.15.resid_post; threads {args.threads}")

    per_step = measure({
        "lmlens topk (sparse)": lmlens_step_fn(x, "topk"),
        "plain pytorch topk": plain_step_fn(x, relu=False),
        "lmlens topk (dense decode)": lmlens_step_fn(x, "topk", sparse=False),
    }, x, args.steps)
    if not args.topk_only:
        per_step.update(measure({
            "lmlens relu": lmlens_step_fn(x, "relu"),
            "plain pytorch relu": plain_step_fn(x, relu=True),
            "lmlens batchtopk": lmlens_step_fn(x, "batchtopk"),
        }, x, args.steps))
    print("\n1. training throughput (tokens/s, median step, batch 4096, 576 -> 4608)")
    for name, seconds in per_step.items():
        print(f"  {name:28s} {BATCH / seconds:8.0f} tok/s  ({seconds * 1000:.0f} ms/step)")
    print(f"  topk: lmlens / plain = {per_step['plain pytorch topk'] / per_step['lmlens topk (sparse)']:.2f}x")
    if "lmlens relu" in per_step:
        print(f"  relu: lmlens / plain = {per_step['plain pytorch relu'] / per_step['lmlens relu']:.2f}x")
    if args.saelens:
        found = saelens_throughput(args.saelens, x, args.steps, args.threads)
        if "seconds_per_step" in found:
            s = float(found["seconds_per_step"])  # type: ignore[arg-type]
            # SAELens runs in its own process after ours: bracket it with a second lmlens measurement
            again = measure({"lmlens topk (sparse)": lmlens_step_fn(x, "topk")}, x, args.steps)
            ours = statistics.median([per_step["lmlens topk (sparse)"], again["lmlens topk (sparse)"]])
            print(f"  SAELens {found['version']} topk        {BATCH / s:8.0f} tok/s  ({s * 1000:.0f} ms/step); "
                  f"lmlens topk again {BATCH / again['lmlens topk (sparse)']:.0f} tok/s; "
                  f"lmlens / SAELens = {s / ours:.2f}x")
        else:
            print(f"  SAELens: {found}")
    else:
        print("  SAELens: not measured (pass --saelens PYTHON with sae_lens installed)")

    if args.topk_only:
        return
    dec = decode_bench(x, max(3, args.steps))
    print("\n2. TopK decode, batch 4096, k=32 (ms, median)")
    for name, seconds in dec.items():
        print(f"  {name:24s} {seconds * 1000:8.1f} ms")

    budget = 64 << 20
    buf = ShuffledBuffer(x.shape[1], budget_bytes=budget, batch_size=BATCH)
    print(f"\n4. buffer: {buf.nbytes / 2**20:.1f} MiB held for a {budget / 2**20:.0f} MiB budget "
          f"({'within' if buf.nbytes <= budget else 'OVER'})")

    if not args.skip_features:
        try:
            found = features_bench(analyzer, 5)
        except Exception as exc:
            print(f"\n3. sae_features: not measured ({type(exc).__name__}: {exc})")
        else:
            print(f"\n3. sae_features on {found['tokens']} tokens: {found['sae_features_s'] * 1000:.0f} ms vs bare "
                  f"forward {found['forward_s'] * 1000:.0f} ms -> {found['ratio']:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
