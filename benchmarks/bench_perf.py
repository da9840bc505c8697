"""The performance table of issue 13, each row a ratio measured side by side in one process.

Rows (pick with --rows, default all):

- ``attention``: ``analyze(text, methods=["attention"])`` on 512 SmolLM2 tokens against the
  bare ``model(ids, output_attentions=True)`` with eager attention (goal <= 1.03x).
- ``ig``: integrated gradients (zero baseline, 32 Gauss-Legendre steps, log-probability of
  the top next token, faithfulness off) against Captum ``IntegratedGradients`` on the input
  embeddings with ``internal_batch_size=8`` at 14, 128 and 512 tokens (goal >= 2x faster).
- ``heads``: ``head_importance`` (zero + mean ablation of all 270 heads, 34 tokens): exact
  ablation against ``mode: "attribution"`` (one forward, one backward), with the Spearman
  rank correlation of the estimates with the exact effects.

Every row alternates the two sides repetition by repetition and reports medians of wall
time and of process CPU time (on a machine shared with other work the wall clock of both
sides swings; the ratio of medians measured in the same run is what means something).
The machine's load average is printed with each row.

    LMLENS_CACHE_DIR=/tmp/lmcache python benchmarks/bench_perf.py [--rows attention,ig,heads]
        [--repeats 5] [--ig-tokens 14,128,512] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

PARAGRAPH = (
    "The river rose through the night, and by morning the lower fields were under water. "
    "Farmers moved their animals to the ridge, where the old church stood, and the priest "
    "opened its doors to anyone who needed shelter. Children counted the boats that passed; "
    "their parents counted what was lost. When the rain finally stopped, the valley smelled "
    "of mud and cut grass, and the first birds returned to the hedges before noon. "
)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} CPUs"


def text_of(analyzer, n_tokens: int) -> str:  # type: ignore[no-untyped-def]
    """A text that tokenizes to exactly ``n_tokens`` tokens, special tokens included."""
    loaded = analyzer.model
    ids = loaded.tokenizer(PARAGRAPH * 40, add_special_tokens=False)["input_ids"]
    for cut in range(n_tokens, 0, -1):
        text = loaded.tokenizer.decode(ids[:cut])
        if analyzer.tokenize(loaded, text)[0].shape[1] == n_tokens:
            return str(text)
    raise RuntimeError(f"no text of exactly {n_tokens} tokens")


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def side_by_side(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) of each side, the sides alternating within every repetition."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for r in range(repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # neither side always goes first
        for name in order:
            runs[name].append(timed(sides[name]))
    for name, got in runs.items():
        print(f"    {name:34} wall {[round(w, 2) for w, _ in got]}  cpu {[round(c, 2) for _, c in got]}")
    return {
        name: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got)) for name, got in runs.items()
    }


def row_attention(repeats: int) -> None:
    """The default analysis against the bare pass, plus two cheaper settings for the breakdown.

    The bare side runs transformers' own eager attention (``set_attn_implementation("eager")``),
    the model as a user would load it; lmlens runs its ``lmlens_eager`` for this family.
    """
    from lmlens import Analyzer

    analyzer = Analyzer("smollm2-135m")
    loaded = analyzer.model
    text = text_of(analyzer, 512)
    ids, _ = analyzer.tokenize(loaded, text)

    def bare() -> None:
        with loaded.lock:
            loaded.model.set_attn_implementation("eager")
            with torch.inference_mode():
                loaded.model(ids, output_attentions=True)
            loaded.set_eager_attention(False)

    def ours(**params: object) -> Callable[[], None]:
        return lambda: analyzer.analyze(text, methods=["attention"], params={"attention": params}, use_cache=False)

    sides = {
        "bare model(ids, output_attentions)": bare,
        "analyze(attention)": ours(),
        "  patterns=False": ours(patterns=False),
        "  patterns=False, top_k=0": ours(patterns=False, top_k=0),
    }
    for side in sides.values():
        side()  # warm-up
    print(f"attention, smollm2-135m, 512 tokens, torch threads {torch.get_num_threads()}, {load()}")
    got = side_by_side(sides, repeats)
    bw, bc = got["bare model(ids, output_attentions)"]
    for name, (w, c) in got.items():
        print(f"  {name:36} {w:.3f} s wall ({w / bw:.3f}x)  {c:.3f} s CPU ({c / bc:.3f}x)")
    ow, oc = got["analyze(attention)"]
    print(f"  ROW attention/bare: {ow / bw:.3f}x wall, {oc / bc:.3f}x CPU (goal <= 1.03x)\n")


def row_ig(repeats: int, lengths: list[int]) -> None:
    from captum.attr import IntegratedGradients

    from lmlens import Analyzer, Trace
    from lmlens_importance import ImportanceParams, run_importance

    analyzer = Analyzer("smollm2-135m")
    loaded = analyzer.model
    model = loaded.model
    for n in lengths:
        text = text_of(analyzer, n)
        ids, tokens = analyzer.tokenize(loaded, text)
        with torch.inference_mode():
            token = int(model(ids).logits[0, -1].argmax())
        trace = Trace(model=loaded, text=text, tokens=tokens, input_ids=ids, activations={})
        found: dict[str, torch.Tensor] = {}

        def captum(found: dict[str, torch.Tensor] = found, ids: torch.Tensor = ids, token: int = token) -> None:
            loaded.set_eager_attention(False)  # what the model loads with: SDPA
            embeds = model.get_input_embeddings()(ids).detach()

            def forward(e: torch.Tensor) -> torch.Tensor:
                return model(inputs_embeds=e).logits[:, -1].log_softmax(-1)[:, token]

            attr = IntegratedGradients(forward).attribute(
                embeds, baselines=torch.zeros_like(embeds), n_steps=32, method="gausslegendre", internal_batch_size=8
            )
            found["captum"] = attr.sum(-1)[0].detach().double()

        def ours(found: dict[str, torch.Tensor] = found, trace: Trace = trace) -> None:
            params = ImportanceParams(method="integrated_gradients", baseline="zero", steps=32, faithfulness=False)
            result = run_importance(trace, params)
            found["lmlens"] = torch.as_tensor(result.scores).double()

        print(f"integrated gradients, smollm2-135m, {n} tokens, 32 steps, torch threads "
              f"{torch.get_num_threads()}, {load()}")
        got = side_by_side({"captum IntegratedGradients": captum, "lmlens importance": ours}, repeats)
        (cw, cc), (ow, oc) = got.values()
        r = float(torch.corrcoef(torch.stack([found["captum"], found["lmlens"]]))[0, 1])
        print(f"  captum {cw:.2f} s wall {cc:.2f} s CPU; lmlens {ow:.2f} s wall {oc:.2f} s CPU; Pearson r {r:.6f}")
        print(f"  ROW ig {n} tokens, captum/lmlens: {cw / ow:.2f}x wall, {cc / oc:.2f}x CPU (goal >= 2x)\n")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.flatten().argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (no ties in float effects)."""
    return float(torch.corrcoef(torch.stack([_ranks(a), _ranks(b)]))[0, 1])


