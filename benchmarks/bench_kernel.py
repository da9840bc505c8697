"""Kernel benchmarks: load times of smollm2-135m, and the cost of analyze() over a bare pass.

    python benchmarks/bench_kernel.py [--repeats 5] [--tokens 512]

Prints medians and ratios measured side by side in one process (this machine is noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

LOAD_PROBE = """
import json, time
t0 = time.perf_counter()
from lmlens import Analyzer
t1 = time.perf_counter()
analyzer = Analyzer("smollm2-135m")
model = analyzer.model
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""

PARAGRAPH = (
    "Interpretability research asks what a trained network computes and why. Attention heads "
    "move information between positions; some copy the previous token, some complete patterns "
    "they have seen before, and many attend to the first token when they have nothing to do. "
)


def load_times(cache_dir: str) -> dict[str, float]:
    env_cmd = [sys.executable, "-c", LOAD_PROBE]
    import os

    env = {**os.environ, "LMLENS_CACHE_DIR": cache_dir}
    out = subprocess.run(env_cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def text_of_tokens(tokenizer, n: int) -> str:
    ids = tokenizer(PARAGRAPH * (n // 40 + 2)).input_ids[:n]
    text = tokenizer.decode(ids)
    assert len(tokenizer(text).input_ids) == n, "re-tokenisation changed the length"
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()

    if not args.skip_load:
        with tempfile.TemporaryDirectory() as fresh:
            first = load_times(fresh)  # converts the GGUF into the empty cache
            second = load_times(fresh)
        print(f"smollm2-135m first load (GGUF conversion): {first['load_s']:.2f} s")
        print(f"smollm2-135m second load: {second['load_s']:.2f} s "
              f"(plus {second['import_s']:.2f} s to import lmlens)")

    import torch

    from lmlens import Analyzer

    analyzer = Analyzer("smollm2-135m")
    loaded = analyzer.model
    text = text_of_tokens(loaded.tokenizer, args.tokens)
    input_ids = loaded.tokenizer(text, return_tensors="pt").input_ids

    def bare() -> None:
        loaded.set_eager_attention(True)
        with torch.inference_mode():
            loaded.model(input_ids, output_attentions=True)

    def lmlens() -> None:
        analyzer.analyze(text, methods=["attention"], use_cache=False)

    def prepare() -> None:
        analyzer.prepare(text, ["attention"])

    bare()
    lmlens()  # warm-up
    times: dict[str, list[float]] = {"bare": [], "lmlens": [], "prepare": []}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("lmlens", lmlens), ("prepare", prepare)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.tokens} tokens, median of {args.repeats} (interleaved):")
    print(f"  bare model(input_ids, output_attentions=True): {med['bare'] * 1000:.0f} ms")
    print(f"  Analyzer.analyze(methods=['attention']):        {med['lmlens'] * 1000:.0f} ms")
    print(f"  ratio lmlens / bare: {med['lmlens'] / med['bare']:.3f}")
    print(f"  Analyzer.prepare (validate, plan, tokenize, estimate): {med['prepare'] * 1000:.1f} ms "
          f"= {med['prepare'] / med['bare']:.3%} of the bare pass")
    print("  raw:", {k: [round(x * 1000) for x in v] for k, v in times.items()})


if __name__ == "__main__":
    main()
