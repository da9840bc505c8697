"""The anomaly plugin on tiny models: tails against scipy, signals against direct
recomputation, fit -> save -> load in another process -> detect, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.stats import genpareto
from sklearn.covariance import LedoitWolf

from lmlens import LmlensError
from lmlens_anomaly.collect import encode, features_of
from lmlens_anomaly.detector import KIND, MIN_TEXTS, Detector
from lmlens_anomaly.features import char_features, repetition
from lmlens_anomaly.tails import fit_tail

# --- tails -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["heavy", "light"])
def test_tail_probability_matches_direct_computation(kind: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.pareto(4.0, 400) if kind == "heavy" else rng.uniform(0, 1, 400)  # light: a bounded sample
    tail = fit_tail(x)
    xs = np.sort(x)
    u = np.quantile(xs, 0.8)
    excess = xs[xs > u] - u
    assert tail.threshold == pytest.approx(u)
    assert tail.rate == pytest.approx(excess.size / (x.size + 1))
    assert 0.0 <= tail.shape <= 0.5
    if kind == "light":  # a uniform's GPD shape is -1: replaced by the exponential tail
        assert tail.shape == 0.0
        assert tail.scale == pytest.approx(excess.mean())
    else:
        c, _, _ = genpareto.fit(excess, floc=0.0)
        assert tail.shape == pytest.approx(min(max(c, 0.0), 0.5), abs=1e-6)
    # above the threshold: rate * GPD survival (scipy); below: the empirical share
    above = np.array([u + 1e-3, xs[-1], 10 * xs[-1] + 5])
    expected = np.log(tail.rate) + genpareto.logsf(above - u, tail.shape, loc=0.0, scale=tail.scale)
    np.testing.assert_allclose(tail.log_sf(above), expected, rtol=1e-9)
    below = np.array([xs[0], np.median(xs), u])
    counts = np.array([(xs >= v).sum() for v in below])
    np.testing.assert_allclose(tail.log_sf(below), np.log((counts + 1) / (x.size + 1)), rtol=1e-12)
    # scores keep ordering far beyond the fitted maximum
    far = xs[-1] * np.array([2.0, 4.0, 8.0, 16.0]) + 1
    assert np.all(np.diff(tail.score(far)) > 0)


# --- signals against direct recomputation ---------------------------------------------


def test_signals_match_direct_computation(fitted, sentences) -> None:  # type: ignore[no-untyped-def]
    analyzer, _, _ = fitted
    loaded = analyzer.model
    detector = Detector.from_artifact(analyzer.load_artifact(KIND, "t-gpt2"))
    text = sentences[70]
    ids = encode(loaded, text)
    f = features_of(loaded, detector.plan(), ids, text)

    # the model run directly (no lmlens capture), float64 recomputation
    with torch.no_grad():
        loaded.set_eager_attention(True)
        out = loaded.model(ids, output_hidden_states=True, output_attentions=True)
    # resid_post of each block but the last (HF applies the final norm to the last one)
    hidden = [h[0].double().numpy() for h in out.hidden_states[1:-1]]
    content = np.ones(ids.shape[1], dtype=bool)
    content[0] = False  # causal sink position
    checked = [layer for layer in detector.layers if layer < len(hidden)]
    assert checked
    for layer in checked:
        pooled = hidden[layer][content].mean(0)
        np.testing.assert_allclose(f.pooled[layer], pooled, rtol=1e-4, atol=1e-5)
        g = detector.gaussian(f"hidden.{layer}")
        diff = pooled - g.location
        assert detector.values(f, [f"hidden_L{layer}"])[0][f"hidden_L{layer}"] == pytest.approx(
            float(diff @ g.precision @ diff), rel=1e-4
        )
    logp = torch.log_softmax(out.logits[0].double(), -1)
    surprisal = -logp[:-1].gather(-1, ids[0, 1:, None])[:, 0].numpy()
    np.testing.assert_allclose(f.surprisal[1:], surprisal, rtol=1e-4, atol=1e-4)
    vals, _ = detector.values(f, ["surprisal_mean", "surprisal_max"])
    assert vals["surprisal_mean"] == pytest.approx(surprisal.mean(), rel=1e-4)
    assert vals["surprisal_max"] == pytest.approx(surprisal.max(), rel=1e-4)
    for layer, att in enumerate(out.attentions):
        p = att[0].double().numpy()  # [head, q, k]
        q = np.arange(1, p.shape[1])  # rows that see more than one key
        ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)[:, q] / np.log(q + 1)
        np.testing.assert_allclose(f.attention[layer, :, 0], ent.mean(-1), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(f.attention[layer, :, 1], p[:, q, 0].mean(-1), rtol=1e-4, atol=1e-5)
    # characters and repetition, by hand
    assert char_features("ab 12!", 3)[:4] == pytest.approx([2 / 6, 2 / 6, 1 / 6, 1 / 6])
    assert repetition([1, 2, 3, 1, 2, 3, 1, 2, 3]) == pytest.approx(1 - 3 / 7)


def test_ledoit_wolf_gaussian_matches_sklearn(fitted) -> None:  # type: ignore[no-untyped-def]
    from lmlens_anomaly.detector import fit_gaussian

    x = np.random.default_rng(3).normal(size=(50, 12)) @ np.random.default_rng(4).normal(size=(12, 12))
    g = fit_gaussian(x)
    lw = LedoitWolf().fit(x)
    y = np.random.default_rng(5).normal(size=(4, 12))
    expected = [float((r - lw.location_) @ np.linalg.inv(lw.covariance_) @ (r - lw.location_)) for r in y]
    np.testing.assert_allclose(g.distance(y), expected, rtol=1e-8)


def test_fitted_tails_match_scipy(fitted) -> None:  # type: ignore[no-untyped-def]
    analyzer, _, _ = fitted
    detector = Detector.from_artifact(analyzer.load_artifact(KIND, "t-gpt2"))
    assert set(detector.config["signals"]) >= {"characters", "repetition", "surprisal_mean", "attention_entropy"}
    for name, cfg in detector.config["tails"].items():
        tail = detector.tail(name)
        points = np.array([cfg["threshold"] + 0.5 * cfg["scale"], tail.sample[-1] * 3 + cfg["scale"]])
        points = points[points > cfg["threshold"]]
        expected = np.log(cfg["rate"]) + genpareto.logsf(points - cfg["threshold"], cfg["shape"], scale=cfg["scale"])
        np.testing.assert_allclose(tail.log_sf(points), expected, rtol=1e-9, err_msg=name)


# --- fit, save, load elsewhere, detect -------------------------------------------------


def test_fit_reports_progress_and_metrics(fitted) -> None:  # type: ignore[no-untyped-def]
    analyzer, info, progress = fitted
    assert info.kind == KIND and info.name == "t-gpt2" and info.model_name == "tiny-gpt2"
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] > 0.9
    m = info.metrics
    assert m["n_fit"] + m["n_held"] == 44 and 0.0 <= m["held_fpr"] <= 0.2
    assert [a.name for a in analyzer.artifacts(KIND)].count("t-gpt2") == 1


def test_detect_orders_odd_inputs_and_reads_by_key(fitted, sentences) -> None:  # type: ignore[no-untyped-def]
    analyzer, _, _ = fitted
    normal = analyzer.detect_anomalies(sentences[71], detector="t-gpt2")
    repeated = analyzer.detect_anomalies("the " * 40, detector="t-gpt2")
    noise = analyzer.detect_anomalies("zq#x@@ 9f9f9f $$%% kkqq zz!! ##88 ~~~ {{}}", detector="t-gpt2")
    assert noise.score > normal.score and repeated.score > normal.score
    assert noise["is_anomaly"] is True and noise.is_anomaly
    fired = {s.name for s in noise.anomaly_types}
    assert "characters" in fired
    char = next(s for s in noise["anomaly_types"] if s["name"] == "characters")
    assert char["value"] > char["normal_high"] and char["p_value"] < 1e-3
    assert "repetition" in {s.name for s in repeated.anomaly_types}
    result = analyzer.analyze(sentences[71], ["anomaly"], {"anomaly": {"detector": "t-gpt2"}})
    found = result.methods["anomaly"]
    assert found["score"] == pytest.approx(normal.score)
    assert found.token_scores.shape == (len(result.tokens),)
    assert found.token_scores[0] == 0.0  # the causal sink position carries no score


def test_check_flags_drop_signal_groups(fitted, sentences) -> None:  # type: ignore[no-untyped-def]
    analyzer, _, _ = fitted
    found = analyzer.detect_anomalies(sentences[72], False, False, detector="t-gpt2")
    groups = {s.group for s in found.signals}
    assert groups == {"surprisal", "text"}
    assert any("check_attention=False" in n for n in found.notes)


def test_load_in_another_process_and_detect(fitted, sentences, artifact_root) -> None:  # type: ignore[no-untyped-def]
    analyzer, _, _ = fitted
    text = "qq## 88zz @@!! 0x9f ~~"
    here = analyzer.detect_anomalies(text, detector="t-gpt2")
    script = textwrap.dedent(
        f"""
        import json
        from lmlens import Analyzer
        a = Analyzer("tiny-gpt2")
        r = a.detect_anomalies({text!r}, detector="t-gpt2")
        print(json.dumps({{"score": r.score, "is_anomaly": r.is_anomaly,
                          "fired": sorted(s.name for s in r.anomaly_types)}}))
        """
    )
    env = {
        **os.environ,
        "LMLENS_CACHE_DIR": str(artifact_root),
        "LMLENS_ARTIFACT_DIR": str(artifact_root / "artifacts"),
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there["score"] == pytest.approx(here.score, rel=1e-5)
    assert there["is_anomaly"] == here.is_anomaly
    assert there["fired"] == sorted(s.name for s in here.anomaly_types)


def test_long_text_names_the_anomalous_window(fitted, sentences) -> None:  # type: ignore[no-untyped-def]
    analyzer, _, _ = fitted
    odd = " zq#x@@ 9f9f9f $$%% kkqq zz!! ##88 {{~~}} "
    text = " ".join(sentences[73:78]) + odd + " ".join(sentences[78:82])
    found = analyzer.detect_anomalies(text, detector="t-gpt2", window_size=64)
    assert found.n_windows > 3 and found["is_anomaly"]
    start = text.index(odd)
    worst = max(found.windows, key=lambda w: w.score)
    assert worst.char_start <= start + len(odd) // 2 <= worst.char_end
    assert worst in found.anomalous_windows
    assert found.token_scores.shape == (len(found.tokens),)


# --- refusals --------------------------------------------------------------------------


def test_detector_for_another_model_is_refused(fitted, make_analyzer, sentences) -> None:  # type: ignore[no-untyped-def]
    other = make_analyzer("llama")
    with pytest.raises(LmlensError) as err:
        other.detect_anomalies(sentences[0], detector="t-gpt2")
    assert err.value.code == "artifact_model_mismatch"
    with pytest.raises(LmlensError) as err:
        other.analyze(sentences[0], ["anomaly"], {"anomaly": {"detector": "t-gpt2"}})
    assert err.value.code == "artifact_model_mismatch"


def test_bad_fit_inputs_get_typed_errors(make_analyzer, sentences) -> None:  # type: ignore[no-untyped-def]
    analyzer = make_analyzer("gpt2")
    with pytest.raises(LmlensError) as err:
        analyzer.fit_anomaly_detector(sentences[:5], name="few")
    assert err.value.code == "too_few_normal_texts" and str(MIN_TEXTS) in err.value.message
    texts = sentences[:MIN_TEXTS]
    with pytest.raises(LmlensError) as err:
        analyzer.fit_anomaly_detector([*texts[:-1], "   "], name="blank")
    assert err.value.code == "empty_text" and err.value.field == f"normal_texts[{MIN_TEXTS - 1}]"
    mixed = [{"text": t, "model": "tiny-gpt2" if i % 2 else "tiny-llama"} for i, t in enumerate(texts)]
    with pytest.raises(LmlensError) as err:
        analyzer.fit_anomaly_detector(mixed, name="mixed")
    assert err.value.code == "mixed_models"
    with pytest.raises(LmlensError) as err:
        analyzer.fit_anomaly_detector(texts, name="x", target_fpr=0.7)
    assert err.value.code == "invalid_params" and err.value.field == "target_fpr"
    with pytest.raises(LmlensError) as err:
        analyzer.detect_anomalies("   ", detector="t-gpt2")
    assert err.value.code == "empty_text"
    with pytest.raises(LmlensError) as err:
        analyzer.detect_anomalies("some text", detector="no-such-detector")
    assert err.value.code == "artifact_not_found"


# --- job, CLI, panel -------------------------------------------------------------------


def test_job_cli_and_panel(fitted, sentences, tmp_path) -> None:  # type: ignore[no-untyped-def]
    analyzer, _, _ = fitted
    from lmlens_anomaly.jobs import FIT_JOB, FitParams

    assert FIT_JOB.kind == "anomaly.fit"
    seen: list[float] = []

    class Context:
        def __init__(self) -> None:
            self.analyzer = analyzer

        def progress(self, fraction: float, message: str) -> None:
            seen.append(fraction)

    out = FIT_JOB.run(FitParams(normal_texts=sentences[:MIN_TEXTS], name="t-job", target_fpr=0.05), Context())
    assert out["name"] == "t-job" and seen[-1] == 1.0 and len(seen) > 3

    result = analyzer.analyze("zz## qq@@ 88!!", ["anomaly"], {"anomaly": {"detector": "t-job"}})
    from lmlens_anomaly.panels import anomaly_panel

    anomaly_panel(result, save_path=str(tmp_path / "a.html"))
    html = (tmp_path / "a.html").read_text()
    assert "rgba(220, 40, 40" in html and "characters" in html

    import click
    from click.testing import CliRunner

    from lmlens_anomaly import register_commands

    group = click.Group("lmlens")
    register_commands(cli=group)

    corpus = tmp_path / "normal.txt"
    corpus.write_text("\n\n".join(sentences[:3]))
    ran = CliRunner().invoke(group, ["anomaly", "fit", str(corpus), "--name", "c1", "--model", "tiny-gpt2"])
    assert ran.exit_code == 2 and "too_few_normal_texts" in ran.output
