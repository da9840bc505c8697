"""The product description's Python examples (../shared/SEED.md), as its readers type them.

Each block below is the seed's text with two adaptations only: the import
(``from src.core import InterpretabilityAnalyzer`` -> ``from lmlens import Analyzer as
InterpretabilityAnalyzer``) and the model name (``"gpt2"`` -> the tiny random GPT-2, so the
test needs no download), plus one for time: the long text has 1000 words instead of 10000
(the tiny model's tokenizer is byte-level, so 10000 words are 50000 tokens, 195 windows:
minutes on a busy CI machine; 1000 words still need 19 windows). Methods and verbs that no
installed plugin provides yet (``sae``, failure prediction, anomaly detection: plugins built
in parallel) are skipped with the reason; the rest of their block still runs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from lmlens import Analyzer
from lmlens.plugins import PluginHost

IMPORT = "from lmlens import Analyzer as InterpretabilityAnalyzer\n"
MODEL = "tiny-gpt2"

BASIC = '''
# Initialize analyzer
analyzer = InterpretabilityAnalyzer(model_name="gpt2")

# Analyze text with multiple methods
results = analyzer.analyze(
    "The cat sat on the mat",
    methods=["attention", "importance", "sae", "head_patterns"]
)

# Access results
attention_patterns = results["attention"]["patterns"]
token_importance = results["importance"]["token_importance"]

# Visualize attention patterns
fig = analyzer.visualize_attention(
    results["attention"],
    layer=0,
    head=0,
    save_path="attention_viz.png"
)
'''

FAILURE = '''
# Predict failure probability
failure_result = analyzer.predict_failure_probability(
    "the the the the the",
    threshold=0.5
)
print(f"Failure probability: {failure_result['failure_probability']:.2%}")
'''

ANOMALY = '''
# Detect anomalies
anomaly_result = analyzer.detect_anomalies(
    "aaaaaaaaaaaaaaaaaaa",
    check_attention=True,
    check_activations=True
)
if anomaly_result["is_anomaly"]:
    print(f"Anomaly detected: {anomaly_result['anomaly_types']}")
'''

EFFICIENT = '''
# Analyze long sequences efficiently
long_text = " ".join(["word"] * 10000)

# Method 1: Chunked processing
results = analyzer.analyze_efficient(
    long_text,
    methods=["attention"],
    use_chunking=True,
    max_length=4096
)

# Method 2: Streaming analysis for documents
document = "Very long document text..."
streaming_results = analyzer.analyze_document_streaming(
    document,
    methods=["attention", "importance"],
    window_size=512,
    stride=256
)

# Check memory requirements before processing
requirements = analyzer.estimate_processing_requirements(
    long_text,
    methods=["attention", "importance"]
)
print(f"Estimated memory: {requirements['memory_estimate_gb']['total_gb']:.2f} GB")
'''

SEED_CONFIG = """
# config.yaml
model:
  default_model: gpt2
  device: cuda
  fp16: true

analysis:
  default_methods:
    - attention
    - importance
  cache_results: true

api:
  rate_limit: 100
  timeout: 30

visualization:
  default_colormap: viridis
  interactive: true
"""


def adapt(block: str) -> str:
    """The adaptations: the import, the model name, and the long text's length."""
    assert 'model_name="gpt2"' in block or "model_name" not in block
    block = textwrap.dedent(block).replace('model_name="gpt2"', f'model_name="{MODEL}"')
    return IMPORT + block.replace('["word"] * 10000', '["word"] * 1000')


