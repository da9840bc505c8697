"""The SAE, failure and anomaly panels in the page, without a browser, in process and through the API.

SAE: a selection in the per-token feature strip sets the option ``feature``; the page then
fetches ``sae_feature`` for it (another method of the same plugin) and the strip draws its
card. Failure and anomaly: gauges and contributing signals show the method's numbers, which
an analyzer the page never sees computes independently here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest
from bokeh.document import Document
from bokeh.models import ColumnDataSource, Div

from lmlens import Analyzer
from lmlens.plugins import PluginHost
from lmlens_dashboard import contract
from lmlens_dashboard.app import Page
from lmlens_dashboard.backend import ApiBackend, InProcessBackend

TEXT = "The cat sat on the mat because the cat was tired"
MODEL = "tiny-gpt2"
METHODS = ["sae_features", "failure", "anomaly"]


class Now(Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


class Recording:
    """A backend that notes every request it passes on: (methods, params)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked: list[tuple[list[str], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def analyze(self, text: str, model: str, methods: Any, params: Any, progress: Any = None) -> Any:
        self.asked.append((list(methods), dict(params)))
        return self.inner.analyze(text, model, methods, params, progress)


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost(load=["sae", "failure", "anomaly", "http"])


@pytest.fixture(scope="module")
def analyzer(host: PluginHost) -> Analyzer:
    return Analyzer(MODEL, plugins=host)


@pytest.fixture(scope="module")
def reference(host: PluginHost) -> Analyzer:
    """The numbers the page must show, from an analyzer the page never sees."""
    return Analyzer(MODEL, plugins=host)


@pytest.fixture(scope="module")
def api(host: PluginHost) -> Iterator[Any]:
    from lmlens_http import create_app
    from lmlens_http.testing import running, tiny_config

    with running(create_app(tiny_config(), host=host)) as server:
        yield server


def page_for(backend: Any) -> Page:
    page = Page(Document(), backend, Now())
    page.later = lambda fn, *args: fn(*args)  # type: ignore[method-assign]
    return page


def analysed(backend: Any, methods: list[str]) -> Page:
    page = page_for(backend)
    page.text.value = TEXT
    page.methods.active = [page.methods.labels.index(m) for m in methods]
    page.start_analysis()
    assert page.status.text.startswith("done"), (page.status.text, page.error.text, page.methods_error.text)
    return page


def drawn(page: Page, method: str, side: int = 0) -> Any:
    children = page.sections[method].holders[side].children
    assert len(children) == 1, f"{method}: {page.sections[method].error.text}"
    return children[0]


def source(layout: Any, name: str) -> Any:
    found = layout.select_one({"type": ColumnDataSource, "name": name})
    assert found is not None, f"no source {name!r} in the drawing"
    return found


def tap_feature(page: Page, feature: int) -> None:
    """What BokehJS sends when a cell of ``feature``'s row is tapped: that cell's index as the selection."""
    strip = source(drawn(page, "sae_features"), "sae-strip")
    cells = [i for i, f in enumerate(strip.data["feature"]) if f == feature]
    strip.selected.indices = [cells[3]]  # a cell of the row, not its first


def card_of(layout: Any) -> Any:
    return layout.select_one({"name": "sae-card"})


@pytest.mark.parametrize("mode", ["in process", "api"])
def test_tapping_a_feature_fetches_its_card(mode: str, analyzer: Analyzer, reference: Analyzer, api: Any,
                                            host: PluginHost, request: Any) -> None:
    if mode == "api":
        inner: Any = ApiBackend(api.url, host=host)
        request.addfinalizer(inner.close)
    else:
        inner = InProcessBackend(analyzer, models=[MODEL])
    backend = Recording(inner)
    page = analysed(backend, ["sae_features"])
    strip = drawn(page, "sae_features")
    assert card_of(strip) is None and "click a cell" in strip.children[0].text
    assert backend.asked == [(["sae_features"], {})]  # no card until a feature is picked

    overview = reference.analyze(TEXT, ["sae_features"]).methods["sae_features"]
    first, second = overview.top_features[1].feature, overview.top_features[4].feature
    tap_feature(page, first)
    assert backend.asked[-1] == (["sae_feature"], {"sae_feature": {"feature": first}})
    layout = drawn(page, "sae_features")
    card = card_of(layout)
    assert card is not None and card.tags == [first], page.sections["sae_features"].error.text
    expected = reference.analyze(TEXT, ["sae_feature"], {"sae_feature": {"feature": first}}).methods["sae_feature"]
    head = card.select_one({"type": Div})
    assert f"feature {first} " in head.text and f"max activation {expected.max_activation:.3g}" in head.text
    assert f"density {expected.density:.3%}" in head.text
    marked = source(layout, "sae-strip")  # the picked feature's row stays marked in the new drawing
    assert {marked.data["feature"][i] for i in marked.selected.indices} == {first}
    assert page.status.text.startswith("done: sae_features redrawn")

    tap_feature(page, second)
    assert card_of(drawn(page, "sae_features")).tags == [second]
    asked = len(backend.asked)
    tap_feature(page, first)  # seen before: drawn from the page's cache, no new request
    assert card_of(drawn(page, "sae_features")).tags == [first] and len(backend.asked) == asked
    source(drawn(page, "sae_features"), "sae-strip").selected.indices = []  # selection cleared: no card
    assert card_of(drawn(page, "sae_features")) is None


def test_failure_and_anomaly_gauges_show_the_results_numbers(analyzer: Analyzer, reference: Analyzer) -> None:
    page = analysed(InProcessBackend(analyzer, models=[MODEL]), METHODS)
    for method in METHODS:
        assert not page.sections[method].error.visible, (method, page.sections[method].error.text)

    expected = reference.analyze(TEXT, ["failure"], {"failure": {"top_k": 32}}).methods["failure"]
    failure = drawn(page, "failure")
    gauge = source(failure, "failure-gauge").data
    assert gauge["value"] == [pytest.approx(expected.failure_probability, abs=1e-9)]
    assert gauge["threshold"] == [expected.threshold]
    bars = source(failure, "failure-signals").data
    assert len(bars["name"]) == len(expected.contributions) == 10  # every signal, not the top 5
    by_name = {s.name: s for s in expected.contributions}
    np.testing.assert_allclose(bars["contribution"], [by_name[n].contribution for n in bars["name"]], atol=1e-9)
    np.testing.assert_allclose(bars["value"], [by_name[n].value for n in bars["name"]], atol=1e-9)
    section = page.sections["failure"]
    assert section.choices["group"][0] == "all" and "logit" in section.choices["group"]
    section.selects["group"].value = "logit"
    bars = source(drawn(page, "failure"), "failure-signals").data
    assert set(bars["name"]) == {s.name for s in expected.contributions if s.group == "logit"} and bars["name"]
    assert set(bars["group"]) == {"logit"}

    expected_a = reference.analyze(TEXT, ["anomaly"]).methods["anomaly"]
    anomaly = drawn(page, "anomaly")
    gauge = source(anomaly, "anomaly-gauge").data
    assert gauge["value"] == [pytest.approx(expected_a.score, abs=1e-9)]
    assert gauge["threshold"] == [pytest.approx(expected_a.threshold, abs=1e-9)]
    bars = source(anomaly, "anomaly-signals").data
    by_name_a = {s.name: s for s in expected_a.signals}
    assert sorted(bars["name"]) == sorted(by_name_a)
    np.testing.assert_allclose(bars["value"], [by_name_a[n].value for n in bars["name"]], atol=1e-6)
    np.testing.assert_allclose(bars["p"], [by_name_a[n].p_value for n in bars["name"]], atol=1e-9)
    page.sections["anomaly"].selects["group"].value = "surprisal"
    bars = source(drawn(page, "anomaly"), "anomaly-signals").data
    assert set(bars["group"]) == {"surprisal"} and len(bars["name"]) == sum(
        s.group == "surprisal" for s in expected_a.signals)


def test_detail_may_name_only_a_method_of_the_same_plugin(analyzer: Analyzer, host: PluginHost) -> None:
    strip = host.panels["sae_features"]
    assert contract.selections(strip) == {"feature": "sae-strip"}
    assert contract.detail_request(strip, "sae_features", {"feature": None}) is None
    assert contract.detail_request(strip, "sae_features", {"feature": 7}) == ("sae_feature", {"feature": 7})

    def failure(result: Any, **options: Any) -> Any:
        return host.panels["failure"](result, **options)

    failure.detail = lambda options: {"method": "sae_feature", "params": {"feature": 1}}  # type: ignore[attr-defined]
    backend = InProcessBackend(analyzer, models=[MODEL])
    backend.panels = {**host.panels, "failure": failure}
    page = analysed(backend, ["failure"])
    error = page.sections["failure"].error
    assert error.visible and "not a method of its plugin" in error.text
    assert page.sections["failure"].holders[0].children == []


def test_a_method_that_needs_params_gets_no_checkbox_in_either_mode(analyzer: Analyzer, host: PluginHost,
                                                                     api: Any, request: Any) -> None:
    """Ticking ``sae_feature`` alone could only fail (it needs a feature); its card opens from the strip."""
    remote = ApiBackend(api.url, host=host)
    request.addfinalizer(remote.close)
    for backend in (InProcessBackend(analyzer), remote):
        offered = backend.catalogue().methods
        assert "sae_features" in offered and "failure" in offered and "anomaly" in offered
        assert "sae_feature" not in offered
