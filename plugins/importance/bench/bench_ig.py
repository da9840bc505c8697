"""Integrated gradients on smollm2-135m: Captum's LayerIntegratedGradients vs lmlens, side by side.

Same model, text (128 tokens), target (log-probability of the top next token), baseline
(pad token at every position), 50 Gauss-Legendre steps. Each run is its own subprocess,
so its peak resident memory (ru_maxrss) is its own; the two implementations alternate
run by run so a change in machine load hits both. Captum runs as a user would call it:
the model as loaded, every step in one batch (internal_batch_size=None).

    LMLENS_CACHE_DIR=/tmp/lmcache python plugins/importance/bench/bench_ig.py [--repeats 3]

Prints per-run numbers, then medians and ratios. Target (issue 4): lmlens at least
1.5x faster, and peak memory under 2 GB above the loaded model.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PARAGRAPH = (
    "The old harbour town woke slowly. Fishermen mended their nets while the bakery on the corner "
    "filled the street with the smell of bread, and children ran down to the water to watch the "
    "boats come in. Nobody remembered who had built the lighthouse, but everyone agreed it was "
)


def _rss_now_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(impl: str, tokens: int, steps: int, budget_mb: float, threads: int) -> dict[str, object]:
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    from lmlens import Analyzer, Trace

    torch.manual_seed(0)
    analyzer = Analyzer("smollm2-135m")
    loaded = analyzer.model
    ids, toks = analyzer.tokenize(loaded, PARAGRAPH * 4)
    text = (PARAGRAPH * 4)[: toks[tokens - 1].end]
    ids, toks = analyzer.tokenize(loaded, text)
    assert ids.shape[1] == tokens, ids.shape
    model = loaded.model
    with torch.inference_mode():
        token = int(model(ids).logits[0, -1].argmax())
    loaded_rss = _rss_now_mb()
    started = time.perf_counter()
    if impl == "captum":
        from captum.attr import LayerIntegratedGradients

        def forward(batch_ids: torch.Tensor) -> torch.Tensor:
            return model(input_ids=batch_ids).logits[:, -1].log_softmax(-1)[:, token]

        lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        baseline = torch.full_like(ids, loaded.tokenizer.pad_token_id)
        attr = lig.attribute(ids, baselines=baseline, n_steps=steps, method="gausslegendre")
        scores = attr.sum(-1)[0].detach().double().numpy()
        batch = steps
    else:
        from lmlens_importance import ImportanceParams, run_importance

        trace = Trace(model=loaded, text=text, tokens=toks, input_ids=ids, activations={})
        params = ImportanceParams(
            baseline="pad", steps=steps, target_token=None, faithfulness=False, memory_budget_mb=budget_mb
        )
        result = run_importance(trace, params)
        assert result.target.token_ids == [token]
        scores = result.scores.astype(np.float64)
        batch = result.batch_size
    seconds = time.perf_counter() - started
    return {
        "impl": impl,
        "seconds": seconds,
        "peak_mb": _peak_mb(),
        "loaded_mb": loaded_rss,
        "batch": batch,
        "scores": scores.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--budget-mb", type=float, default=1024.0)
    # On a shared machine, two OpenMP threads per process swing 10x with the neighbours'
    # load (measured: 5.7 s to 54.5 s for the same run); one thread each is stable.
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: default)")
    parser.add_argument("--worker", choices=["captum", "lmlens"])
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.steps, args.budget_mb, args.threads)))
        return
    runs: dict[str, list[dict[str, object]]] = {"captum": [], "lmlens": []}
    for repeat in range(args.repeats):
        for impl in ("captum", "lmlens"):
            out = (
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        impl,
                        "--tokens",
                        str(args.tokens),
                        "--steps",
                        str(args.steps),
                        "--budget-mb",
                        str(args.budget_mb),
                        "--threads",
                        str(args.threads),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            run = json.loads(out)
            runs[impl].append(run)
            print(
                f"run {repeat + 1} {impl:7} {run['seconds']:7.2f} s  peak {run['peak_mb']:7.0f} MB  "
                f"loaded {run['loaded_mb']:6.0f} MB  batch {run['batch']}",
                flush=True,
            )
    import numpy as np

    medians = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    peaks = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
    above = {k: max(r["peak_mb"] - r["loaded_mb"] for r in v) for k, v in runs.items()}
    r = np.corrcoef(runs["captum"][0]["scores"], runs["lmlens"][0]["scores"])[0, 1]
    threads = args.threads or "default"
    print(
        f"\n{args.tokens} tokens, {args.steps} Gauss-Legendre steps, pad baseline, smollm2-135m, "
        f"torch threads: {threads}"
    )
    print(f"{'':8} {'median s':>9} {'peak RSS MB':>12} {'above loaded MB':>16}")
    for k in ("captum", "lmlens"):
        print(f"{k:8} {medians[k]:9.2f} {peaks[k]:12.0f} {above[k]:16.0f}")
    print(f"speed-up (captum / lmlens median time): {medians['captum'] / medians['lmlens']:.2f}x")
    print(f"peak memory ratio (captum / lmlens): {peaks['captum'] / peaks['lmlens']:.2f}x")
    print(f"Pearson r between the two attributions: {r:.5f}")


if __name__ == "__main__":
    main()
