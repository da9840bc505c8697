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
        [--repeats 5] [--ig-tokens 14,128,512] [--ig-repeats 3] [--ig-long-repeats 1]
        [--heads-repeats 1] [--threads N]

``--threads 1`` makes CPU times steadier on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import msgspec
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


PROMPTS = (  # the "3 prompts of 12-16 tokens" (SmolLM2 tokens: 15, 13, 16)
    "She opened the door and saw that the garden behind the house was full of",
    "When water is heated to one hundred degrees Celsius, it begins to",
    "In 1969, the first people to walk on the Moon were",
)


def row_ig(repeats: int, lengths: list[int], long_repeats: int) -> None:
    """Both sides attribute every text of a case in one timed call; 14 means the three PROMPTS."""
    from captum.attr import IntegratedGradients

    from lmlens import Analyzer, Trace
    from lmlens_importance import ImportanceParams, run_importance

    analyzer = Analyzer("smollm2-135m")
    loaded = analyzer.model
    model = loaded.model
    params = ImportanceParams(method="integrated_gradients", baseline="zero", steps=32, faithfulness=False)
    for n in lengths:
        texts = list(PROMPTS) if n == 14 else [text_of(analyzer, n)]
        cases = []
        for text in texts:
            ids, tokens = analyzer.tokenize(loaded, text)
            with torch.inference_mode():
                token = int(model(ids).logits[0, -1].argmax())  # Captum is told the token; lmlens finds it
            cases.append((ids, token, Trace(model=loaded, text=text, tokens=tokens, input_ids=ids, activations={})))
        found: dict[str, list[torch.Tensor]] = {"captum": [], "lmlens": []}

        def captum(cases: list = cases, found: dict = found) -> None:  # type: ignore[type-arg]
            loaded.set_eager_attention(False)  # what the model loads with: SDPA
            found["captum"] = []
            for ids, token, _ in cases:
                embeds = model.get_input_embeddings()(ids).detach()

                def forward(e: torch.Tensor, token: int = token) -> torch.Tensor:
                    return model(inputs_embeds=e).logits[:, -1].log_softmax(-1)[:, token]

                attr = IntegratedGradients(forward).attribute(
                    embeds, baselines=torch.zeros_like(embeds), n_steps=32, method="gausslegendre",
                    internal_batch_size=8,
                )
                found["captum"].append(attr.sum(-1)[0].detach().double())

        def ours(cases: list = cases, found: dict = found) -> None:  # type: ignore[type-arg]
            found["lmlens"] = [torch.as_tensor(run_importance(trace, params).scores).double() for *_, trace in cases]

        def ours_8(cases: list = cases) -> None:  # type: ignore[type-arg]
            # Captum's batching (8 rows a pass) instead of the 1 GiB memory budget's: at 512
            # tokens the budget allows 1 row (~1.2 GB measured), Captum's 8 rows take ~6 GB
            for *_, trace in cases:
                run_importance(trace, msgspec.structs.replace(params, batch_size=8))

        sizes = "/".join(str(int(ids.shape[1])) for ids, *_ in cases)
        print(f"integrated gradients, smollm2-135m, {len(cases)} text(s) of {sizes} tokens, 32 steps, torch threads "
              f"{torch.get_num_threads()}, {load()}")
        reps = long_repeats if n >= 512 else repeats  # 512 tokens: ~1 min a side on two idle cores
        got = side_by_side(
            {"captum IntegratedGradients": captum, "lmlens importance": ours, "lmlens, 8 rows a pass": ours_8}, reps
        )
        (cw, cc), (ow, oc), (ew, ec) = got.values()
        r = min(float(torch.corrcoef(torch.stack([c, o]))[0, 1]) for c, o in zip(*found.values(), strict=True))
        print(f"  captum {cw:.2f} s wall {cc:.2f} s CPU; lmlens {ow:.2f} s wall {oc:.2f} s CPU; "
              f"Pearson r (lowest of the texts) {r:.6f}")
        print(f"  ROW ig {sizes} tokens, captum/lmlens: {cw / ow:.2f}x wall, {cc / oc:.2f}x CPU (goal >= 2x); "
              f"with Captum's 8 rows a pass: {cw / ew:.2f}x wall, {cc / ec:.2f}x CPU; {load()}\n")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.flatten().argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (no ties in float effects)."""
    return float(torch.corrcoef(torch.stack([_ranks(a), _ranks(b)]))[0, 1])


def head_importance_before(loaded, input_ids, layers, kinds, batch_size):  # type: ignore[no-untyped-def]
    """A faithful copy of head_importance's exact path before issue 13 (the 'before' side):
    passes of ``batch_size`` rows mixing layers (every row runs the blocks from its pass's
    lowest ablated layer), the loss from the model's full [batch, pos, vocab] logits."""
    from lmlens import Need, run_forward
    from lmlens_attention.importance import Ablation, ablation_patches, auto_batch_size, next_token_loss

    batch_size = batch_size or auto_batch_size(int(input_ids.shape[1]))
    means_needs = [Need(f"blocks.{layer}.attn.heads", lambda h: h[0].float().mean(0).cpu(), name=f"mean.{layer}")
                   for layer in layers]
    got = run_forward(loaded, [Need("logits"), *means_needs], input_ids=input_ids)
    means = {layer: got[f"mean.{layer}"] for layer in layers}
    clean = float(next_token_loss(got["logits"], input_ids)[0])
    del got

    def metric(out: torch.Tensor) -> torch.Tensor:
        return next_token_loss(out, input_ids.expand(out.shape[0], -1))

    jobs = [Ablation(k, layer, h) for layer in sorted(layers) for k in kinds for h in range(loaded.info.n_heads)]
    found = {}
    for first in range(0, len(jobs), batch_size):
        rows = jobs[first : first + batch_size]
        out = run_forward(loaded, [Need("logits", metric, name="ablated")], input_ids=input_ids,
                          patches=ablation_patches(loaded, rows, means))
        found.update(zip(rows, out["ablated"].double().tolist(), strict=True))
    return {k: torch.tensor([[found[Ablation(k, layer, h)] - clean for h in range(loaded.info.n_heads)]
                             for layer in layers]) for k in kinds}


