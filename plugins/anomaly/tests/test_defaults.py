"""The shipped defaults: present for every built-in model, usable right after install."""

from __future__ import annotations

import pytest

from lmlens import Analyzer
from lmlens_anomaly import DEFAULTS, KIND, default_name

MODELS = ("smollm2-135m", "minilm-l6", "tiny-gpt2", "tiny-llama", "tiny-bert")


def test_every_builtin_model_has_a_shipped_default(plugin_host) -> None:  # type: ignore[no-untyped-def]
    shipped = {d.name for d in DEFAULTS.iterdir() if (d / "artifact.json").exists()}
    assert shipped == {default_name(m) for m in MODELS}
    store = Analyzer("tiny-gpt2", plugins=plugin_host).artifact_store
    listed = {i.name: i for i in store.list(KIND)}
    for model in MODELS:
        info = listed[default_name(model)]
        assert info.builtin and info.model_name == model
        assert 0.0 <= info.metrics["test_fpr"] <= 0.05 or model.startswith("tiny-")


def test_tiny_default_works_without_fitting(tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    analyzer = tiny_analyzer("gpt2")
    odd = analyzer.detect_anomalies("zq#x@@ 9f9f9f $$%% kkqq zz!! ##88 {{~~}} 0x1f 77&&")
    plain = analyzer.detect_anomalies("We went for a walk in the park after lunch and talked about the week.")
    assert odd.detector == "tiny-gpt2-default"
    assert odd.score > plain.score and odd.is_anomaly


@pytest.mark.real
@pytest.mark.parametrize("model", ["smollm2-135m", "minilm-l6"])
def test_real_default_separates_prose_from_noise(real_analyzer, model: str) -> None:  # type: ignore[no-untyped-def]
    analyzer = real_analyzer(model)
    plain = analyzer.detect_anomalies(
        "After dinner we sat on the porch and watched the stars come out, talking about the summer holidays."
    )
    odd = analyzer.detect_anomalies("Zm9yIHRoZSBuZXh0IHRocmVlIGRheXMgdGhlIHdlYXRoZXIgd2lsbCBiZSBzdW5ueQ==")
    assert not plain.is_anomaly, [s.name for s in plain.anomaly_types]
    assert odd.is_anomaly and odd.score > plain.score
