"""The predictor's numbers against independent references (scikit-learn, direct loops)."""

from __future__ import annotations

import numpy as np
import pytest
from lmlens_failure.evaluate import cross_validate
from lmlens_failure.features import Signals
from lmlens_failure.predictor import (
    Predictor,
    ece,
    fit_calibrator,
    fit_isotonic,
    fit_linear,
    fit_platt,
    fit_predictor,
    metrics,
)


def ece_reference(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE written the other way round: loop over examples, accumulate per bin."""
    sums = [[0.0, 0.0, 0] for _ in range(n_bins)]
    for yi, pi in zip(y.tolist(), p.tolist(), strict=True):
        b = n_bins - 1 if pi >= 1.0 else int(pi * n_bins)
        sums[b][0] += pi
        sums[b][1] += yi
        sums[b][2] += 1
    n = len(y)
    return sum(c / n * abs(sp / c - sy / c) for sp, sy, c in sums if c)


def test_ece_matches_a_direct_recomputation() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 500)
    p[:5] = [0.0, 1.0, 0.1, 0.2, 0.9999]  # bin edges
    y = (rng.uniform(0, 1, 500) < p**2).astype(np.int64)  # miscalibrated on purpose
    assert ece(y, p) == pytest.approx(ece_reference(y, p), abs=1e-12)
    assert ece(y, p) > 0.1
    # always 0.9 when the rate is 0.5: the error is 0.4
    assert ece(np.array([0, 1] * 50), np.full(100, 0.9)) == pytest.approx(0.4)


def test_calibration_on_synthetic_scores() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, 3000)
    true_p = 1 / (1 + np.exp(-(2.0 * z + 1.0)))
    y = (rng.uniform(size=z.size) < true_p).astype(np.int64)
    from sklearn.linear_model import LogisticRegression

    platt = fit_platt(z, y)
    ref = LogisticRegression(C=1e8, max_iter=5000).fit(z[:, None], y)
    np.testing.assert_allclose(platt.x, [ref.coef_[0, 0], ref.intercept_[0]], rtol=1e-3)
    assert platt.x[0] == pytest.approx(2.0, abs=0.3) and platt.x[1] == pytest.approx(1.0, abs=0.3)
    calibrated = fit_calibrator(z, y)
    z_new = rng.normal(0, 1.5, 3000)
    y_new = (rng.uniform(size=z_new.size) < 1 / (1 + np.exp(-(2.0 * z_new + 1.0)))).astype(np.int64)
    assert ece(y_new, calibrated(z_new)) < 0.05
    assert ece(y_new, 1 / (1 + np.exp(-z_new))) > 0.05  # the raw score is not calibrated


def test_isotonic_rebuilt_from_arrays_matches_scikit_learn() -> None:
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(2)
    z = rng.normal(size=300)
    y = (rng.uniform(size=300) < 1 / (1 + np.exp(-3 * z))).astype(np.int64)
    ours = fit_isotonic(z, y)
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(z, y)
    grid = np.linspace(-4, 4, 101)
    np.testing.assert_allclose(ours(grid), ref.predict(grid), atol=1e-12)


def test_linear_decision_matches_a_scikit_learn_pipeline() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 7)) * np.arange(1, 8)
    y = (x[:, 0] + 0.5 * x[:, 3] + rng.normal(size=200) > 0).astype(np.int64)
    ours = fit_linear(x, y, c=0.3)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000)).fit(x, y)
    np.testing.assert_allclose(ours.decision(x), ref.decision_function(x), rtol=1e-4, atol=1e-4)


def synthetic_signals(
    n: int, n_layers: int = 4, d: int = 12, heads: int = 3, seed: int = 0
) -> tuple[Signals, np.ndarray, list[str]]:
    """Labels driven by the hidden state at layer 2 and by max prob; three families."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, n_layers, d)).astype(np.float32)
    direction = rng.normal(size=d)
    score = hidden[:, 2] @ direction / np.sqrt(d) * 2.0
    maxp = 1 / (1 + np.exp(-rng.normal(size=n)))
    logit_part = 2.0 * (0.5 - maxp)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(score + logit_part)))).astype(np.int64)
    entropy = -np.log(maxp)
    logit = np.stack([maxp, entropy, maxp * 0.8, np.minimum(1.0, maxp + 0.1)], axis=1)
    attn = rng.uniform(size=(n, n_layers, 3, heads)).astype(np.float32)
    sig = Signals(
        logit=logit,
        n_tokens=rng.integers(5, 60, n).astype(np.float64),
        hidden=hidden,
        attn=attn,
        next_id=np.zeros(n, dtype=np.int64),
    )
    families = [["a", "b", "c"][i % 3] for i in range(n)]
    return sig, y, families


def test_probe_finds_the_informative_layer_and_round_trips_through_arrays() -> None:
    sig, y, _ = synthetic_signals(400)
    pred = fit_predictor(sig, y)
    assert pred.layer == 2
    p = pred.predict_proba(sig)
    assert metrics(y, p)["auroc"] > 0.8
    config, tensors = pred.to_arrays()
    import json

    config = json.loads(json.dumps(config))  # plain JSON
    again = Predictor.from_arrays(config, {k: v.copy() for k, v in tensors.items()})
    np.testing.assert_array_equal(again.predict_proba(sig), p)
    _values, contrib = again.contributions(sig.take([0]))
    assert contrib.sum() + again.final.intercept == pytest.approx(float(again.decision(sig.take([0]))[0]))


def test_cross_validation_reports_baselines_families_and_ablations() -> None:
    sig, y, families = synthetic_signals(240, seed=4)
    report = cross_validate(sig, y, families, k=3)
    overall = report["random_split"]["overall"]
    assert set(overall) == {"predictor", "majority", "one_minus_max_prob", "one_minus_max_prob_platt"}
    assert overall["majority"]["auroc"] == pytest.approx(0.5, abs=0.06)  # a constant per fold
    assert overall["majority"]["accuracy"] == pytest.approx(max(y.mean(), 1 - y.mean()), abs=0.05)
    # the labels depend on the hidden state, which max prob cannot see
    assert overall["predictor"]["auroc"] > overall["one_minus_max_prob"]["auroc"] + 0.05
    assert report["random_split"]["ablation"]["without_probe"]["auroc"] < overall["predictor"]["auroc"]
    assert set(report["leave_one_family_out"]["per_family"]) == {"a", "b", "c"}
    assert report["leave_one_family_out"]["pooled"]["predictor"]["n"] == 240