def row_heads(repeats: int) -> None:
    from lmlens import Analyzer

    analyzer = Analyzer("smollm2-135m")
    text = text_of(analyzer, 34)
    found: dict[str, object] = {}

    def run(mode: str) -> Callable[[], None]:
        def go() -> None:
            params = {"head_importance": {"mode": mode}}
            found[mode] = analyzer.analyze(text, methods=["head_importance"], params=params, use_cache=False)
        return go

    run("attribution")()  # warm-up
    print(f"head_importance, smollm2-135m, 34 tokens, zero + mean ablation of 270 heads, torch threads "
          f"{torch.get_num_threads()}, {load()}")
    got = side_by_side({"exact (540 ablated rows)": run("exact"), "attribution (1 fwd + 1 bwd)": run("attribution")},
                       repeats)
    (ew, ec), (aw, ac) = got.values()
    exact = found["exact"].methods["head_importance"]  # type: ignore[attr-defined]
    approx = found["attribution"].methods["head_importance"]  # type: ignore[attr-defined]
    rho = {
        k: spearman(torch.as_tensor(getattr(exact, k)), torch.as_tensor(getattr(approx, k))) for k in ("zero", "mean")
    }
    print(f"  exact {ew:.2f} s wall {ec:.2f} s CPU ({exact.n_passes} passes); attribution {aw:.3f} s wall "
          f"{ac:.3f} s CPU")
    print(f"  ROW head_importance exact/attribution: {ew / aw:.1f}x wall, {ec / ac:.1f}x CPU; Spearman vs exact: "
          f"zero {rho['zero']:.3f}, mean {rho['mean']:.3f}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="attention,ig,heads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ig-tokens", default="14,128,512")
    parser.add_argument("--ig-repeats", type=int, default=3)
    parser.add_argument("--heads-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = args.rows.split(",")
    if "attention" in rows:
        row_attention(args.repeats)
    if "ig" in rows:
        row_ig(args.ig_repeats, [int(n) for n in args.ig_tokens.split(",")])
    if "heads" in rows:
        row_heads(args.heads_repeats)


if __name__ == "__main__":
    main()
