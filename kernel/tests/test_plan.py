"""Plan once, namespaced needs, registration checks, plugin verbs, one request path."""

from __future__ import annotations

import msgspec
import pytest

from lmlens import Analyzer, InvalidParamsError, Method, Need, Plan, Result, UnknownMethodError, hookimpl
from lmlens.plugins import PluginHost
from lmlens.settings import Settings

CALLS: dict[str, int] = {}


class P(msgspec.Struct, frozen=True, kw_only=True):
    layer: int = 0


def _plan(name: str):
    def plan(info, params: P) -> Plan:
        CALLS[name] = CALLS.get(name, 0) + 1
        if params.layer >= info.n_layers:
            raise InvalidParamsError(f"layer {params.layer} out of range", field=f"params.{name}.layer")
        # both methods name their need "state": the kernel keeps them apart
        return Plan(needs=[Need(f"blocks.{params.layer}.resid_post", name="state")], state={"planned": name})

    return plan


def _result(tag: str) -> type[Result]:
    return type(f"R_{tag}", (Result,), {"__annotations__": {"norm": float, "state": str}}, frozen=True, tag=tag)


R_A, R_B = _result("norm_a"), _result("norm_b")


def _run(result: type[Result]):
    def run(trace, params: P) -> Result:
        return result(norm=float(trace["state"].norm()), state=trace.state["planned"])  # type: ignore[call-arg]

    return run


class TwoMethods:
    @hookimpl
    def register_methods(self, register) -> None:
        for name, result in (("norm_a", R_A), ("norm_b", R_B)):
            register(
                Method(
                    name=name, description="", params=P, result=result,
                    run=_run(result), plan=_plan(name),  # no needs: the plan gives them
                )
            )

    @hookimpl
    def register_verbs(self, register) -> None:
        register("count_tokens", lambda analyzer, text: len(analyzer.tokenize(analyzer.model, text)[1]))


@pytest.fixture
def analyzer(tiny_models, tmp_path) -> Analyzer:
    host = PluginHost(load=[])
    host.register(TwoMethods(), "two")
    return Analyzer(tiny_models["llama"], settings=Settings(cache_dir=str(tmp_path)), plugins=host)


def test_each_method_is_planned_once_and_sees_its_own_needs(analyzer: Analyzer) -> None:
    CALLS.clear()
    result = analyzer.analyze("hello there", ["norm_a", "norm_b"], {"norm_b": {"layer": 1}})
    assert CALLS == {"norm_a": 1, "norm_b": 1}
    a, b = result.methods["norm_a"], result.methods["norm_b"]
    assert a.state == "norm_a" and b.state == "norm_b"
    assert a.norm != b.norm  # layer 0 vs layer 1, same need name


def test_every_methods_params_are_checked_before_any_work(analyzer: Analyzer, monkeypatch) -> None:
    ran = []
    monkeypatch.setattr("lmlens.request.run_forward", lambda *a, **k: ran.append(1) or {})
    with pytest.raises(InvalidParamsError) as exc:
        analyzer.analyze("hello", ["norm_a", "norm_b"], {"norm_b": {"layer": 99}})
    assert exc.value.field == "params.norm_b.layer" and ran == []


def test_register_verbs_adds_analyzer_verbs(analyzer: Analyzer) -> None:
    assert analyzer.count_tokens("abc") == len(analyzer.tokenize(analyzer.model, "abc")[1])
    with pytest.raises(AttributeError, match="lmlens-sae"):
        analyzer.train_sae  # noqa: B018 - a known verb whose plugin is absent names the plugin


def test_registration_checks_are_load_errors() -> None:
    class NotAStruct:
        pass

    class Wrong(Result, frozen=True, tag="something_else"):
        pass

    class Bad:
        @hookimpl
        def register_methods(self, register) -> None:
            register(Method(name="bad", description="", params=NotAStruct, result=Wrong,  # type: ignore[arg-type]
                            needs=lambda i, p: [], run=lambda t, p: Wrong()))

    class Mistagged:
        @hookimpl
        def register_methods(self, register) -> None:
            register(Method(name="mistagged", description="", params=P, result=Wrong,
                            needs=lambda i, p: [], run=lambda t, p: Wrong()))

    host = PluginHost(load=[])
    host.register(Bad(), "bad")
    host.register(Mistagged(), "mistagged")
    errors = {i.name: i.error or "" for i in host.infos()}
    assert "params must be a msgspec.Struct" in errors["bad"]
    assert "tagged 'something_else'" in errors["mistagged"]
    assert "bad" not in host.methods and "mistagged" not in host.methods


def test_the_estimate_refuses_what_analyze_refuses(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("gpt2")
    limited = Analyzer(
        analyzer.model, settings=Settings(cache_dir=analyzer.settings.cache_dir, max_sequence_length=16),
        plugins=analyzer.plugins,
    )
    text = "a long enough text to pass sixteen tokens easily, surely"
    found = limited.estimate_processing_requirements(text, ["attention"])
    assert not found.fits and "16" in found.reasons[0]
    with pytest.raises(Exception) as exc:
        limited.analyze(text, ["attention"])
    assert getattr(exc.value, "code", None) == "text_too_long"
    windowed = limited.estimate_processing_requirements(text, ["attention"], window_size=8, stride=4)
    assert windowed.fits and windowed.reasons == []


def test_default_methods_come_from_plugin_tags(tiny_analyzer, tiny_models, tmp_path) -> None:
    assert tiny_analyzer("gpt2").default_methods() == ["attention"]  # tagged "default" by its plugin
    empty = Analyzer(tiny_models["gpt2"], settings=Settings(cache_dir=str(tmp_path)), plugins=PluginHost(load=[]))
    with pytest.raises(UnknownMethodError):
        empty.analyze("hello")


def test_visualize_attention_without_the_attention_plugin_is_unknown_method(tiny_models, tmp_path) -> None:
    bare = Analyzer(tiny_models["gpt2"], settings=Settings(cache_dir=str(tmp_path)), plugins=PluginHost(load=[]))
    with pytest.raises(UnknownMethodError, match="lmlens-attention"):
        bare.visualize_attention(object())  # type: ignore[arg-type]


def test_a_method_needs_a_plan_or_needs() -> None:
    with pytest.raises(TypeError, match="neither needs nor plan"):
        Method(name="empty", description="", params=P, result=R_A, run=_run(R_A))
