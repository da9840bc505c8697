"""The Analyzer: one shared pass, typed errors, caching, encodings."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from lmlens import (
    Analyzer,
    EmptyTextError,
    InvalidParamsError,
    Method,
    Need,
    Result,
    TextTooLongError,
    UnknownMethodError,
    UnknownModelError,
    hookimpl,
    wire,
)
from lmlens.cache import MemoryCache
from lmlens.errors import LmlensError, MethodFailedError
from lmlens.plugins import PluginHost
from lmlens.settings import Settings


class CountParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    layer: int = 0


class ResidNorm(Result, frozen=True, kw_only=True, tag="resid_norm"):
    norms: wire.Float32Array  # [pos]


class Broken(Result, frozen=True, kw_only=True, tag="broken"):
    pass


def _resid_norm_needs(info, params: CountParams):
    return [Need(f"blocks.{params.layer}.resid_post", lambda t: t[0].norm(dim=-1), name="rn")]


RESID_NORM = Method(
    name="resid_norm",
    description="norm of the residual stream after a block",
    params=CountParams,
    result=ResidNorm,
    needs=_resid_norm_needs,
    run=lambda trace, params: ResidNorm(norms=trace["rn"].numpy(force=True)),
)
BROKEN = Method(
    name="broken",
    description="always raises",
    params=CountParams,
    result=Broken,
    needs=lambda info, params: [],
    run=lambda trace, params: 1 / 0,
)


class ExtraMethods:
    @hookimpl
    def register_methods(self, register):
        register(RESID_NORM)
        register(BROKEN)


@pytest.fixture
def host() -> PluginHost:
    host = PluginHost()
    host.register(ExtraMethods(), "extra")
    return host


@pytest.fixture
def analyzer(tiny_models, host, tmp_path) -> Analyzer:
    settings = Settings(cache_dir=str(tmp_path), max_sequence_length=64, max_text_chars=500)
    return Analyzer(tiny_models["llama"], settings=settings, plugins=host)


def test_all_methods_share_one_forward_pass(analyzer: Analyzer) -> None:
    model = analyzer.model.base_model
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        result = analyzer.analyze("one pass", methods=["attention", "resid_norm"],
                                  params={"resid_norm": {"layer": 1}})
    finally:
        handle.remove()
    assert calls == [1]
    assert set(result.methods) == {"attention", "resid_norm"}
    assert result.methods["resid_norm"].norms.shape == (len("one pass"),)
    patterns = result.methods["attention"].patterns
    assert patterns.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(patterns.sum(-1), 1.0, atol=1e-5)
    # causal model: nothing attends to the future
    assert np.triu(patterns[0, 0], k=1).max() == 0.0


def test_result_tokens_carry_character_offsets(analyzer: Analyzer) -> None:
    text = "naïve café"
    result = analyzer.analyze(text, methods=["attention"])
    for token in result.tokens:
        assert text[token.start:token.end] == token.text
    covered = {i for t in result.tokens for i in range(t.start, t.end)}
    assert covered == set(range(len(text)))
    # byte-level tokens: the two bytes of "ï" share its one character
    assert [t.text for t in result.tokens].count("ï") == 2


def test_entropy_matches_float64_reference(analyzer: Analyzer) -> None:
    result = analyzer.analyze("entropy of attention", methods=["attention"]).methods["attention"]
    p = result.patterns.astype(np.float64)  # [layer, head, q, k]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    np.testing.assert_allclose(result.entropy, -plogp.sum(-1).mean(-1), rtol=1e-5, atol=1e-6)


def test_layer_and_head_selection(analyzer: Analyzer) -> None:
    full = analyzer.analyze("pick some", methods=["attention"]).methods["attention"]
    part = analyzer.analyze("pick some", methods=["attention"],
                            params={"attention": {"layers": [-1], "heads": [2, 0]}}).methods["attention"]
    assert part.layers == [1] and part.heads == [2, 0]
    np.testing.assert_allclose(part.patterns[0, 0], full.patterns[1, 2])
    np.testing.assert_allclose(part.entropy[0], full.entropy[1, [2, 0]])
    no_maps = analyzer.analyze("pick some", methods=["attention"],
                               params={"attention": {"patterns": False}}).methods["attention"]
    assert no_maps.patterns is None
    np.testing.assert_allclose(no_maps.entropy, full.entropy, rtol=1e-6)


@pytest.mark.parametrize(
    ("text", "error", "code"),
    [("", EmptyTextError, "empty_text"), ("   \n\t", EmptyTextError, "empty_text"),
     ("x" * 501, TextTooLongError, "text_too_long"), ("y" * 65, TextTooLongError, "text_too_long")],
)
def test_bad_text_is_a_typed_error(analyzer: Analyzer, text: str, error: type, code: str) -> None:
    with pytest.raises(error) as info:
        analyzer.analyze(text, methods=["attention"])
    assert info.value.code == code and info.value.field == "text"


def test_non_string_text(analyzer: Analyzer) -> None:
    with pytest.raises(InvalidParamsError, match="must be a string"):
        analyzer.analyze(42, methods=["attention"])  # type: ignore[arg-type]


def test_unknown_method_lists_installed_ones(analyzer: Analyzer) -> None:
    with pytest.raises(UnknownMethodError) as info:
        analyzer.analyze("hello", methods=["attention", "telepathy"])
    assert info.value.code == "unknown_method"
    assert "telepathy" in info.value.message
    assert "attention" in info.value.message and "resid_norm" in info.value.message


@pytest.mark.parametrize(
    ("methods", "params", "match"),
    [
        (["attention"], {"attention": {"layers": "all"}}, r"params.attention|Expected"),
        (["attention"], {"attention": {"colour": "red"}}, "colour"),
        (["attention"], {"attention": {"layers": [5]}}, "layer 5 does not exist"),
        (["attention"], {"resid_norm": {}}, "not among the requested"),
        ([], None, "at least one method"),
        ("attention;rm", None, "unknown method"),
    ],
)
def test_invalid_params_are_typed_errors(analyzer, methods, params, match) -> None:
    with pytest.raises((InvalidParamsError, UnknownMethodError), match=match):
        analyzer.analyze("hello", methods=methods, params=params)


def test_a_failing_method_is_reported_with_its_name(analyzer: Analyzer) -> None:
    with pytest.raises(MethodFailedError, match="'broken' failed: ZeroDivisionError"):
        analyzer.analyze("hello", methods=["broken"])


def test_unknown_model(host, tmp_path) -> None:
    analyzer = Analyzer("no/such/model", plugins=host, settings=Settings(cache_dir=str(tmp_path)))
    with pytest.raises(UnknownModelError) as info:
        analyzer.analyze("hello")
    assert "smollm2-135m" in info.value.message and info.value.field == "model"


def test_cache_hit_returns_the_same_result(tiny_models, host, tmp_path) -> None:
    cache = MemoryCache()
    analyzer = Analyzer(tiny_models["gpt2"], plugins=host, cache=cache,
                        settings=Settings(cache_dir=str(tmp_path)))
    first = analyzer.analyze("cache me", methods=["attention", "resid_norm"])
    second = analyzer.analyze("cache me", methods=["resid_norm", "attention"])
    assert not first.cached and second.cached and len(cache) == 1
    np.testing.assert_array_equal(first.methods["attention"].patterns, second.methods["attention"].patterns)
    np.testing.assert_array_equal(first.methods["resid_norm"].norms, second.methods["resid_norm"].norms)
    analyzer.analyze("cache me", methods=["attention", "resid_norm"], params={"resid_norm": {"layer": 1}})
    assert len(cache) == 2  # other params, other key


def test_cache_key_changes_with_plugin_version(tiny_models, tmp_path) -> None:
    from lmlens.cache import MethodKey, cache_key

    def key(version: str) -> str:
        mk = MethodKey("attention", "attention", version, "1", msgspec.Raw(b"\x80"))
        return cache_key("t", "m", "r", [mk])

    assert key("0.1.0") != key("0.2.0")


@pytest.mark.parametrize("encode,decode", [(wire.to_json, wire.from_json), (wire.to_msgpack, wire.from_msgpack)])
def test_results_round_trip_through_json_and_msgpack(analyzer, host, encode, decode) -> None:
    result = analyzer.analyze("round trip", methods=["attention", "resid_norm"])
    typed = wire.result_type(m.result for m in host.methods.values())
    back = decode(encode(result), typed)
    assert back.tokens == result.tokens and back.model == result.model
    np.testing.assert_allclose(back.methods["attention"].patterns, result.methods["attention"].patterns)
    assert back.methods["attention"].patterns.dtype == np.float32
    np.testing.assert_allclose(back.methods["resid_norm"].norms, result.methods["resid_norm"].norms)


def test_msgpack_packs_arrays_compactly(analyzer) -> None:
    result = analyzer.analyze("z" * 60, methods=["attention"])
    n_floats = result.methods["attention"].patterns.size
    assert len(wire.to_msgpack(result)) < n_floats * 4 * 1.05 + 10_000
    assert len(wire.to_json(result)) > n_floats * 4


def test_progress_reports_each_stage(analyzer) -> None:
    events: list[tuple[str, str]] = []
    analyzer.analyze("progress", methods=["attention", "resid_norm"], progress=lambda s, m: events.append((s, m)))
    assert events == [("start", ""), ("end", ""), ("start", "attention"), ("end", "attention"),
                      ("start", "resid_norm"), ("end", "resid_norm")]


def test_no_patterns_needed_runs_sdpa(analyzer) -> None:
    analyzer.analyze("sdpa", methods=["resid_norm"])
    assert analyzer.model.model.config._attn_implementation == "sdpa"
    analyzer.analyze("eager", methods=["attention"])
    eager = "lmlens_eager" if analyzer.model.info.family == "llama" else "eager"  # lmlens.eager.FAMILIES
    assert analyzer.model.model.config._attn_implementation == eager



def test_submit_validates_before_queueing(analyzer) -> None:
    with pytest.raises(InvalidParamsError, match="invalid params for job 'analyze_batch'"):
        analyzer.submit("analyze_batch", {"texts": "not a list"})
    with pytest.raises(LmlensError, match="unknown job kind") as info:
        analyzer.submit("teleport", {})
    assert info.value.code == "unknown_job_kind"


def test_job_queue_hook_receives_valid_jobs(analyzer) -> None:
    submitted = []

    class Queue:
        def submit(self, kind, params):
            submitted.append((kind, params))
            return "job-1"

        def status(self, job_id):
            return {"id": job_id, "status": "queued"}

    class QueuePlugin:
        @hookimpl
        def job_queue(self):
            return Queue()

    analyzer.plugins.register(QueuePlugin(), "queue")
    try:
        handle = analyzer.submit("analyze_batch", {"texts": ["a", "b"]})
    finally:
        analyzer.plugins.pm.unregister(name="queue")
    assert handle.id == "job-1" and handle.status()["status"] == "queued"
    assert submitted == [("analyze_batch", {"texts": ["a", "b"]})]


def test_analyze_batch_job_resumes_from_done_items(analyzer) -> None:
    from lmlens.default_plugins.jobs import ANALYZE_BATCH, AnalyzeBatchParams

    class Context:
        def __init__(self, done):
            self.items = dict(done)
            self.analyzer = analyzer
            self.events = []

        def progress(self, fraction, message):
            self.events.append(fraction)

        def done_items(self):
            return dict(self.items)

        def item_done(self, index, value):
            self.items[index] = value

    params = AnalyzeBatchParams(texts=["one", "two", "three"], methods=["resid_norm"])
    first = Context({})
    full = ANALYZE_BATCH.run(params, first)
    resumed = Context({0: first.items[0], 1: first.items[1]})
    again = ANALYZE_BATCH.run(params, resumed)
    assert len(full) == 3
    for a, b in zip(again, full, strict=True):  # timings differ between runs; the analysis does not
        assert a["tokens"] == b["tokens"] and a["methods"] == b["methods"]
    assert resumed.events == [1.0]  # only the third text was analysed again
    assert full[2]["text"] == "three"


def test_allowed_models_limit_what_loads(tiny_models, host, tmp_path) -> None:
    settings = Settings(cache_dir=str(tmp_path), allowed_models=["tiny-gpt2"], default_model="tiny-gpt2")
    analyzer = Analyzer(plugins=host, settings=settings)
    assert analyzer.analyze("ok", methods=["resid_norm"]).model.name == "tiny-gpt2"
    for spec in ["tiny-llama", str(tmp_path), "someone/model"]:
        with pytest.raises(UnknownModelError, match="not allowed here"):
            analyzer.analyze("no", methods=["resid_norm"], model=spec)
    assert analyzer.load_options().allow_hub is False


def test_allowed_models_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("LMLENS_MODELS", "tiny-gpt2, minilm-l6")
    assert Settings.from_env().allowed_models == ["tiny-gpt2", "minilm-l6"]
    monkeypatch.delenv("LMLENS_MODELS")
    assert Settings.from_env().allowed_models is None


def test_integers_beyond_64_bits_are_invalid_params(tiny_models, host, tmp_path) -> None:
    settings = Settings(cache_dir=str(tmp_path))
    analyzer = Analyzer(tiny_models["gpt2"], plugins=host, cache=MemoryCache(), settings=settings)
    with pytest.raises(InvalidParamsError, match="64 bits"):
        analyzer.analyze("big", methods=["resid_norm"], params={"resid_norm": {"layer": 2**70}})
