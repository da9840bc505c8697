"""Anomaly detection benchmark: per-family AUROC, FPR, ablation, speed.

    nice python plugins/anomaly/bench/bench_anomaly.py [--models smollm2-135m minilm-l6]

Normal texts: the held-out fifth of the shipped corpus (never fitted on). Families of
odd inputs, built here from those texts or from sources that ship with Python:
random characters, one word repeated, shuffled word order, base64 of normal text,
Python source code (standard library), other languages (``other_languages.txt``,
written for lmlens), digit strings. Each odd input is about as long as a normal text.

For each family: AUROC of the detector's score against the normal texts, the share
flagged at the shipped threshold, and the ablation: each signal alone (AUROC of its
own tail score) and how often it fired. Speed: the ``anomaly`` method through
``analyze`` on a 128-token text against the bare forward pass (the whole model with
its LM head, SDPA attention), medians of interleaved runs.
"""

from __future__ import annotations

import argparse
import base64
import inspect
import json
import string
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FAMILIES = ("random_chars", "repeated_word", "shuffled", "base64", "code", "other_language", "digits")


def families(normal: list[str], n: int, seed: int = 0) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    lengths = [len(t) for t in normal]

    def length() -> int:
        return int(rng.choice(lengths))

    alphabet = list(string.ascii_letters + string.digits + string.punctuation + " " * 12)
    words = sorted({w.strip(".,!?;:'\"").lower() for t in normal for w in t.split() if w.isalpha() and len(w) > 3})
    import csv
    import fractions
    import heapq
    import json as json_module
    import statistics
    import textwrap

    code_lines: list[str] = []
    for module in (textwrap, heapq, fractions, statistics, csv, json_module.encoder):
        code_lines += inspect.getsource(module).splitlines()
    langs = [p.strip() for p in (HERE / "other_languages.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    out: dict[str, list[str]] = {f: [] for f in FAMILIES}
    for i in range(n):
        L = length()
        out["random_chars"].append("".join(rng.choice(alphabet, L)).strip() or "x")
        word = str(rng.choice(words))
        out["repeated_word"].append(" ".join([word] * max(3, L // (len(word) + 1))))
        source = normal[i % len(normal)].split()
        out["shuffled"].append(" ".join(rng.permutation(source).tolist()))
        out["base64"].append(base64.b64encode(normal[(i + 7) % len(normal)].encode()).decode()[:L])
        start = int(rng.integers(0, len(code_lines) - 40))
        chunk, j = [], start
        while sum(len(c) + 1 for c in chunk) < L and j < len(code_lines):
            chunk.append(code_lines[j])
            j += 1
        out["code"].append("\n".join(chunk).strip() or "pass")
        out["other_language"].append(langs[i % len(langs)])
        digits = []
        while sum(len(d) + 1 for d in digits) < L:
            digits.append("".join(rng.choice(list(string.digits), int(rng.integers(2, 12)))))
        out["digits"].append(" ".join(digits))
    out["other_language"] = out["other_language"][: len(langs)]
    return out


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([negative, positive]))
    n0, n1 = len(negative), len(positive)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def score_all(detector, loaded, texts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    from lmlens_anomaly.collect import encode, features_of

    plan = detector.plan()
    names = detector.active_signals()
    combined, single, fired = [], {n: [] for n in names}, {n: [] for n in names}  # type: ignore[var-annotated]
    for text in texts:
        f = features_of(loaded, plan, encode(loaded, text), text)
        verdict = detector.detect(f)
        combined.append(verdict.score)
        by = {s.name: s for s in verdict.signals}
        for n in names:
            s = by.get(n)
            single[n].append(0.0 if s is None else -np.log10(max(s.p_value, 1e-300)))
            fired[n].append(bool(s is not None and s.fired))
    return (
        np.array(combined),
        {n: np.array(v) for n, v in single.items()},
        {n: np.array(v) for n, v in fired.items()},
    )


def fisher_scores(single: dict[str, np.ndarray]) -> np.ndarray:
    """The ``fisher`` rule's score from each signal's -log10 p."""
    from lmlens_anomaly.detector import combine

    log_ps = -np.stack([single[n] for n in single], axis=1) * np.log(10.0)  # [texts, signals]
    return np.array([combine(list(row), "fisher") for row in log_ps])


def speed(analyzer, loaded, repeats: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    words = "The small boat drifted slowly along the quiet river while the children waved from the bank".split()  # noqa: SIM905
    text = ""
    while True:
        candidate = (text + " " + words[len(text.split()) % len(words)]).strip()
        if len(loaded.tokenizer(candidate)["input_ids"]) > 128:
            break
        text = candidate
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    n_tokens = int(ids.shape[1])
    target = loaded.model

    def bare() -> None:
        with loaded.lock, torch.inference_mode():
            loaded.set_eager_attention(False)
            target(input_ids=ids)

    def method() -> None:
        analyzer.analyze(text, ["anomaly"], use_cache=False)

    method()
    bare()
    t_bare, t_method = [], []
    for _ in range(repeats):
        for fn, out in ((bare, t_bare), (method, t_method)):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
    b, m = float(np.median(t_bare)), float(np.median(t_method))
    return {"tokens": n_tokens, "bare_ms": 1000 * b, "anomaly_ms": 1000 * m, "ratio": m / b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "minilm-l6"])
    parser.add_argument("--per-family", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmlens import Analyzer
    from lmlens_anomaly.corpus import split
    from lmlens_anomaly.detector import KIND, Detector
    from lmlens_anomaly.method import default_name

    _, test = split()
    normal = [t for _, t in test]
    fams = families(normal, args.per_family)
    report: dict[str, dict] = {}  # type: ignore[type-arg]
    for model in args.models:
        analyzer = Analyzer(model)
        loaded = analyzer.model
        detector = Detector.from_artifact(analyzer.load_artifact(KIND, default_name(model)))
        base, base_single, base_fired = score_all(detector, loaded, normal)
        fpr = float(np.mean(base > detector.threshold))
        base_fisher = fisher_scores(base_single)
        fisher_threshold = detector.config["thresholds"]["fisher"]
        rows = {}
        for family, texts in fams.items():
            scores, single, fired = score_all(detector, loaded, texts)
            ablation = {
                n: {"auroc": auroc(base_single[n], single[n]), "fired": float(fired[n].mean())} for n in single
            }
            fisher = fisher_scores(single)
            rows[family] = {
                "n": len(texts),
                "auroc": auroc(base, scores),
                "auroc_fisher_rule": auroc(base_fisher, fisher),
                "flagged_fisher_rule": float(np.mean(fisher > fisher_threshold)),
                "flagged": float(np.mean(scores > detector.threshold)),
                "ablation": ablation,
            }
        report[model] = {
            "normal_texts": len(normal),
            "fpr": fpr,
            "rule": detector.rule,
            "fpr_fisher_rule": float(np.mean(base_fisher > fisher_threshold)),
            "threshold": detector.threshold,
            "target_fpr": detector.config["target_fpr"],
            "normal_fired": {n: float(v.mean()) for n, v in base_fired.items()},
            "families": rows,
            "speed": speed(analyzer, loaded, args.repeats),
        }
        print_model(model, report[model])
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))


def print_model(model: str, r: dict) -> None:  # type: ignore[type-arg]
    print(f"\n## {model}: rule {r['rule']}, FPR {r['fpr']:.3f} on {r['normal_texts']} held-out normal texts "
          f"(target {r['target_fpr']}, threshold {r['threshold']:.2f}); Fisher rule FPR {r['fpr_fisher_rule']:.3f}")
    print("| family | n | AUROC | flagged | AUROC / flagged, Fisher rule | strongest signals alone (AUROC) "
          "| fired most |")
    print("|---|---|---|---|---|---|---|")
    for family, row in r["families"].items():
        ab = row["ablation"]
        top = sorted(ab, key=lambda n: -ab[n]["auroc"])[:3]
        most = sorted(ab, key=lambda n: -ab[n]["fired"])[:2]
        print(
            f"| {family} | {row['n']} | {row['auroc']:.3f} | {row['flagged']:.2f} | "
            f"{row['auroc_fisher_rule']:.3f} / {row['flagged_fisher_rule']:.2f} | "
            + ", ".join(f"{n} {ab[n]['auroc']:.2f}" for n in top)
            + " | "
            + ", ".join(f"{n} {ab[n]['fired']:.2f}" for n in most)
            + " |"
        )
    s = r["speed"]
    print(f"speed ({s['tokens']} tokens): anomaly {s['anomaly_ms']:.1f} ms vs bare forward {s['bare_ms']:.1f} ms "
          f"= {s['ratio']:.2f}x")


if __name__ == "__main__":
    main()
