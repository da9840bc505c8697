"""Fit the shipped default detectors (``<model>-default``) on the normal corpus.

    nice python plugins/anomaly/scripts/fit_defaults.py [--models smollm2-135m minilm-l6]

The tiny random models get defaults too (the seed examples and demos run on them).
The corpus (``lmlens_anomaly.corpus``) is split by hash: one text in five is never
fitted on, and its false-positive rate at the shipped threshold is written into the
artifact's metrics (``test_fpr``); ``bench/bench_anomaly.py`` measures it again with the
families of odd inputs. Writes ``src/lmlens_anomaly/defaults/<model>-default/``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULTS = HERE.parent / "src" / "lmlens_anomaly" / "defaults"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["smollm2-135m", "minilm-l6", "tiny-gpt2", "tiny-llama", "tiny-bert"]
    )
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--combine", default="bonferroni_max", choices=["bonferroni_max", "fisher"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmlens import Analyzer
    from lmlens.artifacts import write_artifact
    from lmlens_anomaly.collect import encode, features_of
    from lmlens_anomaly.corpus import split
    from lmlens_anomaly.detector import Detector
    from lmlens_anomaly.fit import build_artifact
    from lmlens_anomaly.method import default_name

    train, test = split()
    sources = sorted({s for s, _ in train})
    print(f"corpus: {len(train)} fitting texts ({', '.join(f'{s} {sum(r[0] == s for r in train)}' for s in sources)}),"
          f" {len(test)} held out for the benchmark")
    for model in args.models:
        started = time.time()
        loaded = Analyzer(model).model

        def progress(fraction: float, message: str, model: str = model) -> None:
            print(f"  {model} {fraction:5.1%} {message}", flush=True)

        artifact = build_artifact(
            loaded, [t for _, t in train], name=default_name(model), target_fpr=args.target_fpr, combine=args.combine,
            progress=progress,
        )
        detector = Detector.from_artifact(artifact)
        plan = detector.plan()
        feats = [features_of(loaded, plan, encode(loaded, t), t) for _, t in test]
        scores = np.array([detector.combined(f) for f in feats])
        artifact.metrics["test_fpr"] = float(np.mean(scores > detector.threshold))
        other = "fisher" if detector.rule == "bonferroni_max" else "bonferroni_max"
        alt = np.array([detector.combined(f, other) for f in feats])
        artifact.metrics["test_fpr_by_rule"] = {
            detector.rule: artifact.metrics["test_fpr"],
            other: float(np.mean(alt > detector.config["thresholds"][other])),
        }
        artifact.metrics["n_test"] = len(test)
        artifact.metrics["fit_seconds"] = round(time.time() - started, 1)
        artifact.provenance["corpus"] = "lmlens_anomaly.corpus (generated.txt, written.txt, pydoc_data prose)"
        target = DEFAULTS / default_name(model)
        if target.exists():
            shutil.rmtree(target)
        DEFAULTS.mkdir(parents=True, exist_ok=True)
        write_artifact(artifact, target)
        print(f"{model}: layers {artifact.metrics['hidden_layers']}, threshold {detector.threshold:.3f}, "
              f"held-out FPR {artifact.metrics['held_fpr']:.3f}, test FPR {artifact.metrics['test_fpr']:.3f} "
              f"({len(test)} texts), {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
