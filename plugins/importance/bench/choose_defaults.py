"""Which attribution should ``method="auto"`` run on a model? Convergence and faithfulness, measured.

For each prompt and configuration: the IG relative convergence delta, ERASER's AOPC
comprehensiveness and sufficiency (tokens deleted, in probabilities: comparable with
published tables; and tokens replaced, in nats), whether the deletion curve beats random
orders, and the time. Prints one Markdown row per configuration (means over prompts).
Run by hand on an idle machine (about 5 minutes on two cores for smollm2-135m):

    LMLENS_CACHE_DIR=... nice python -u plugins/importance/bench/choose_defaults.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from lmlens import Analyzer

PROMPTS = [
    "The capital of France is Paris, and the capital of Italy is",
    "When Mary and John went to the store, John gave a drink to",
    "The cat sat on the mat because it was",
    "She opened the door, looked outside and saw that the rain had",
    "One, two, three, four, five,",
]
CONFIGS: dict[str, dict[str, Any]] = {
    "gradient": {"method": "gradient"},
    "gradient_x_input": {"method": "gradient_x_input"},
    "occlusion": {"method": "occlusion"},
    "IG zero 32 GL": {"method": "integrated_gradients", "baseline": "zero", "steps": 32},
    "IG pad 32 GL": {"method": "integrated_gradients", "baseline": "pad", "steps": 32},
    "IG pad spherical 64 GL": {
        "method": "integrated_gradients", "baseline": "pad", "path": "spherical", "steps": 64,
    },
}


def measure(analyzer: Analyzer, text: str, params: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    found: Any = analyzer.analyze(text, methods=["importance"], params={"importance": params}, use_cache=False)
    elapsed = time.perf_counter() - started
    imp = found.methods["importance"]
    faith = imp.faithfulness
    deleted = faith.erasure("delete", "probability")
    replaced = faith.erasure("replace", "target")
    return {
        "seconds": elapsed,
        "relative_delta": None if imp.convergence is None else imp.convergence.relative_delta,
        "unreliable": imp.unreliable,
        "comp_del_p": deleted.aopc_comprehensiveness,
        "suff_del_p": deleted.aopc_sufficiency,
        "comp_rep_nats": replaced.aopc_comprehensiveness,
        "suff_rep_nats": replaced.aopc_sufficiency,
        "beats_random": faith.beats_random,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--json", default=None, help="also write every row here")
    args = parser.parse_args()
    analyzer = Analyzer(args.model)
    rows = {}
    print(f"{args.model}: {args.prompts} prompts")
    print("| configuration | IG relative delta (mean, max) | unreliable | AOPC comp, deleted, p | "
          "AOPC suff, deleted, p | AOPC comp, replaced, nats | AOPC suff, replaced, nats | beats random | s/call |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        runs = [measure(analyzer, text, CONFIGS[name]) for text in PROMPTS[: args.prompts]]
        rows[name] = runs
        deltas = [r["relative_delta"] for r in runs if r["relative_delta"] is not None]
        delta = f"{np.mean(deltas):.0%}, {np.max(deltas):.0%}" if deltas else "-"

        def mean(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(np.mean([r[key] for r in runs]))

        print(
            f"| {name} | {delta} | {sum(r['unreliable'] for r in runs)}/{len(runs)} | {mean('comp_del_p'):.3f} | "
            f"{mean('suff_del_p'):.3f} | {mean('comp_rep_nats'):.2f} | {mean('suff_rep_nats'):.2f} | "
            f"{sum(bool(r['beats_random']) for r in runs)}/{len(runs)} | {mean('seconds'):.1f} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
