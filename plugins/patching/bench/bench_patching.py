"""Activation patching on smollm2-135m: the causal-tracing example, batched vs a hand loop.

Clean "The Eiffel Tower is in the city of" / corrupted "The Colosseum is in the city of",
target logit(" Paris") - logit(" Rome") at the last position. Times the method (residual
grid, and with per-head restoration) and the un-batched reference a user writes by hand
(one pass per layer x position, each with one patch), checks they agree, and prints the
cells that light up. Then one contrastive steering run with a short continuation.

    LMLENS_CACHE_DIR=/work/.lmlens-cache nice python plugins/patching/bench/bench_patching.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"


def hand_loop(loaded, clean_ids, corrupted_ids, correct: int, wrong: int) -> np.ndarray:
    import torch

    from lmlens import Need, Patch, run_forward

    n_layers, n_pos = loaded.info.n_layers, clean_ids.shape[1]
    saved = run_forward(loaded, [Need(f"blocks.{i}.resid_pre") for i in range(n_layers)], input_ids=clean_ids)
    grid = np.zeros((n_layers, n_pos))
    for layer in range(n_layers):
        clean = saved[f"blocks.{layer}.resid_pre"]
        for pos in range(n_pos):

            def swap(x: torch.Tensor, ctx, clean=clean, pos=pos) -> torch.Tensor:
                x = x.clone()
                x[:, pos] = clean[:, pos]
                return x

            logits = run_forward(loaded, [Need("logits")], input_ids=corrupted_ids,
                                 patches=[Patch(f"blocks.{layer}.resid_pre", swap)])["logits"][0, -1].double()
            grid[layer, pos] = float(logits[correct] - logits[wrong])
    return grid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lmlens import Analyzer
    from lmlens_patching.targets import encode

    analyzer = Analyzer("smollm2-135m")
    loaded = analyzer.model
    params = {"corrupted_text": CORRUPTED, "correct": " Paris", "wrong": " Rome"}
    analyzer.analyze(CLEAN, "activation_patching", {"activation_patching": {**params, "layers": [0]}},
                     use_cache=False)  # warm-up
    timings: dict[str, list[tuple[float, float]]] = {"resid": [], "resid+heads": [], "hand loop": []}

    def timed(name: str, fn):  # wall and process CPU seconds: CPU time says more on a busy machine
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        print(f"  {name}: wall {timings[name][-1][0]:.2f} s, CPU {timings[name][-1][1]:.2f} s", flush=True)
        return out

    for _ in range(args.repeats):
        ap = timed("resid", lambda: analyzer.analyze(
            CLEAN, "activation_patching", {"activation_patching": params}, use_cache=False
        ).methods["activation_patching"])
        heads = timed("resid+heads", lambda: analyzer.analyze(
            CLEAN, "activation_patching", {"activation_patching": {**params, "per_head": True}}, use_cache=False
        ).methods["activation_patching"])
    clean_ids, corrupted_ids = encode(loaded, CLEAN), encode(loaded, CORRUPTED)
    reference = timed("hand loop", lambda: hand_loop(loaded, clean_ids, corrupted_ids, ap.correct_id, ap.wrong_id))

    tokens = [t.text for t in analyzer.tokenize(loaded, CLEAN)[1]]
    print(f"model smollm2-135m, {len(tokens)} tokens, {loaded.info.n_layers} layers, threads {torch.get_num_threads()}")
    print(f"clean logit diff {ap.clean:.3f}, corrupted {ap.corrupted:.3f}; batch {ap.batch_size} rows, "
          f"{ap.n_passes} passes (resid), {heads.n_passes} (resid + heads)")
    for name, values in timings.items():
        wall, cpu = np.median([v[0] for v in values]), np.median([v[1] for v in values])
        print(f"{name:12s} median wall {wall:.2f} s, CPU {cpu:.2f} s over {len(values)}")
    print(f"max |batched - hand loop| = {np.abs(ap.resid - reference).max():.2e}")
    norm = ap.resid_normalised
    print("normalised effect, layer x position (every 3rd layer):")
    print("      " + " ".join(f"{t[:7]:>7s}" for t in tokens))
    for layer in range(0, norm.shape[0], 3):
        print(f"L{layer:<4d} " + " ".join(f"{v:7.2f}" for v in norm[layer]))
    lit = np.argwhere(norm > 0.5)
    print("cells with normalised effect > 0.5:", ", ".join(f"L{a}:{tokens[b]!r}" for a, b in lit))
    hn = heads.heads_normalised
    top = np.dstack(np.unravel_index(np.argsort(-hn, axis=None)[:5], hn.shape))[0]
    print("top heads (normalised):", ", ".join(f"L{a}H{b} {hn[a, b]:.2f}" for a, b in top))

    started = time.perf_counter()
    st = analyzer.analyze("I think this movie is", "steering", {"steering": {
        "layer": 8, "positive": "I love this movie, it is wonderful", "negative": "I hate this movie, it is terrible",
        "coefficient": 8.0, "generate": 12}}, use_cache=False).methods["steering"]
    print(f"steering (contrastive, paired texts, layer 8 x 8, 12 tokens) {time.perf_counter() - started:.2f} s, "
          f"KL {st.kl:.3f}, |vector| {st.vector_norm:.2f}")
    print(f"  before: {st.continuation_before!r}\n  after:  {st.continuation_after!r}")


if __name__ == "__main__":
    main()
