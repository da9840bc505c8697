"""Long documents: windows, stitching, cancellation, memory estimates and limits."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from lmlens import Analyzer, MemoryLimitError, Method, Need, Result, hookimpl, wire
from lmlens.chunking import owners, plan_windows
from lmlens.errors import InvalidParamsError
from lmlens.plugins import PluginHost
from lmlens.settings import Settings


class P(msgspec.Struct, frozen=True, kw_only=True):
    layer: int = 1


class Norms(Result, frozen=True, kw_only=True, tag="token_norms"):
    norms: wire.Float32Array  # [pos]
    per_layer: wire.Float32Array  # [layer, pos]


def _needs(info, params: P):
    return [Need(f"blocks.{i}.resid_post", lambda t: t[0].norm(dim=-1), name=f"n{i}") for i in range(info.n_layers)]


def _run(trace, params: P) -> Norms:
    per_layer = np.stack([trace[f"n{i}"].numpy(force=True) for i in range(trace.model.info.n_layers)])
    return Norms(norms=per_layer[params.layer], per_layer=per_layer)


TOKEN_NORMS = Method(name="token_norms", description="per-token residual norms", params=P, result=Norms,
                     needs=_needs, run=_run, token_fields={"norms": 0, "per_layer": 1})


class MapsParams(msgspec.Struct, frozen=True, kw_only=True):
    keep: bool = True  # keep the raw maps, or only a per-head summary
    keeps: float | None = None  # what the summary reducer declares it keeps


class Maps(Result, frozen=True, kw_only=True, tag="maps"):
    pass


MAPS = Method(
    name="maps", description="keeps attention maps, or summaries of them", params=MapsParams, result=Maps,
    needs=lambda info, p: [Need(f"blocks.{i}.attn.pattern", None if p.keep else (lambda t: t.sum(-1)), name=f"m{i}",
                                keeps=p.keeps) for i in range(info.n_layers)],
    run=lambda trace, params: Maps(),
)


class Plugin:
    @hookimpl
    def register_methods(self, register):
        register(TOKEN_NORMS)
        register(MAPS)


@pytest.fixture(scope="module")
def host() -> PluginHost:
    host = PluginHost()
    host.register(Plugin(), "token-norms")
    return host


def analyzer_for(tiny_models, host, family: str, **settings) -> Analyzer:
    return Analyzer(tiny_models[family], plugins=host, settings=Settings(**settings))


TEXT = "Streaming keeps memory flat while documents grow. " * 3  # 150 byte tokens


def test_windows_cover_the_document_and_the_last_is_aligned_to_the_end() -> None:
    assert plan_windows(10, 16, 8) == [(0, 10)]
    spans = plan_windows(100, 32, 16)
    assert spans[0] == (0, 32) and spans[-1] == (68, 100)
    assert all(e - s == 32 for s, e in spans)
    covered = set().union(*(range(s, e) for s, e in spans))
    assert covered == set(range(100))


@pytest.mark.parametrize(("window", "stride"), [(0, 1), (8, 0), (8, 9)])
def test_bad_window_parameters(window: int, stride: int) -> None:
    with pytest.raises(InvalidParamsError):
        plan_windows(100, window, stride)


def test_ownership_rules() -> None:
    spans = [(0, 8), (4, 12)]
    causal = owners(spans, 12, causal=True)
    assert causal.tolist() == [0] * 8 + [1] * 4  # the most left context: the earliest window
    encoder = owners(spans, 12, causal=False)
    # token 6: 6 from window 0's start but 1 from its end; 2 and 5 in window 1 -> window 1
    assert encoder.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_one_window_stitches_to_the_single_pass(tiny_models, host, family: str) -> None:
    analyzer = analyzer_for(tiny_models, host, family)
    single = analyzer.analyze(TEXT, methods=["token_norms"]).methods["token_norms"]
    document = analyzer.analyze_efficient(TEXT, methods=["token_norms"], max_length=256)
    assert len(document.windows) == 1 and document.n_tokens == len(TEXT)
    content = slice(1, -1) if family == "bert" else slice(None)  # [CLS] ... [SEP]
    np.testing.assert_allclose(document.per_token["token_norms"]["norms"], single.norms[content], rtol=1e-5)
    np.testing.assert_allclose(document.per_token["token_norms"]["per_layer"], single.per_layer[:, content], rtol=1e-5)
    assert [t.text for t in document.tokens] == list(TEXT)


def test_causal_windows_keep_the_first_windows_values(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "llama")
    single = analyzer.analyze(TEXT, methods=["token_norms"]).methods["token_norms"]
    document = analyzer.analyze_efficient(TEXT, methods=["token_norms"], max_length=64, stride=32, keep_windows=True)
    assert [(w.start, w.end) for w in document.windows] == [(0, 64), (32, 96), (64, 128), (86, 150)]
    stitched = document.per_token["token_norms"]["norms"]
    assert stitched.shape == (150,)
    np.testing.assert_allclose(stitched[:64], single.norms[:64], rtol=1e-5)  # same left context
    second = document.window_results[1].result.methods["token_norms"].norms
    np.testing.assert_allclose(stitched[64:96], second[32:64], rtol=1e-6)
    assert "most-left-context" in document.stitch_rule


def test_windows_stream_lazily_and_breaking_out_stops_the_work(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "gpt2")
    base = analyzer.model.base_model

    def hook_count() -> int:  # transformers keeps hooks of its own once output_attentions was used
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in analyzer.model.model.modules())

    before = hook_count()
    calls: list[int] = []
    handle = base.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        stream = analyzer.analyze_document_streaming(TEXT, methods=["attention"], window_size=32, stride=16)
        assert calls == [] and len(stream) == 9
        for window in stream:
            assert window.window.index == 0
            break
        assert calls == [1]
    finally:
        handle.remove()
    assert hook_count() == before


def test_window_results_carry_window_text_and_offsets(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "bert")
    events: list[tuple[str, str]] = []
    windows = list(analyzer.analyze_document_streaming(TEXT, methods=["token_norms"], window_size=40, stride=40,
                                                       progress=lambda s, m: events.append((s, m))))
    assert [e for e in events if e[0] == "window"] == [("window", f"{i}/4") for i in range(1, 5)]
    for w in windows:
        tokens = w.result.tokens
        assert tokens[0].piece == "[CLS]" and tokens[-1].piece == "[SEP]" and w.offset == 1
        assert w.result.text == TEXT[w.window.char_start:w.window.char_end]
        for t in tokens[1:-1]:
            assert w.result.text[t.start:t.end] == t.text


def test_memory_limit_refuses_with_advice(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "llama", memory_limit_gb=0.0005)
    with pytest.raises(MemoryLimitError) as info:
        analyzer.analyze(TEXT, methods=["attention"])
    assert info.value.code == "memory_limit" and "window_size" in info.value.message
    with pytest.raises(MemoryLimitError):
        list(analyzer.analyze_document_streaming(TEXT * 4, methods=["attention"], window_size=256, stride=128))


def test_estimate_grows_with_kept_patterns_and_window(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "llama")
    text = "x" * 400
    full = analyzer.estimate_processing_requirements(text, ["maps"])
    summary = analyzer.estimate_processing_requirements(text, ["maps"], {"maps": {"keep": False}})
    windowed = analyzer.estimate_processing_requirements(text, ["maps"], window_size=100, stride=50)
    assert full.n_tokens == 400 and windowed.n_windows == 7 and windowed.window_size == 100
    assert summary.memory_estimate_gb.attention_gb < full.memory_estimate_gb.attention_gb
    short = analyzer.estimate_processing_requirements(text[:100], ["maps"])
    ratio = full.memory_estimate_gb.attention_gb / short.memory_estimate_gb.attention_gb
    assert ratio == pytest.approx(16.0)  # attention memory grows with the square of the window
    # a streaming consumer holds one window's result while the next is computed
    assert short.memory_estimate_gb.attention_gb < windowed.memory_estimate_gb.attention_gb
    copied = analyzer.estimate_processing_requirements(text, ["maps"], {"maps": {"keep": False, "keeps": 1.0}})
    assert copied.memory_estimate_gb.attention_gb == pytest.approx(full.memory_estimate_gb.attention_gb)
    mem = full.memory_estimate_gb
    assert mem.total_gb == pytest.approx(mem.weights_gb + mem.activations_gb + mem.attention_gb + mem.gradients_gb)


def test_window_larger_than_the_model_allows(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "gpt2", max_sequence_length=64)
    with pytest.raises(InvalidParamsError, match="exceeds the limit"):
        analyzer.analyze_document_streaming(TEXT, window_size=128, stride=64)


def test_without_chunking_a_long_text_is_refused(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "gpt2")
    with pytest.raises(Exception, match="use_chunking is off"):
        analyzer.analyze_efficient(TEXT, methods=["attention"], use_chunking=False, max_length=64)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_max_length_above_the_limit_is_clamped_and_said(tiny_models, host, family: str) -> None:
    # the README's analyze_efficient(..., max_length=4096) under MAX_SEQUENCE_LENGTH: clamp, and say so
    analyzer = analyzer_for(tiny_models, host, family, max_sequence_length=48)
    n_special = 2 if family == "bert" else 0  # [CLS] ... [SEP]
    document = analyzer.analyze_efficient(TEXT, methods=["token_norms"], max_length=4096)
    assert document.window_size == 48 - n_special and document.requested_window_size == 4096
    assert document.stride == (48 - n_special) // 2
    assert all(w.end - w.start <= 48 - n_special for w in document.windows) and len(document.windows) > 1
    assert "max_length 4096 clamped to" in document.notes[0] and "MAX_SEQUENCE_LENGTH 48" in document.notes[0]
    # the clamped run is the run one would get asking for the limit directly
    direct = analyzer.analyze_efficient(TEXT, methods=["token_norms"], max_length=48 - n_special)
    assert direct.notes == [] and direct.window_size == document.window_size
    np.testing.assert_array_equal(document.per_token["token_norms"]["norms"], direct.per_token["token_norms"]["norms"])
    assert document["notes"] == document.notes  # mapping access on the document result too


def test_a_stride_above_the_clamped_window_is_clamped_too(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "gpt2", max_sequence_length=40)
    document = analyzer.analyze_efficient(TEXT, methods=["token_norms"], max_length=100, stride=60)
    assert (document.window_size, document.stride) == (40, 40)
    assert any("stride 60 clamped" in note for note in document.notes)


def test_memory_limit_message_shows_significant_digits(tiny_models, host) -> None:
    analyzer = analyzer_for(tiny_models, host, "llama", memory_limit_gb=0.00001)
    with pytest.raises(MemoryLimitError) as info:
        analyzer.analyze("short text", methods=["token_norms"])
    message = info.value.message
    assert "the limit is 1e-05 GB" in message
    found = analyzer.estimate_processing_requirements("short text", methods=["token_norms"])
    assert f"weights {found.memory_estimate_gb.weights_gb:.3g})" in message  # 3 significant digits
    assert "estimated 0.0 GB" not in message and found.memory_estimate_gb.weights_gb > 0.0001