def run(code: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    namespace = {} if namespace is None else namespace
    exec(compile(code, "<SEED.md>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the seed saves pictures in the working directory
    return tmp_path


def _missing(host: PluginHost, methods: list[str]) -> list[str]:
    return [m for m in methods if m not in host.methods]


SEED_METHODS = ["attention", "importance", "sae", "head_patterns"]


def test_basic_usage_as_written(host: PluginHost, in_tmp: Path) -> None:
    missing = _missing(host, SEED_METHODS)
    if missing:
        pytest.skip(f"not installed yet: {', '.join(missing)} (built in parallel); the block minus them runs below")
    found = run(adapt(BASIC))
    assert (in_tmp / "attention_viz.png").stat().st_size > 1000
    assert found["results"]["sae"] is found["results"].methods["sae"]


def test_basic_usage_with_the_installed_methods(host: PluginHost, in_tmp: Path) -> None:
    missing = _missing(host, SEED_METHODS)
    block = adapt(BASIC)
    for name in missing:  # the only change: methods no installed plugin provides are left out
        block = block.replace(f', "{name}"', "")
    found = run(block)
    results = found["results"]
    assert found["attention_patterns"] is results.methods["attention"].patterns
    assert found["attention_patterns"].shape[:2] == (2, 4)  # tiny GPT-2: 2 layers x 4 heads
    importance = results.methods["importance"]
    assert found["token_importance"] is importance.scores and len(found["token_importance"]) == len(results.tokens)
    assert not importance.unreliable and importance.method_reason  # the default says why it was chosen
    assert (in_tmp / "attention_viz.png").read_bytes()[:4] == b"\x89PNG"
    assert found["fig"] is not None


@pytest.mark.parametrize(("block", "verb"), [(FAILURE, "predict_failure_probability"), (ANOMALY, "detect_anomalies")])
def test_failure_and_anomaly_verbs(
    host: PluginHost, in_tmp: Path, block: str, verb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyzer = Analyzer(MODEL, plugins=host)
    try:
        getattr(analyzer, verb)
    except AttributeError:
        pytest.skip(f"analyzer.{verb} comes from a plugin that is not installed yet (built in parallel)")
    if verb == "predict_failure_probability":
        # the shipped predictor is for smollm2-135m: fit one for the tiny model first, as the
        # seed's "Training Custom Models" section does (label 1: the model fails)
        monkeypatch.setenv("LMLENS_ARTIFACT_DIR", str(in_tmp / "artifacts"))
        pairs = [(f"{i} * {i + 3} =", 1) for i in range(12)] + [(f"the {w} sat", 0) for w in "abcdefghijkl"]
        analyzer.train_failure_predictor(training_data=pairs, evaluate=False)
    found = run(adapt(block), {"analyzer": analyzer})
    if verb == "predict_failure_probability":
        assert 0.0 <= found["failure_result"]["failure_probability"] <= 1.0


def test_memory_efficient_processing(host: PluginHost, in_tmp: Path, capsys) -> None:
    found = run(adapt(EFFICIENT), {"analyzer": Analyzer(MODEL, plugins=host)})
    document = found["results"]
    # max_length=4096 is above the tiny model's 512 positions: clamped, and the result says so
    assert document.window_size == 512 and document.requested_window_size == 4096
    assert document.notes and "clamped" in document.notes[0]
    assert document.n_tokens == sum(1 for _ in found["long_text"].encode())  # byte-level tokenizer
    assert len(found["streaming_results"]) == 1  # a short document: one window, computed lazily
    total = found["requirements"].memory_estimate_gb.total_gb
    assert capsys.readouterr().out.strip() == f"Estimated memory: {total:.2f} GB"


def test_the_seed_config_file_names_the_flat_keys(tmp_path: Path) -> None:
    from lmlens_http.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(SEED_CONFIG))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = info.value.message
    assert info.value.code == "invalid_config"
    for hint in ("model.default_model -> default_model", "model.device -> model_device",
                 "api.timeout -> request_timeout_s", "api.rate_limit -> rate_limit",
                 "model.fp16: no equivalent (set MODEL_DTYPE=float16)"):
        assert hint in message
    flat = tmp_path / "flat.yaml"
    flat.write_text("default_model: tiny-gpt2\nmodel_device: cpu\nrate_limit: 100\nrequest_timeout_s: 30\n")
    config = load_config(flat, env={})
    assert (config.default_model, config.model_device, config.rate_limit) == ("tiny-gpt2", "cpu", 100)
