"""The detector: per-signal tails, the combination rule, fitting.

Signals (each an "oddness" whose upper tail is calibrated, see ``tails.py``):

==================== ======================================================== ===========
signal               value                                                    group
==================== ======================================================== ===========
``hidden_L{l}``      squared Mahalanobis distance of the mean-pooled          activations
                     ``blocks.{l}.resid_post`` (Ledoit-Wolf covariance)
``attention_entropy`` mean over heads of log(1 + z^2), z = (entropy - normal) attention
                     / sd, where "normal" is a per-head line in log(tokens):
                     attention statistics drift with length
``attention_sink``   the same for the attention mass on position 0            attention
``surprisal_mean``   mean token surprisal (nats)                              surprisal
``surprisal_low``    minus the mean surprisal (text far *more* predictable    surprisal
                     than normal: repeated or copied text)
``surprisal_max``    largest token surprisal                                  surprisal
``surprisal_tail``   share of tokens above the normal tokens' 99th percentile surprisal
``characters``       squared Mahalanobis distance of the character features   text
``repetition``       share of token trigrams seen earlier in the text         text
==================== ======================================================== ===========

Combination (documented rules, ``config["combine"]``), with ``k`` active signals and
tail probabilities ``p_s``:

- ``bonferroni_max``: ``score = -log10(min(1, k * min_s p_s))``, the Bonferroni-adjusted
  minimum: one signal far out is enough;
- ``fisher``: ``score = -log10 P(chi2_2k >= -2 sum_s ln p_s)``: moderate evidence on many
  signals adds up (shuffled word order moves several layers a little).

Either way the decision threshold is set on the held-out split of the normal texts so
that a ``target_fpr`` share of them is flagged: a generalised Pareto tail is fitted to
the held-out scores and solved for ``target_fpr`` (so the threshold is not one noisy
order statistic; the signals are not independent, so the chi-square or Bonferroni
levels are not used as such). Both rules' thresholds are stored. A signal *fired* when
its own adjusted score ``-log10(k * p_s)`` is above the ``bonferroni_max`` threshold;
under ``fisher`` an anomaly with no such signal names its largest contributors (those
that make up half of ``-sum ln p_s``).

Layers: the candidate layers' Gaussians are fitted on the fitting split; the chosen
layers are those that best separate the held-out normal texts from the same texts
with a quarter of their tokens replaced by random tokens (AUROC), spread out in depth.

Per-token scores: ``max(-log10 p)`` over the token's surprisal (causal models) and the
squared Mahalanobis distance of its own hidden state at one chosen layer (a token-level
Ledoit-Wolf Gaussian), each against normal tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmlens.errors import InvalidParamsError
from lmlens_anomaly.features import CHAR_FEATURES, Features, Plan
from lmlens_anomaly.tails import LN10, Tail, fit_tail

MIN_TEXTS = 40
"""Fewest normal texts a detector is fitted from: 5 folds of the fitting split for
out-of-fold distances and a held-out split of at least 10 for the threshold."""

KIND = "anomaly_detector"
FORMAT = 1
TOKENS_PER_TEXT = 16
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Gaussian:
    location: np.ndarray  # [d]
    precision: np.ndarray  # [d, d]

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``x`` ([n, d] or [d])."""
        # torch rather than numpy: numpy's multi-threaded OpenBLAS was 100x slower on a busy
        # machine (and einsum's 3-operand loop is slow anyway)
        diff = torch.from_numpy(np.atleast_2d(np.asarray(x, dtype=np.float64)) - self.location)
        return ((diff @ torch.from_numpy(self.precision)) * diff).sum(dim=1).numpy()


def fit_gaussian(x: np.ndarray) -> Gaussian:
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf(assume_centered=False).fit(np.asarray(x, dtype=np.float64))
    return Gaussian(location=lw.location_.astype(np.float64), precision=lw.precision_.astype(np.float64))


def out_of_fold(x: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each row's distance under a Gaussian fitted without its fold."""
    out = np.empty(len(x))
    for f in np.unique(folds):
        held = folds == f
        out[held] = fit_gaussian(x[~held]).distance(x[held])
    return out


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([negative, positive]))
    n0, n1 = len(negative), len(positive)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


@dataclass
class SignalScore:
    name: str
    group: str
    value: float
    p_value: float
    score: float  # -log10(k * p), the Bonferroni-adjusted score
    normal_low: float
    normal_high: float
    fired: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    is_anomaly: bool
    score: float
    threshold: float
    signals: list[SignalScore]
    token_scores: np.ndarray  # [pos]


