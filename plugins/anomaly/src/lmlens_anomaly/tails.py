"""Calibrated tail probabilities: how often normal text scores at least this high.

Each signal is turned into ``p = P_normal(S >= s)``:

- below the threshold ``u`` (the ``body_quantile`` of normal values, 0.8 by default)
  ``p`` is the empirical share ``(#{x >= s} + 1) / (n + 1)``;
- above it ``p = rate * GPD.sf(s - u; xi, sigma)``, a generalised Pareto tail fitted to
  the exceedances (peaks over threshold), where ``rate = #{x > u} / n``.

The shape ``xi`` is kept in ``[0, 0.5]``: a negative shape has a finite end point, beyond
which every input would get ``p = 0`` and the same score. With ``xi >= 0`` the tail
probability keeps falling, so scores keep ordering far beyond the fitted maximum
(``xi = 0`` is the exponential tail). Detection uses only numpy; scipy fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LN10 = float(np.log(10.0))
MAX_SHAPE = 0.5
"""Cap on the GPD shape: a heavier tail fitted to a few dozen exceedances is mostly noise,
and would compress the scores of far-out values into a few units."""


@dataclass(frozen=True)
class Tail:
    """The upper tail of one signal's normal distribution."""

    sample: np.ndarray  # sorted normal values (float64), for the body
    threshold: float  # u
    rate: float  # share of normal values above u
    shape: float  # xi in [0, 1]
    scale: float  # sigma > 0

    def log_sf(self, values: np.ndarray | float) -> np.ndarray:
        """Natural log of the tail probability ``P_normal(S >= value)``, elementwise."""
        s = np.asarray(values, dtype=np.float64)
        n = len(self.sample)
        # empirical body: count of normal values >= s
        count = n - np.searchsorted(self.sample, s, side="left")
        body = np.log((count + 1.0) / (n + 1.0))
        y = np.maximum(s - self.threshold, 0.0) / self.scale
        tail = np.log(self.rate) - np.log1p(self.shape * y) / self.shape if self.shape > 0 else np.log(self.rate) - y
        return np.where(s > self.threshold, tail, body)

    def score(self, values: np.ndarray | float) -> np.ndarray:
        """``-log10 p``: 0 for the most ordinary value, larger for odder ones."""
        return -self.log_sf(values) / LN10

    def config(self) -> dict[str, float]:
        return {"threshold": self.threshold, "rate": self.rate, "shape": self.shape, "scale": self.scale}

    @classmethod
    def from_parts(cls, config: dict[str, Any], sample: np.ndarray) -> Tail:
        return cls(
            sample=np.asarray(sample, dtype=np.float64),
            threshold=float(config["threshold"]),
            rate=float(config["rate"]),
            shape=float(config["shape"]),
            scale=float(config["scale"]),
        )


def fit_tail(values: np.ndarray, *, body_quantile: float = 0.8, min_scale: float = 1e-6) -> Tail:
    """Fit the tail of ``values`` (normal text's values of one signal)."""
    from scipy.stats import genpareto

    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError("a tail needs finite normal values")
    u = float(np.quantile(x, body_quantile))
    excess = x[x > u] - u
    n = x.size
    rate = max(excess.size, 1) / (n + 1.0)
    spread = float(np.std(x))
    floor = max(min_scale, 1e-3 * spread)
    if excess.size >= 8 and float(np.ptp(excess)) > 0:
        shape, _, scale = genpareto.fit(excess, floc=0.0)
        if shape < 0 or not np.isfinite(shape):  # finite end point: use the exponential tail
            shape, scale = 0.0, float(excess.mean())
        elif shape > MAX_SHAPE:  # heavier than any tail worth trusting from a few points
            shape = MAX_SHAPE
            scale = float(genpareto.fit(excess, fix_c=MAX_SHAPE, floc=0.0)[2])
    elif excess.size:
        shape, scale = 0.0, float(excess.mean())
    else:  # no value above the threshold (ties): an exponential tail with the sample's spread
        shape, scale = 0.0, spread
    return Tail(sample=x, threshold=u, rate=float(rate), shape=float(shape), scale=max(float(scale), floor))
