"""Benchmark of the failure plugin on smollm2-135m (``tox -e bench`` / ``make bench``).

1. The tables of the shipped default predictor, as stored in its artifact by
   ``scripts/build_default.py``: out-of-fold on its own synthetic data, and
   leave-one-family-out, each against the majority class and 1 - max softmax.
   ``--fresh N`` also scores it on N newly generated prompts (another seed).
2. The cost of the ``failure`` method on a 64-token prompt against the bare forward
   pass (the model called directly, SDPA, with logits), interleaved, median of
   ``--repeats``. Goal: at most 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def tables(analyzer, fresh: int) -> None:  # type: ignore[no-untyped-def]
    from lmlens_failure.api import KIND
    from lmlens_failure.evaluate import format_table

    art = analyzer.load_artifact(KIND, "default")
    m = art.metrics
    print(f"default predictor: {m['n']} prompts, failure rate {m['failure_rate']:.2f}")
    print(format_table(m["random_split"]["overall"], "Held-out synthetic data (5-fold, out-of-fold)"))
    print()
    print(format_table(m["leave_one_family_out"]["pooled"], "Leave-one-family-out (pooled)"))
    print()
    print("Leave-one-family-out, AUROC per held-out family:")
    for fam, rows in m["leave_one_family_out"]["per_family"].items():
        cells = ", ".join(f"{k} {_num(v['auroc']):.3f}" for k, v in rows.items())
        print(f"  {fam} (n={rows['predictor']['n']}, failure rate {rows['predictor']['failure_rate']:.2f}): {cells}")
    print()
    print("Ablation (out-of-fold AUROC / Brier; leave-one-family-out pooled AUROC):")
    for name, row in m["random_split"]["ablation"].items():
        lofo = m["leave_one_family_out"]["ablation"][name]
        print(f"  {name:<18} {row['auroc']:.3f} / {row['brier']:.3f}   {lofo['auroc']:.3f}")
    if fresh:
        t0 = time.perf_counter()
        report = analyzer.evaluate_failure_predictor(fresh, predictor="default", seed=12345)
        print()
        print(format_table(report["overall"], f"Fresh prompts (seed 12345, {time.perf_counter() - t0:.0f}s)"))


def cost(analyzer, repeats: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    loaded = analyzer.model
    sentence = "The quick brown fox jumps over the lazy dog while the small cat sleeps on the warm mat. "
    text = sentence * 8
    ids = loaded.tokenizer(text)["input_ids"][:64]
    text = loaded.tokenizer.decode(ids)
    n = len(analyzer.tokenize(loaded, text)[1])

    def bare() -> None:
        with torch.inference_mode():
            loaded.model(input_ids=torch.tensor([ids]), use_cache=False)

    def failure() -> None:
        analyzer.analyze(text, ["failure"], use_cache=False)

    for fn in (bare, failure):  # warm up
        fn()
    times: dict[str, list[float]] = {"bare": [], "failure": []}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("failure", failure)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\ncost on {n} tokens ({torch.get_num_threads()} threads, median of {repeats}): bare forward "
        f"{med['bare'] * 1000:.1f} ms, failure {med['failure'] * 1000:.1f} ms -> {med['failure'] / med['bare']:.2f}x"
    )
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--fresh", type=int, default=0, help="also score the default on N new prompts")
    parser.add_argument("--json", default=None, help="write the timings here")
    args = parser.parse_args()
    from lmlens import Analyzer

    analyzer = Analyzer(os.environ.get("LMLENS_BENCH_MODEL", "smollm2-135m"))
    tables(analyzer, args.fresh)
    med = cost(analyzer, args.repeats)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(med, handle)


if __name__ == "__main__":
    main()
