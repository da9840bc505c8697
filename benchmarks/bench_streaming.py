"""Streaming benchmarks on smollm2-135m: flat memory, linear time, honest estimates.

    python benchmarks/bench_streaming.py [--lengths 2048 8192 32768] [--methods attention importance]

Each case runs in a fresh subprocess: load the model, warm up, note the resident
memory, reset the peak (Linux /proc/self/clear_refs), stream the document without
keeping the windows, then read the peak. "increase" is peak minus the loaded model's
resident memory; the estimate is lmlens' own, made before the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASE = r"""
import gc, json, sys, time
args = json.loads(sys.argv[1])
from lmlens import Analyzer

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

analyzer = Analyzer("smollm2-135m")
loaded = analyzer.model
words = ("interpretability attention residual stream head layer token model document window memory "
         "stride estimate the of and a to in is that it for on with as was").split()
import random
rng = random.Random(0)
text = " ".join(rng.choice(words) for _ in range(args["tokens"] * 2))
ids = loaded.tokenizer(text, add_special_tokens=False).input_ids[: args["tokens"]]
text = loaded.tokenizer.decode(ids)
params = {"attention": {"patterns": args["patterns"]}} if "attention" in args["methods"] else {}
for method, extra in args.get("params", {}).items():
    if method in args["methods"]:
        params.setdefault(method, {}).update(extra)
# warm up on a short text: lazy imports and one-time allocations join the baseline, window-sized buffers do not
list(analyzer.analyze_document_streaming(text[:100], methods=args["methods"], params=params,
                                         window_size=args["window"], stride=args["stride"]))
gc.collect()
baseline = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
stream = analyzer.analyze_document_streaming(text, methods=args["methods"], params=params,
                                             window_size=args["window"], stride=args["stride"])
estimate = stream.estimate.memory_estimate_gb
start = time.perf_counter()
n = 0
for window in stream:
    n += 1
elapsed = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({"tokens": len(stream.ids), "windows": n, "seconds": elapsed, "baseline_gb": baseline / 2**30,
                  "peak_gb": peak / 2**30, "increase_gb": (peak - baseline) / 2**30,
                  "estimate_gb": estimate.total_gb - estimate.weights_gb}))
"""


# one gradient pass per window: what a document-wide importance map costs
IMPORTANCE_PARAMS = {"importance": {"method": "gradient", "target": "loss", "faithfulness": False}}


def run_case(**args) -> dict:
    out = subprocess.run([sys.executable, "-c", CASE, json.dumps(args)], capture_output=True, text=True,
                         env=os.environ.copy())
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--methods", nargs="+", default=["attention", "importance"])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--skip-estimates", action="store_true")
    parser.add_argument("--skip-lengths", action="store_true")
    args = parser.parse_args()

    print(f"streaming {args.methods} (attention summaries, importance by gradient), window {args.window}, "
          f"stride {args.stride}")
    rows = []
    for n in [] if args.skip_lengths else args.lengths:
        row = run_case(tokens=n, methods=args.methods, patterns=False, window=args.window, stride=args.stride,
                       params=IMPORTANCE_PARAMS)
        rows.append(row)
        print(f"  {row['tokens']:>6} tokens, {row['windows']:>3} windows: {row['seconds']:7.1f} s, "
              f"loaded model {row['baseline_gb']:.2f} GB, peak {row['peak_gb']:.2f} GB "
              f"(+{row['increase_gb']:.3f} GB; estimate +{row['estimate_gb']:.3f} GB)")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(f"peak growth {first['tokens']} -> {last['tokens']} tokens: "
              f"{(last['peak_gb'] / first['peak_gb'] - 1) * 100:+.1f}%")
        by_tokens = {r["tokens"]: r for r in rows}
        if 8192 in by_tokens and 32768 in by_tokens:
            ratio = by_tokens[32768]["seconds"] / by_tokens[8192]["seconds"]
            print(f"time 32k / 8k: {ratio:.2f} (linear would be 4.0)")

    if args.skip_estimates:
        return
    print("estimate vs measured peak increase over the loaded model:")
    cases = [
        dict(tokens=1024, methods=["attention"], patterns=False, window=512, stride=256),
        dict(tokens=1024, methods=["attention"], patterns=True, window=512, stride=512),
        dict(tokens=2048, methods=["attention", "surprisal"], patterns=True, window=1024, stride=1024),
        dict(tokens=1024, methods=["attention", "importance"], patterns=False, window=512, stride=512,
             params=IMPORTANCE_PARAMS),
        dict(tokens=2048, methods=["attention"], patterns=True, window=2048, stride=2048),
    ]
    for case in cases:
        row = run_case(**case)
        error = row["estimate_gb"] / row["increase_gb"] - 1
        print(f"  {case['methods']} patterns={case['patterns']} window {case['window']}: measured "
              f"+{row['increase_gb']:.3f} GB, estimated +{row['estimate_gb']:.3f} GB ({error * 100:+.0f}%)")


if __name__ == "__main__":
    main()
