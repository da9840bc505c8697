"""Build the default failure predictor shipped for smollm2-135m.

    OMP_NUM_THREADS=1 python plugins/failure/scripts/build_default.py generate --n 720 --data DATA
    python plugins/failure/scripts/build_default.py train --data DATA

``generate`` asks smollm2-135m the built-in tasks (greedy, at most 8 new tokens),
labels each prompt by the model's real output and keeps the signals of each prompt's
shared pass (``DATA.npz`` + ``DATA.json``), in chunks, so an interrupted run resumes.
``train`` fits the predictor on all of it, evaluates the whole pipeline out-of-fold
and leave-one-family-out, writes the artifact into the package
(``src/lmlens_failure/default/default``) and the report (``DATA.report.json``,
``DATA.report.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE.parent / "src" / "lmlens_failure" / "default" / "default"


def generate(args: argparse.Namespace) -> None:
    from lmlens_failure.data import FailureData
    from lmlens_failure.features import Signals
    from lmlens_failure.labels import run_examples
    from lmlens_failure.tasks import make_examples

    from lmlens import Analyzer

    analyzer = Analyzer(args.model)
    loaded = analyzer.model
    data_path = Path(args.data)
    parts_dir = data_path.parent / f"{data_path.name}-parts"
    examples = make_examples(args.n, seed=args.seed)  # one list: no duplicate prompt across chunks
    parts: list[FailureData] = []
    for start in range(0, args.n, args.chunk):
        part_path = parts_dir / f"part{start // args.chunk:03d}-{args.chunk}-{args.seed}"
        if part_path.with_suffix(".json").exists():
            parts.append(FailureData.load(part_path))
            continue
        t0 = time.perf_counter()
        records, signals = run_examples(
            loaded,
            examples[start : start + args.chunk],
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        part = FailureData(records, signals, loaded.name)
        part.save(part_path)
        parts.append(part)
        print(
            f"[{start + len(part)}/{args.n}] {time.perf_counter() - t0:.1f}s, failure rate {part.labels.mean():.2f}",
            flush=True,
        )
    records = [r for p in parts for r in p.records]
    data = FailureData(records, Signals.concat([p.signals for p in parts]), loaded.name)
    data.save(data_path)
    print(json.dumps(data.summary(), indent=1))


def train(args: argparse.Namespace) -> None:
    from lmlens_failure.data import FailureData
    from lmlens_failure.evaluate import cross_validate, format_table
    from lmlens_failure.predictor import fit_predictor

    data = FailureData.load(args.data)
    y = data.labels
    out = Path(args.data)
    t0 = time.perf_counter()
    if args.reuse_report and out.with_suffix(".report.json").exists():
        report = json.loads(out.with_suffix(".report.json").read_text())
    else:
        report = cross_validate(
            data.signals, y, data.families, seed=args.seed, progress=lambda f, m: print(f"  {f:.0%} {m}", flush=True)
        )
    print(f"cross-validation {time.perf_counter() - t0:.1f}s", flush=True)
    predictor = fit_predictor(data.signals, y, seed=args.seed)
    predictor.info["max_tokens"] = int(data.signals.n_tokens.max())
    report["summary"] = data.summary()
    report["predictor"] = predictor.info
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=1))
    md = [
        format_table(report["random_split"]["overall"], "Held-out synthetic data (5-fold, out-of-fold)"),
        "",
        format_table(report["leave_one_family_out"]["pooled"], "Leave-one-family-out (pooled held-out families)"),
    ]
    out.with_suffix(".report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if args.save:
        from lmlens_failure.api import predictor_artifact

        from lmlens import Analyzer

        analyzer = Analyzer(args.model)
        artifact = predictor_artifact(analyzer.model, predictor, name="default", report=report, texts=data.texts)
        import shutil

        from lmlens.artifacts import write_artifact

        if DEFAULT_DIR.exists():
            shutil.rmtree(DEFAULT_DIR)
        write_artifact(artifact, DEFAULT_DIR)
        print(f"wrote {DEFAULT_DIR}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["generate", "train", "all"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=720)
    parser.add_argument("--chunk", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", default=os.path.join(os.environ.get("LMLENS_CACHE_DIR", "."), "failure-data", "smollm2")
    )
    parser.add_argument("--no-save", dest="save", action="store_false")
    parser.add_argument("--reuse-report", action="store_true", help="skip cross-validation if DATA.report.json exists")
    args = parser.parse_args()
    if args.step in ("generate", "all"):
        generate(args)
    if args.step in ("train", "all"):
        train(args)
    np.seterr(all="ignore")
    sys.exit(0)


if __name__ == "__main__":
    main()
