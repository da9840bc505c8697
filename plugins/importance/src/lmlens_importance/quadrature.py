"""Nodes and weights on [0, 1] for the path integral of integrated gradients.

The rules match Captum's names and nodes (``gauss_legendre`` = Captum's
``gausslegendre``), except that ``riemann_trapezoid`` here has weights that sum to 1
(Captum's sum to (n - 1) / n).

``geometric`` spacing keeps the straight path but substitutes alpha = (r**u - 1) / (r - 1),
so the nodes crowd near the baseline: for targets whose change sits close to the
baseline. It is not a cure for RMSNorm models with a zero baseline: there the
integrand is near-singular at alpha -> 0 (the norm's 1/sqrt(eps) gain), and crowding
nodes into that region made the delta worse on smollm2-135m (see the README).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

GEOMETRIC_RATIO = 1000.0  # alpha spans three decades: 1e-3 .. 1


def base_rule(rule: str, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(nodes [n], weights [n]) on [0, 1] for ``rule``."""
    if rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (x + 1.0), 0.5 * w
    if n < 2:
        raise ValueError("Riemann rules need at least 2 nodes")
    if rule == "riemann_trapezoid":
        nodes = np.linspace(0.0, 1.0, n)
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
        return nodes, weights
    weights = np.full(n, 1.0 / n)
    if rule == "riemann_left":
        return np.linspace(0.0, 1.0 - 1.0 / n, n), weights
    if rule == "riemann_right":
        return np.linspace(1.0 / n, 1.0, n), weights
    if rule == "riemann_middle":
        return np.linspace(0.5 / n, 1.0 - 0.5 / n, n), weights
    raise ValueError(f"unknown rule {rule!r}")


def path_nodes(
    rule: str, n: int, spacing: str = "linear", ratio: float = GEOMETRIC_RATIO
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(alphas [n], weights [n]): sum_i w_i g(alpha_i) approximates the integral of g on [0, 1]."""
    u, w = base_rule(rule, n)
    if spacing == "linear":
        return u, w
    if spacing != "geometric":
        raise ValueError(f"unknown spacing {spacing!r}")
    log_r = math.log(ratio)
    alphas = np.expm1(u * log_r) / (ratio - 1.0)
    return alphas, w * np.exp(u * log_r) * log_r / (ratio - 1.0)
