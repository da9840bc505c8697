"""The failure predictor: stacked, standardised logistic regressions, calibrated, stored as arrays.

Signals -> features, by group:

- ``logit``: max probability, entropy, top-2 margin, top-5 mass of the next token;
- ``length``: log of the number of tokens;
- ``probe``: the score of a logistic-regression probe on the last token's residual
  stream at the layer (and strength) chosen by cross-validated AUROC;
- ``attention``: the score of a logistic-regression probe on the per-head attention
  statistics (lookback ratio, entropy, sink mass of every head), and the three
  statistics' means over heads and layers.

The probes' scores that train the final regression are out-of-fold (stacking), so the
final regression sees probe scores as they will look on new text. The final decision
value is calibrated (isotonic or Platt, whichever has the lower Brier score in a
cross-validation over out-of-fold decision values). Everything fitted is plain arrays
and JSON: scikit-learn fits, numpy predicts, nothing is pickled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmlens_failure.features import ATTN_STATS, LOGIT_FEATURES, Signals

GROUPS = ("logit", "length", "probe", "attention")
PROBE_CS = (0.01, 0.1)
ATTN_CS = (0.01, 0.1)
FINAL_C = 1.0


# --- small fitted pieces ---------------------------------------------------------------------


@dataclass
class Linear:
    """Standardise, then a logistic regression: decision = ((x - mean) / scale) @ coef + intercept."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def decision(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def contributions(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) * self.coef


def fit_linear(x: np.ndarray, y: np.ndarray, c: float, seed: int = 0) -> Linear:
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit((x - mean) / scale, y)
    return Linear(mean=mean, scale=scale, coef=model.coef_[0].astype(np.float64), intercept=float(model.intercept_[0]))


@dataclass
class Calibrator:
    kind: str  # "isotonic" | "platt"
    x: np.ndarray  # isotonic thresholds (decision values), or [a, b] for platt
    y: np.ndarray  # isotonic values; empty for platt

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if self.kind == "platt":
            a, b = self.x
            return 1.0 / (1.0 + np.exp(-(a * z + b)))
        return np.interp(z, self.x, self.y)  # clipped at both ends, as IsotonicRegression(out_of_bounds="clip")


def fit_platt(z: np.ndarray, y: np.ndarray, ridge: float = 1e-6, iters: int = 50) -> Calibrator:
    """p = sigmoid(a z + b) by maximum likelihood (Newton's method on two parameters)."""
    z = np.asarray(z, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    x = np.stack([z, np.ones_like(z)], axis=1)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - t) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return Calibrator("platt", w, np.zeros(0))


def fit_isotonic(z: np.ndarray, y: np.ndarray) -> Calibrator:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(np.asarray(z, dtype=np.float64), y)
    return Calibrator("isotonic", iso.X_thresholds_.astype(np.float64), iso.y_thresholds_.astype(np.float64))


def folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    k = max(2, min(k, int(np.bincount(y, minlength=2).min())))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def fit_calibrator(z: np.ndarray, y: np.ndarray, seed: int = 0) -> Calibrator:
    """Isotonic or Platt, whichever predicts held-out folds of (z, y) with the lower Brier score."""
    scores = {"isotonic": 0.0, "platt": 0.0}
    for train, test in folds(y, 5, seed):
        for kind, fit in (("isotonic", fit_isotonic), ("platt", fit_platt)):
            p = fit(z[train], y[train])(z[test])
            scores[kind] += float(((p - y[test]) ** 2).sum())
    best = min(scores, key=lambda k: scores[k])
    return fit_isotonic(z, y) if best == "isotonic" else fit_platt(z, y)


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


# --- features ------------------------------------------------------------------------------


def base_features(sig: Signals) -> dict[str, np.ndarray]:
    """The features that need no fitting, by name."""
    out = {name: sig.logit[:, i] for i, name in enumerate(LOGIT_FEATURES)}
    out["log_tokens"] = np.log(np.maximum(sig.n_tokens, 1.0))
    for i, name in enumerate(ATTN_STATS):
        out[f"mean_{name}"] = sig.attn[:, :, i, :].mean(axis=(1, 2)).astype(np.float64)
    return out


FEATURE_GROUP = {
    **{name: "logit" for name in LOGIT_FEATURES},
    "log_tokens": "length",
    "probe": "probe",
    "attn_probe": "attention",
    **{f"mean_{name}": "attention" for name in ATTN_STATS},
}
FEATURES = tuple(FEATURE_GROUP)


