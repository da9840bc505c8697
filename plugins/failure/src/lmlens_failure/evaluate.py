"""Honest numbers: out-of-fold and leave-one-family-out, each against its baselines.

Every split refits the whole pipeline on its training part (probe layer selection,
out-of-fold probe scores, the final regression, calibration, and the Platt fit of the
1 - max softmax baseline), so nothing about the held-out rows is seen in training.
Ablations reuse a split's probes and refit the final regression and the calibration
on a subset of the feature groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lmlens_failure.features import Signals
from lmlens_failure.predictor import (
    GROUPS,
    columns,
    fit_final,
    fit_platt,
    folds,
    metrics,
    stack_features,
)

VARIANTS: dict[str, tuple[str, ...]] = {
    "all": GROUPS,
    **{f"without_{g}": tuple(x for x in GROUPS if x != g) for g in GROUPS},
    "logit_only": ("logit",),
}
METHODS = ("predictor", "majority", "one_minus_max_prob", "one_minus_max_prob_platt")

Progress = Callable[[float, str], None]


def _split_predictions(
    sig: Signals, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int, layers: Sequence[int] | None
) -> dict[str, np.ndarray]:
    tr, te = sig.take(train), sig.take(test)
    stacked = stack_features(tr, y[train], layers=layers, seed=seed)
    test_x = stacked.transform(te)
    out: dict[str, np.ndarray] = {}
    for name, groups in VARIANTS.items():
        pred = fit_final(stacked, tr, y[train], groups, seed)
        out[f"variant:{name}"] = pred.calibrator(pred.final.decision(test_x[:, columns(groups)]))
    raw = 1.0 - te.logit[:, 0]
    out["predictor"] = out["variant:all"]
    out["one_minus_max_prob"] = raw
    out["one_minus_max_prob_platt"] = fit_platt(1.0 - tr.logit[:, 0], y[train])(raw)
    out["majority"] = np.full(len(test), y[train].mean())
    return out


def _table(y: np.ndarray, preds: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, Any]:
    m = np.ones(len(y), dtype=bool) if mask is None else mask
    return {name: metrics(y[m], preds[name][m]) for name in METHODS}


def _ablation(y: np.ndarray, preds: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: metrics(y, preds[f"variant:{name}"]) for name in VARIANTS}


def cross_validate(
    sig: Signals,
    y: Sequence[int] | np.ndarray,
    families: Sequence[str] | None = None,
    *,
    k: int = 5,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    y = np.asarray(y, dtype=np.int64)
    fam = np.asarray(families if families is not None else ["all"] * len(y))
    notify = progress or (lambda f, m: None)
    splits = folds(y, k, seed)
    family_names = sorted(set(fam.tolist()))
    lofo = [f for f in family_names if len(np.unique(y[fam != f])) == 2] if len(family_names) > 1 else []
    total = len(splits) + len(lofo)

    pooled: dict[str, np.ndarray] = {}
    for i, (train, test) in enumerate(splits):
        preds = _split_predictions(sig, y, train, test, seed, layers)
        for key, value in preds.items():
            pooled.setdefault(key, np.zeros(len(y)))[test] = value
        notify((i + 1) / total, f"random split fold {i + 1}/{len(splits)}")
    report: dict[str, Any] = {
        "n": len(y),
        "failure_rate": float(y.mean()),
        "random_split": {
            "k": len(splits),
            "overall": _table(y, pooled),
            "per_family": {f: _table(y, pooled, fam == f) for f in family_names},
            "ablation": _ablation(y, pooled),
        },
    }
    if lofo:
        held: dict[str, np.ndarray] = {}
        per_family = {}
        for j, f in enumerate(lofo):
            test = np.flatnonzero(fam == f)
            train = np.flatnonzero(fam != f)
            preds = _split_predictions(sig, y, train, test, seed, layers)
            for key, value in preds.items():
                held.setdefault(key, np.zeros(len(y)))[test] = value
            per_family[f] = {name: metrics(y[test], preds[name]) for name in METHODS}
            notify((len(splits) + j + 1) / total, f"leave out {f}")
        covered = np.isin(fam, lofo)
        yc = y[covered]
        heldc = {key: value[covered] for key, value in held.items()}
        report["leave_one_family_out"] = {
            "families": lofo,
            "per_family": per_family,
            "pooled": _table(yc, heldc),
            "mean_auroc": {name: float(np.nanmean([per_family[f][name]["auroc"] for f in lofo])) for name in METHODS},
            "ablation": _ablation(yc, heldc),
        }
    return report


def format_table(rows: dict[str, dict[str, float]], title: str = "") -> str:
    """A Markdown table: one row per method, accuracy / AUROC / Brier / ECE."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| | n | failure rate | accuracy | AUROC | Brier | ECE |", "|---|---|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['n']} | {m['failure_rate']:.2f} | {m['accuracy']:.3f} | {m['auroc']:.3f} "
            f"| {m['brier']:.3f} | {m['ece']:.3f} |"
        )
    return "\n".join(lines)
