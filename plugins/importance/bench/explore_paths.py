"""How well does the IG path integral converge on a model, per baseline, path, rule and spacing?

Prints f along each path and the relative convergence delta for growing step counts.
Run by hand (a few minutes on two cores):

    LMLENS_CACHE_DIR=/tmp/lmcache python -u plugins/importance/bench/explore_paths.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lmlens import Analyzer
from lmlens.method import Trace
from lmlens_importance.baselines import reference_embeds
from lmlens_importance.integrated import endpoint_values, integrated_gradients
from lmlens_importance.params import ImportanceParams
from lmlens_importance.paths import path_points
from lmlens_importance.targets import build_objective, frozen_parameters, special_positions

PROMPT = "The capital of France is Paris, and the capital of Italy is"
GRID = np.concatenate([[0.0], np.logspace(-4, 0, 17)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default=PROMPT)
    parser.add_argument("--steps", default="16,32,64,128")
    parser.add_argument("--baselines", default="zero,pad")
    args = parser.parse_args()
    analyzer = Analyzer(args.model)
    loaded = analyzer.model
    ids, tokens = analyzer.tokenize(loaded, args.text)
    trace = Trace(model=loaded, text=args.text, tokens=tokens, input_ids=ids, activations={})
    print(f"{args.model}: {ids.shape[1]} tokens")
    with torch.inference_mode(False), frozen_parameters(loaded.model):
        objective = build_objective(trace, ImportanceParams())
        print("target:", objective.description)
        special = special_positions(loaded, trace)
        for kind in args.baselines.split(","):
            baseline, label = reference_embeds(loaded, objective.embeds, special, kind)
            f_x, f_b = endpoint_values(objective, baseline)
            print(f"\nbaseline {label}: f(x)={f_x:.4f} f(baseline)={f_b:.4f}")
            paths = ("straight",) if kind == "zero" else ("straight", "spherical")
            for path in paths:
                points, _ = path_points(path, baseline, objective.embeds, torch.as_tensor(GRID))
                values = objective.values(points, batch_size=len(GRID)).numpy()
                print(f"  f on {path} path: " + " ".join(f"{a:.0e}:{v:.2f}" for a, v in zip(GRID, values, strict=True)))
            combos = [
                (r, s, p)
                for p in paths
                for r, s in (
                    ("gauss_legendre", "linear"),
                    ("gauss_legendre", "geometric"),
                    ("riemann_trapezoid", "linear"),
                )
            ]
            for rule, spacing, path in combos:
                row = []
                for steps in (int(s) for s in args.steps.split(",")):
                    started = time.perf_counter()
                    try:
                        run = integrated_gradients(
                            objective,
                            baseline,
                            steps=steps,
                            rule=rule,
                            spacing=spacing,
                            path=path,
                            batch_size=32,
                            f_input=f_x,
                            f_baseline=f_b,
                        )
                        rel = f"{run.relative_delta:.1%}" if run.relative_delta is not None else "n/a"
                    except Exception as exc:  # report and carry on: this is an exploration
                        rel = type(exc).__name__
                    row.append(f"{steps}:{rel} ({time.perf_counter() - started:.0f}s)")
                print(f"  {rule:18} {spacing:9} {path:9} " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()
