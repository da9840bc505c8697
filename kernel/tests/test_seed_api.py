"""The product description's spellings: mapping access on results and estimates, pictures of one
method's result."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from lmlens import Analyzer, InvalidParamsError, Result, wire
from lmlens.settings import Settings


@pytest.fixture
def analyzer(tiny_models, plugin_host, tmp_path) -> Analyzer:
    return Analyzer(tiny_models["gpt2"], plugins=plugin_host, settings=Settings(cache_dir=str(tmp_path)))


def test_results_read_as_mappings(analyzer: Analyzer) -> None:
    results = analyzer.analyze("The cat sat on the mat", methods=["attention"])
    attention = results["attention"]
    assert attention is results.methods["attention"]
    assert results["attention"]["patterns"] is attention.patterns
    assert list(results.keys()) == ["attention"] and "attention" in results and "importance" not in results
    assert set(attention.keys()) >= {"patterns", "entropy", "layers", "heads"}
    assert attention.get("nothing", 3) == 3 and dict(attention.items())["entropy"] is attention.entropy
    with pytest.raises(KeyError, match="it has: attention"):
        results["importance"]
    with pytest.raises(KeyError, match="has no 'nope'"):
        attention["nope"]
    # a result decoded from the wire reads the same way
    decoded = wire.from_msgpack(wire.to_msgpack(results), wire.result_type([type(attention)]))
    np.testing.assert_array_equal(decoded["attention"]["patterns"], attention.patterns)


def test_estimate_reads_as_a_mapping(analyzer: Analyzer) -> None:
    requirements = analyzer.estimate_processing_requirements("word " * 50, methods=["attention"])
    total = requirements["memory_estimate_gb"]["total_gb"]
    assert total == requirements.memory_estimate_gb.total_gb > 0
    assert requirements["fits"] is True and "n_windows" in list(requirements.keys())


class _Tagged(Result, frozen=True, kw_only=True, tag="tagged_test"):
    value: int


def test_field_access_keeps_msgspec_behaviour() -> None:
    found = _Tagged(value=3)
    assert found["value"] == 3 and found.keys() == ["value"]
    assert msgspec.json.decode(wire.to_json(found)) == {"kind": "tagged_test", "value": 3}


@pytest.mark.parametrize("keep_analysis", [True, False])
def test_visualize_attention_takes_the_method_result(analyzer: Analyzer, tmp_path, keep_analysis: bool) -> None:
    # the seed: analyzer.visualize_attention(results["attention"], layer=0, head=0, save_path=...)
    results = analyzer.analyze("The cat sat on the mat", methods=["attention"])
    attention = results["attention"]
    if not keep_analysis:
        del results  # tokens are then unknown: the picture labels positions
    path = tmp_path / "attention.html"
    layout = analyzer.visualize_attention(attention, layer=0, head=0, save_path=str(path))
    assert layout is not None and path.stat().st_size > 0
    labels = list(layout.xaxis[0].major_label_overrides.values())
    assert labels[1] == ("'h'" if keep_analysis else "'[1]'")  # byte tokens, or positions once they are gone
    png = tmp_path / "attention.png"
    analyzer.visualize_attention(attention, layer=1, head=3, save_path=str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_visualize_refuses_what_is_not_a_result(analyzer: Analyzer) -> None:
    with pytest.raises(InvalidParamsError, match="not dict"):
        analyzer.visualize({"attention": 1}, "attention")