@dataclass
class Detector:
    """A fitted detector: JSON config + numpy arrays (an ``anomaly_detector`` artifact)."""

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]

    @classmethod
    def from_artifact(cls, artifact: Any) -> Detector:
        """From a kernel ``Artifact`` (or anything with ``config`` and ``tensors``)."""
        config = dict(artifact.config)
        if config.get("format") != FORMAT:
            raise ValueError(f"anomaly detector format {config.get('format')!r} is not {FORMAT}")
        tensors = {k: np.asarray(v, dtype=np.float64) for k, v in artifact.tensors.items()}
        return cls(config=config, tensors=tensors)

    # --- structure -------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        return list(self.config["hidden_layers"])

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    def plan(self, *, check_attention: bool = True, check_activations: bool = True) -> Plan:
        hidden = list(self.layers) if check_activations else []
        token_layer = self.config.get("token_layer")
        if check_activations and token_layer is not None and token_layer not in hidden:
            hidden.append(token_layer)
        return Plan(
            hidden_layers=tuple(sorted(hidden)),
            attention_layers=tuple(self.config["attention_layers"]) if check_attention else (),
            surprisal=bool(self.config["surprisal"]),
            causal=bool(self.config["causal"]),
        )

    def attention_normal(self, n_tokens: int, channel: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-head normal value at this length, and the spread around it: [layer, head] each."""
        coef = self.tensors["attention.coef"][..., channel, :]  # [layer, head, 2]
        mean = coef[..., 0] + coef[..., 1] * math.log(max(n_tokens, 2))
        return mean, self.tensors["attention.sd"][..., channel]

    def tail(self, name: str) -> Tail:
        return Tail.from_parts(self.config["tails"][name], self.tensors[f"tail.{name}"])

    def gaussian(self, name: str) -> Gaussian:
        return Gaussian(self.tensors[f"{name}.location"], self.tensors[f"{name}.precision"])

    def active_signals(self, *, check_attention: bool = True, check_activations: bool = True) -> list[str]:
        out = []
        for name, group in self.config["signals"].items():
            if group == "attention" and not check_attention:
                continue
            if group == "activations" and not check_activations:
                continue
            out.append(name)
        return out

    # --- scoring ---------------------------------------------------------------------

    def values(self, f: Features, names: Sequence[str]) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        """Raw signal values for one text, and details for those that have them."""
        values: dict[str, float] = {}
        details: dict[str, dict[str, Any]] = {}
        for name in names:
            if name.startswith("hidden_L"):
                layer = int(name.removeprefix("hidden_L"))
                values[name] = float(self.gaussian(f"hidden.{layer}").distance(f.pooled[layer])[0])
            elif name in ("attention_entropy", "attention_sink"):
                if f.attention is None:
                    continue
                channel = 0 if name == "attention_entropy" else 1
                mean, sd = self.attention_normal(f.n_tokens, channel)
                z = (f.attention[..., channel] - mean) / sd  # [layer, head]
                values[name] = float(np.mean(np.log1p(z**2)))
                worst = np.argsort(-np.abs(z), axis=None)[:3]
                heads = []
                for flat in worst:
                    li, h = np.unravel_index(flat, z.shape)
                    heads.append(
                        {
                            "layer": int(self.config["attention_layers"][li]),
                            "head": int(h),
                            "value": float(f.attention[li, h, channel]),
                            "normal_low": float(mean[li, h] - 2.576 * sd[li, h]),
                            "normal_high": float(mean[li, h] + 2.576 * sd[li, h]),
                        }
                    )
                details[name] = {"heads": heads}
            elif name.startswith("surprisal_"):
                s = f.surprisal[np.isfinite(f.surprisal)] if f.surprisal is not None else np.empty(0)
                if s.size == 0:
                    continue
                if name == "surprisal_mean":
                    values[name] = float(s.mean())
                elif name == "surprisal_low":
                    values[name] = -float(s.mean())
                elif name == "surprisal_max":
                    values[name] = float(s.max())
                else:
                    values[name] = float(np.mean(s > self.config["token_surprisal_q99"]))
            elif name == "characters":
                values[name] = float(self.gaussian("chars").distance(f.chars)[0])
                z = (f.chars - self.tensors["chars.location"]) / self.tensors["chars.sd"]
                top = int(np.argmax(np.abs(z)))
                details[name] = {"feature": CHAR_FEATURES[top], "value": float(f.chars[top]), "z": float(z[top])}
            elif name == "repetition":
                values[name] = f.repetition
        return values, details

    def token_scores(self, f: Features) -> np.ndarray:
        n = f.content.shape[0]
        score = np.zeros(n)
        if f.surprisal is not None and "token_surprisal" in self.config["tails"]:
            s = np.where(np.isfinite(f.surprisal), f.surprisal, -np.inf)
            score = np.maximum(score, np.where(np.isfinite(f.surprisal), self.tail("token_surprisal").score(s), 0.0))
        layer = self.config.get("token_layer")
        if layer is not None and layer in f.states:
            d = self.gaussian("token").distance(f.states[layer])
            score = np.maximum(score, self.tail("token_hidden").score(d))
        score[~f.content] = 0.0
        return score

    @property
    def rule(self) -> str:
        return str(self.config.get("combine", "bonferroni_max"))

    def detect(self, f: Features, *, check_attention: bool = True, check_activations: bool = True) -> Verdict:
        names = self.active_signals(check_attention=check_attention, check_activations=check_activations)
        values, details = self.values(f, names)
        k = max(len(values), 1)
        ranges = self.config["normal_ranges"]
        log_ps = {name: float(self.tail(name).log_sf(value)) for name, value in values.items()}
        score = combine(list(log_ps.values()), self.rule)
        is_anomaly = score > self.threshold
        single_threshold = float(self.config.get("thresholds", {}).get("bonferroni_max", self.threshold))
        fired = {n for n, lp in log_ps.items() if -(lp / LN10) - math.log10(k) > single_threshold}
        if is_anomaly and not fired:  # Fisher: name the largest contributors, half the statistic
            total, running = -sum(log_ps.values()), 0.0
            for n in sorted(log_ps, key=lambda n: log_ps[n]):
                fired.add(n)
                running -= log_ps[n]
                if running >= total / 2:
                    break
        signals = []
        for name, value in values.items():
            lo, hi = ranges[name]
            signals.append(
                SignalScore(
                    name=name,
                    group=self.config["signals"][name],
                    value=value,
                    p_value=math.exp(log_ps[name]),
                    score=max(0.0, -(log_ps[name] / LN10) - math.log10(k)),
                    normal_low=float(lo),
                    normal_high=float(hi),
                    fired=name in fired,
                    details=details.get(name, {}),
                )
            )
        tokens = self.token_scores(f) if check_activations or f.surprisal is not None else np.zeros(f.content.shape[0])
        return Verdict(
            is_anomaly=is_anomaly,
            score=score,
            threshold=self.threshold,
            signals=signals,
            token_scores=tokens,
        )

    def combined(self, f: Features, rule: str | None = None) -> float:
        values, _ = self.values(f, self.active_signals())
        return combine([float(self.tail(n).log_sf(v)) for n, v in values.items()], rule or self.rule)


RULES = ("bonferroni_max", "fisher")


def combine(log_ps: Sequence[float], rule: str) -> float:
    """Combine the signals' natural-log tail probabilities into one score (``-log10``).

    ``bonferroni_max``: ``-log10(min(1, k * min p))``. ``fisher``: ``-log10`` of the
    chi-square(2k) tail of ``-2 * sum(ln p)`` (Fisher's method; the signals are not
    independent, which is why the threshold is set on held-out normal text rather than
    read off the chi-square).
    """
    k = max(len(log_ps), 1)
    if not log_ps:
        return 0.0
    if rule == "bonferroni_max":
        return max(0.0, -min(log_ps) / LN10 - math.log10(k))
    if rule == "fisher":
        from scipy.stats import chi2

        return max(0.0, float(-chi2.logsf(-2.0 * float(sum(log_ps)), 2 * k) / LN10))
    raise ValueError(f"unknown combination rule {rule!r}; use one of {RULES}")


# --- fitting ---------------------------------------------------------------------------


def choose_layers(
    candidates: Sequence[int], separation: dict[int, float], k: int, n_layers: int
) -> list[int]:
    """The ``k`` best-separating layers, at least ``n_layers // 6`` apart where possible."""
    gap = max(1, n_layers // 6)
    order = sorted(candidates, key=lambda layer: (-separation[layer], layer))
    chosen: list[int] = []
    for layer in order:
        if len(chosen) == k:
            break
        if all(abs(layer - c) >= gap for c in chosen):
            chosen.append(layer)
    for layer in order:  # fill up when spacing left too few
        if len(chosen) == k:
            break
        if layer not in chosen:
            chosen.append(layer)
    return sorted(chosen)


def threshold_for(scores: np.ndarray, target_fpr: float) -> float:
    """The score that a ``target_fpr`` share of held-out normal texts exceeds (GPD tail)."""
    tail = fit_tail(scores)
    if target_fpr >= tail.rate:
        return float(np.quantile(scores, 1.0 - target_fpr))
    ratio = tail.rate / target_fpr
    y = tail.scale / tail.shape * (ratio ** tail.shape - 1.0) if tail.shape > 0 else tail.scale * math.log(ratio)
    return float(tail.threshold + y)


@dataclass
class FitData:
    """Features of the normal texts (token states already subsampled) and of corrupted
    copies of the held-out texts (for choosing layers)."""

    fit: list[Features]
    held: list[Features]
    corrupted: list[Features]
    candidates: list[int]
    attention_layers: list[int]
    causal: bool
    surprisal: bool
    n_layers: int


def fit_detector(
    data: FitData,
    *,
    target_fpr: float,
    n_hidden: int = 3,
    seed: int = 0,
    rule: str = "bonferroni_max",
    progress: Progress | None = None,
) -> tuple[Detector, dict[str, Any]]:
    """Fit every part; returns the detector and its metrics."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # one BLAS thread: see Gaussian.distance
        return _fit_detector(data, target_fpr=target_fpr, n_hidden=n_hidden, seed=seed, rule=rule, progress=progress)


def _fit_detector(
    data: FitData,
    *,
    target_fpr: float,
    n_hidden: int,
    seed: int,
    rule: str,
    progress: Progress | None,
) -> tuple[Detector, dict[str, Any]]:
    if rule not in RULES:
        raise InvalidParamsError(f"combine must be one of {', '.join(RULES)}", field="combine")
    notify = progress or (lambda fraction, message: None)
    rng = np.random.default_rng(seed)
    fit, held = data.fit, data.held
    folds = rng.permutation(len(fit)) % 5
    tensors: dict[str, np.ndarray] = {}
    tails: dict[str, Tail] = {}
    signals: dict[str, str] = {}
    normal_values: dict[str, np.ndarray] = {}

    # hidden states: layer choice on the held-out split, Gaussians on the fitting split
    separation: dict[int, float] = {}
    gaussians: dict[int, Gaussian] = {}
    for i, layer in enumerate(data.candidates):
        x = np.stack([f.pooled[layer] for f in fit])
        gaussians[layer] = fit_gaussian(x)
        normal = gaussians[layer].distance(np.stack([f.pooled[layer] for f in held]))
        odd = gaussians[layer].distance(np.stack([f.pooled[layer] for f in data.corrupted]))
        separation[layer] = auroc(normal, odd)
        notify(0.1 + 0.4 * (i + 1) / len(data.candidates), f"layer {layer}: separation {separation[layer]:.3f}")
    layers = choose_layers(data.candidates, separation, min(n_hidden, len(data.candidates)), data.n_layers)
    for layer in layers:
        x = np.stack([f.pooled[layer] for f in fit])
        normal_values[f"hidden_L{layer}"] = out_of_fold(x, folds)
        signals[f"hidden_L{layer}"] = "activations"
        tensors[f"hidden.{layer}.location"] = gaussians[layer].location
        tensors[f"hidden.{layer}.precision"] = gaussians[layer].precision

    # attention: per head, a least-squares line in log(tokens) and the spread around it
    if data.attention_layers:
        att = np.stack([f.attention for f in fit if f.attention is not None])  # [n, layer, head, 2]
        design = np.stack([np.ones(len(fit)), np.log(np.maximum([f.n_tokens for f in fit], 2))], axis=1)  # [n, 2]
        flat = att.reshape(len(fit), -1)
        coef, *_ = np.linalg.lstsq(design, flat, rcond=None)  # [2, layer*head*2]
        resid = flat - design @ coef
        sd = resid.std(0, ddof=2).reshape(att.shape[1:])
        sd = np.maximum(sd, 1e-3 * np.abs(att.mean(0)) + 1e-6)
        tensors["attention.coef"] = np.moveaxis(coef.reshape(2, *att.shape[1:]), 0, -1)  # [layer, head, 2, 2]
        tensors["attention.sd"] = sd
        z = resid.reshape(att.shape) / sd
        for channel, name in enumerate(("attention_entropy", "attention_sink")):
            normal_values[name] = np.log1p(z[..., channel] ** 2).mean(axis=(1, 2))
            signals[name] = "attention"

    # surprisal
    config_extra: dict[str, Any] = {}
    if data.surprisal:
        per_text = [f.surprisal[np.isfinite(f.surprisal)] for f in fit if f.surprisal is not None]
        all_tokens = np.concatenate(per_text)
        q99 = float(np.quantile(all_tokens, 0.99))
        config_extra["token_surprisal_q99"] = q99
        kept = [s for s in per_text if s.size]
        normal_values["surprisal_mean"] = np.array([s.mean() for s in kept])
        normal_values["surprisal_low"] = -normal_values["surprisal_mean"]
        normal_values["surprisal_max"] = np.array([s.max() for s in kept])
        normal_values["surprisal_tail"] = np.array([np.mean(s > q99) for s in kept])
        for name in ("surprisal_mean", "surprisal_low", "surprisal_max", "surprisal_tail"):
            signals[name] = "surprisal"
        tails["token_surprisal"] = fit_tail(all_tokens)

    # characters and repetition
    chars = np.stack([f.chars for f in fit])
    g = fit_gaussian(chars)
    tensors["chars.location"], tensors["chars.precision"] = g.location, g.precision
    tensors["chars.sd"] = np.maximum(chars.std(0, ddof=1), 1e-6)
    normal_values["characters"] = out_of_fold(chars, folds)
    signals["characters"] = "text"
    normal_values["repetition"] = np.array([f.repetition for f in fit])
    signals["repetition"] = "text"
    notify(0.6, "signals computed")

    # token-level hidden states at the middle chosen layer: Gaussian on half the texts,
    # tail on the other half's tokens
    token_layer = layers[len(layers) // 2] if layers else None
    if token_layer is not None:
        half = folds < 3
        a = np.concatenate([f.states[token_layer] for f, h in zip(fit, half, strict=True) if h])
        b = np.concatenate([f.states[token_layer] for f, h in zip(fit, half, strict=True) if not h])
        tg = fit_gaussian(a)
        tensors["token.location"], tensors["token.precision"] = tg.location, tg.precision
        tails["token_hidden"] = fit_tail(tg.distance(b))

    for name, values in normal_values.items():
        tails[name] = fit_tail(values, min_scale=1e-3 if name in ("repetition", "surprisal_tail") else 1e-6)
    notify(0.7, "tails fitted")

    config: dict[str, Any] = {
        "format": FORMAT,
        "hidden_layers": layers,
        "candidate_layers": list(data.candidates),
        "layer_separation": {str(k): v for k, v in separation.items()},
        "token_layer": token_layer,
        "attention_layers": list(data.attention_layers),
        "surprisal": data.surprisal,
        "causal": data.causal,
        "signals": signals,
        "target_fpr": target_fpr,
        "threshold": 0.0,
        "normal_ranges": {
            name: [float(np.quantile(v, 0.005)), float(np.quantile(v, 0.995))] for name, v in normal_values.items()
        },
        "tails": {name: t.config() for name, t in tails.items()},
        "combine": rule,
        **config_extra,
    }
    for name, t in tails.items():
        tensors[f"tail.{name}"] = t.sample
    # Gaussians ship as float32 (half the size); score the held-out split with exactly those
    for key in list(tensors):
        if key.endswith((".precision", ".location")):
            tensors[key] = tensors[key].astype(np.float32).astype(np.float64)
    detector = Detector(config=config, tensors=tensors)

    thresholds, held_fpr = {}, {}
    for name in RULES:
        held_scores = np.array([detector.combined(f, name) for f in held])
        thresholds[name] = threshold_for(held_scores, target_fpr)
        held_fpr[name] = float(np.mean(held_scores > thresholds[name]))
    detector.config["thresholds"] = thresholds
    detector.config["threshold"] = threshold = thresholds[rule]
    notify(0.9, f"threshold {threshold:.3f}")
    metrics = {
        "n_fit": len(fit),
        "n_held": len(held),
        "rule": rule,
        "held_fpr": held_fpr[rule],
        "held_fpr_by_rule": held_fpr,
        "threshold": threshold,
        "layer_separation": config["layer_separation"],
        "hidden_layers": layers,
    }
    return detector, metrics