HYBRID_TOP = 30  # heads of each kind ablated exactly after attribution ranked them


def row_heads(repeats: int) -> None:
    from lmlens import Analyzer

    analyzer = Analyzer("smollm2-135m")
    loaded = analyzer.model
    text = text_of(analyzer, 34)
    ids, _ = analyzer.tokenize(loaded, text)
    layers = list(range(loaded.info.n_layers))
    found: dict[str, object] = {}

    def run(mode: str) -> Callable[[], None]:
        def go() -> None:
            params = {"head_importance": {"mode": mode}}
            found[mode] = analyzer.analyze(text, methods=["head_importance"], params=params, use_cache=False)
        return go

    def before() -> None:
        found["before"] = head_importance_before(loaded, ids, layers, ["zero", "mean"], 0)

    def hybrid() -> None:
        from lmlens_attention.importance import head_hybrid

        found["hybrid"] = head_hybrid(loaded, ids, layers, ["zero", "mean"], 0, top=HYBRID_TOP)

    run("attribution")()  # warm-up
    print(f"head_importance, smollm2-135m, 34 tokens, zero + mean ablation of 270 heads, torch threads "
          f"{torch.get_num_threads()}, {load()}")
    sides = {
        "exact before (mixed-layer passes)": before,
        "exact now (chunked loss from final)": run("exact"),
        "attribution (1 fwd + 1 bwd)": run("attribution"),
        f"hybrid (exact top {HYBRID_TOP} a kind)": hybrid,
    }
    (bw, bc), (ew, ec), (aw, ac), (hw, hc) = side_by_side(sides, repeats).values()
    exact = found["exact"].methods["head_importance"]  # type: ignore[attr-defined]
    approx = found["attribution"].methods["head_importance"]  # type: ignore[attr-defined]
    old = found["before"]
    drift = max(float((torch.as_tensor(getattr(exact, k)).double() - old[k]).abs().max()) for k in old)  # type: ignore[index, attr-defined]
    rho = {
        k: spearman(torch.as_tensor(getattr(exact, k)), torch.as_tensor(getattr(approx, k))) for k in ("zero", "mean")
    }
    mixed = found["hybrid"].effects  # type: ignore[attr-defined]
    rho_h = {k: spearman(torch.as_tensor(getattr(exact, k)), torch.as_tensor(mixed[k])) for k in ("zero", "mean")}

    def top10(values: object) -> set[int]:
        return set(torch.as_tensor(values).abs().flatten().argsort(descending=True)[:10].tolist())

    hits = {
        k: (len(top10(getattr(exact, k)) & top10(getattr(approx, k))), len(top10(getattr(exact, k)) & top10(mixed[k])))
        for k in ("zero", "mean")
    }
    print(f"  before {bw:.2f} s wall {bc:.2f} s CPU; now {ew:.2f} s wall {ec:.2f} s CPU ({exact.n_passes} passes); "
          f"attribution {aw:.3f} s wall {ac:.3f} s CPU; max |now - before| {drift:.2e} nats")
    print(f"  ROW head_importance exact before/now: {bw / ew:.2f}x wall, {bc / ec:.2f}x CPU (goal >= 3x)")
    print(f"  ROW head_importance exact/attribution: {ew / aw:.1f}x wall, {ec / ac:.1f}x CPU; Spearman vs exact: "
          f"zero {rho['zero']:.3f}, mean {rho['mean']:.3f}; top-10 heads found: zero {hits['zero'][0]}/10, "
          f"mean {hits['mean'][0]}/10")
    print(f"  ROW head_importance exact/hybrid: {ew / hw:.1f}x wall, {ec / hc:.1f}x CPU; Spearman vs exact: "
          f"zero {rho_h['zero']:.3f}, mean {rho_h['mean']:.3f}; top-10 heads found: zero {hits['zero'][1]}/10, "
          f"mean {hits['mean'][1]}/10; {load()}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="attention,ig,heads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ig-tokens", default="14,128,512")
    parser.add_argument("--ig-repeats", type=int, default=3)
    parser.add_argument("--ig-long-repeats", type=int, default=1, help="repeats of the ig row at 512+ tokens")
    parser.add_argument("--heads-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = args.rows.split(",")
    if "attention" in rows:
        row_attention(args.repeats)
    if "ig" in rows:
        row_ig(args.ig_repeats, [int(n) for n in args.ig_tokens.split(",")], args.ig_long_repeats)
    if "heads" in rows:
        row_heads(args.heads_repeats)


if __name__ == "__main__":
    main()
