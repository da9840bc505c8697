"""The main job: analyse a sample text on the default model, print a summary, save JSON.

    python examples/quickstart.py [--model smollm2-135m] [--output out/quickstart.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lmlens import Analyzer, wire

SAMPLE = (
    "The cat sat on the mat. The dog sat on the rug. "
    "When the cat saw the dog, the cat ran away from the"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="alias or path (default: smollm2-135m)")
    parser.add_argument("--text", default=SAMPLE)
    parser.add_argument("--output", type=Path, default=Path("out/quickstart.json"))
    args = parser.parse_args()

    analyzer = Analyzer(args.model)
    methods = [m for m in ("attention", "surprisal") if m in analyzer.plugins.methods]
    started = time.perf_counter()
    loaded = analyzer.model
    print(f"loaded {loaded.name} ({loaded.info.family}, {loaded.info.n_layers} layers x "
          f"{loaded.info.n_heads} heads, {loaded.info.n_params / 1e6:.0f}M parameters) "
          f"in {time.perf_counter() - started:.1f} s")
    result = analyzer.analyze(args.text, methods=methods)
    print(f"analysed {len(result.tokens)} tokens with {', '.join(methods)}: "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items()))

    attention = result.methods["attention"]
    entropy = attention.entropy  # [layer, head]
    flat = np.argsort(entropy, axis=None)
    print("\nmost focused heads (lowest mean attention entropy, nats):")
    for index in flat[:5]:
        layer, head = np.unravel_index(index, entropy.shape)
        pattern = attention.patterns[layer, head]  # [q, k]
        target = result.tokens[int(pattern[-1].argmax())]
        print(f"  L{layer:>2} H{head}: entropy {entropy[layer, head]:.3f}; "
              f"the last token attends most to {target.text or target.piece!r}")
    if "surprisal" in result.methods:
        surprisal = result.methods["surprisal"]
        worst = int(np.nanargmax(surprisal.bits))
        print(f"\nmost surprising token: {result.tokens[worst].text!r} ({surprisal.bits[worst]:.1f} bits); "
              f"the model's next guess: {surprisal.next_token!r}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    encoded = wire.to_json(result)
    args.output.write_bytes(encoded)
    print(f"\nwrote {args.output} ({len(encoded) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