def attn_matrix(sig: Signals) -> np.ndarray:
    return sig.attn.reshape(len(sig), -1).astype(np.float64)


def hidden_at(sig: Signals, layer: int) -> np.ndarray:
    return sig.hidden[:, layer, :].astype(np.float64)


def candidate_layers(n_layers: int, count: int = 6) -> list[int]:
    if n_layers <= count:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / (count - 1)) for i in range(count)})


def select_probe(
    matrices: dict[Any, np.ndarray], y: np.ndarray, cs: Sequence[float], seed: int
) -> tuple[Any, float, float]:
    """(key, C, AUROC) with the best 3-fold cross-validated AUROC among the matrices and Cs."""
    best: tuple[Any, float, float] = (next(iter(matrices)), cs[0], -1.0)
    splits = folds(y, 3, seed)
    for key, x in matrices.items():
        for c in cs:
            scores = np.zeros(len(y))
            for train, test in splits:
                scores[test] = fit_linear(x[train], y[train], c, seed).decision(x[test])
            value = auroc(y, scores)
            if value > best[2]:
                best = (key, c, value)
    return best


def oof_decision(x: np.ndarray, y: np.ndarray, c: float, seed: int, k: int = 5) -> np.ndarray:
    out = np.zeros(len(y))
    for train, test in folds(y, k, seed):
        out[test] = fit_linear(x[train], y[train], c, seed).decision(x[test])
    return out


@dataclass
class StackedFeatures:
    """Probes fitted on a training set, their out-of-fold scores on it, and the feature matrix."""

    layer: int
    probe: Linear
    attn_probe: Linear
    train_x: np.ndarray  # [n, len(FEATURES)], probe columns out-of-fold
    selection: dict[str, Any]

    def transform(self, sig: Signals) -> np.ndarray:
        base = base_features(sig)
        base["probe"] = self.probe.decision(hidden_at(sig, self.layer))
        base["attn_probe"] = self.attn_probe.decision(attn_matrix(sig))
        return np.stack([base[name] for name in FEATURES], axis=1)


def stack_features(
    sig: Signals, y: np.ndarray, *, layers: Sequence[int] | None = None, seed: int = 0
) -> StackedFeatures:
    n_layers = sig.hidden.shape[1]
    layers = list(layers) if layers is not None else candidate_layers(n_layers)
    layer, c_probe, probe_auc = select_probe({lay: hidden_at(sig, lay) for lay in layers}, y, PROBE_CS, seed)
    attn = attn_matrix(sig)
    _, c_attn, attn_auc = select_probe({"attn": attn}, y, ATTN_CS, seed)
    hidden = hidden_at(sig, layer)
    base = base_features(sig)
    base["probe"] = oof_decision(hidden, y, c_probe, seed)
    base["attn_probe"] = oof_decision(attn, y, c_attn, seed)
    return StackedFeatures(
        layer=int(layer),
        probe=fit_linear(hidden, y, c_probe, seed),
        attn_probe=fit_linear(attn, y, c_attn, seed),
        train_x=np.stack([base[name] for name in FEATURES], axis=1),
        selection={
            "probe_layer": int(layer),
            "probe_C": c_probe,
            "probe_cv_auroc": probe_auc,
            "candidate_layers": [int(x) for x in layers],
            "attn_probe_C": c_attn,
            "attn_probe_cv_auroc": attn_auc,
        },
    )


def columns(groups: Sequence[str]) -> list[int]:
    return [i for i, name in enumerate(FEATURES) if FEATURE_GROUP[name] in groups]


# --- the predictor --------------------------------------------------------------------------


@dataclass
class Predictor:
    layer: int
    probe: Linear
    attn_probe: Linear
    final: Linear  # over the columns of `features`
    features: list[str]
    calibrator: Calibrator
    baseline: Calibrator  # Platt on 1 - max prob, fitted on the same training data
    base_rate: float  # failure rate of the training data
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)

    def design(self, sig: Signals) -> np.ndarray:
        base = base_features(sig)
        if "probe" in self.features:
            base["probe"] = self.probe.decision(hidden_at(sig, self.layer))
        if "attn_probe" in self.features:
            base["attn_probe"] = self.attn_probe.decision(attn_matrix(sig))
        return np.stack([base[name] for name in self.features], axis=1)

    def decision(self, sig: Signals) -> np.ndarray:
        return self.final.decision(self.design(sig))

    def predict_proba(self, sig: Signals) -> np.ndarray:
        return self.calibrator(self.decision(sig))

    def contributions(self, sig: Signals) -> tuple[np.ndarray, np.ndarray]:
        """(raw feature values, contributions to the decision in log-odds) per feature."""
        x = self.design(sig)
        return x, self.final.contributions(x)

    # --- arrays + JSON -----------------------------------------------------------------------

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        tensors: dict[str, np.ndarray] = {}
        config: dict[str, Any] = {
            "layer": self.layer,
            "features": list(self.features),
            "calibration": self.calibrator.kind,
            "base_rate": self.base_rate,
            "threshold": self.threshold,
            "info": self.info,
        }
        for name, lin in (("probe", self.probe), ("attn_probe", self.attn_probe), ("final", self.final)):
            tensors[f"{name}.mean"] = lin.mean
            tensors[f"{name}.scale"] = lin.scale
            tensors[f"{name}.coef"] = lin.coef
            tensors[f"{name}.intercept"] = np.array([lin.intercept])
        tensors["calibration.x"] = self.calibrator.x
        tensors["calibration.y"] = self.calibrator.y
        tensors["baseline.platt"] = self.baseline.x
        return config, {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}

    @classmethod
    def from_arrays(cls, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Predictor:
        def lin(name: str) -> Linear:
            return Linear(
                mean=np.asarray(tensors[f"{name}.mean"], dtype=np.float64),
                scale=np.asarray(tensors[f"{name}.scale"], dtype=np.float64),
                coef=np.asarray(tensors[f"{name}.coef"], dtype=np.float64),
                intercept=float(np.asarray(tensors[f"{name}.intercept"])[0]),
            )

        return cls(
            layer=int(config["layer"]),
            probe=lin("probe"),
            attn_probe=lin("attn_probe"),
            final=lin("final"),
            features=list(config["features"]),
            calibrator=Calibrator(
                str(config["calibration"]),
                np.asarray(tensors["calibration.x"], dtype=np.float64),
                np.asarray(tensors["calibration.y"], dtype=np.float64),
            ),
            baseline=Calibrator("platt", np.asarray(tensors["baseline.platt"], dtype=np.float64), np.zeros(0)),
            base_rate=float(config["base_rate"]),
            threshold=float(config.get("threshold", 0.5)),
            info=dict(config.get("info", {})),
        )


def fit_final(stacked: StackedFeatures, sig: Signals, y: np.ndarray, groups: Sequence[str], seed: int = 0) -> Predictor:
    cols = columns(groups)
    x = stacked.train_x[:, cols]
    z_oof = oof_decision(x, y, FINAL_C, seed)
    final = fit_linear(x, y, FINAL_C, seed)
    return Predictor(
        layer=stacked.layer,
        probe=stacked.probe,
        attn_probe=stacked.attn_probe,
        final=final,
        features=[FEATURES[i] for i in cols],
        calibrator=fit_calibrator(z_oof, y, seed),
        baseline=fit_platt(1.0 - sig.logit[:, 0], y),
        base_rate=float(y.mean()),
        info={"groups": list(groups), **stacked.selection, "n_train": len(y)},
    )


def fit_predictor(
    sig: Signals, y: np.ndarray, *, groups: Sequence[str] = GROUPS, layers: Sequence[int] | None = None, seed: int = 0
) -> Predictor:
    y = np.asarray(y, dtype=np.int64)
    return fit_final(stack_features(sig, y, layers=layers, seed=seed), sig, y, groups, seed)


# --- metrics --------------------------------------------------------------------------------


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: equal-width bins on [0, 1], the last one closed;
    sum over bins of (bin share) * |mean prediction - failure rate|."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    return {
        "n": len(y),
        "failure_rate": float(y.mean()) if len(y) else math.nan,
        "accuracy": float(((p >= threshold) == (y == 1)).mean()),
        "auroc": auroc(y.astype(np.int64), p),
        "brier": float(((p - y) ** 2).mean()),
        "ece": ece(y, p),
    }


def compare(y: np.ndarray, p: np.ndarray, sig: Signals, predictor: Predictor) -> dict[str, dict[str, float]]:
    """The predictor against the majority class and 1 - max softmax (raw, and Platt-calibrated
    on the predictor's training data)."""
    raw = 1.0 - sig.logit[:, 0]
    majority = np.full(len(y), predictor.base_rate)
    return {
        "predictor": metrics(y, p, predictor.threshold),
        "majority": metrics(y, majority, predictor.threshold),
        "one_minus_max_prob": metrics(y, raw),
        "one_minus_max_prob_platt": metrics(y, predictor.baseline(raw)),
    }
