"""The panel attributes the page relies on, and the API client, without a browser."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lmlens import Analyzer
from lmlens.plugins import PluginHost
from lmlens_dashboard import contract
from lmlens_dashboard.backend import ApiBackend, ConnectionLost, InProcessBackend, ServiceError

TEXT = "The cat sat on the mat"


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost(load=["attention", "surprisal", "http"])


@pytest.fixture(scope="module")
def analyzer(host: PluginHost) -> Analyzer:
    return Analyzer("tiny-gpt2", plugins=host)


@pytest.fixture(scope="module")
def api(host: PluginHost) -> Any:
    from lmlens_http import create_app
    from lmlens_http.testing import running, tiny_config

    with running(create_app(tiny_config(), host=host)) as server:
        yield server


def test_attention_overview_has_no_maps_and_detail_fetches_one_head(host: PluginHost, analyzer: Analyzer) -> None:
    panel = host.panels["attention"]
    overview = analyzer.analyze(TEXT, ["attention"], {"attention": contract.overview_params(panel)})
    att = overview.methods["attention"]
    assert att.patterns is None and att.entropy.shape == (2, 4)
    choices = contract.controls(panel, att)
    assert choices["layer"] == [0, 1] and choices["head"] == [0, 1, 2, 3] and choices["view"][0] == "pattern"

    options = {"view": "pattern", "layer": 1, "head": 2, "score": "entropy"}
    params = contract.detail_params(panel, options)
    one = analyzer.analyze(TEXT, ["attention"], {"attention": params})
    full = analyzer.analyze(TEXT, ["attention"]).methods["attention"].patterns  # every map: the reference
    assert one.methods["attention"].patterns.shape == (1, 1, len(one.tokens), len(one.tokens))
    np.testing.assert_allclose(one.methods["attention"].patterns[0, 0], full[1, 2], atol=1e-6)

    figure = panel(one, **options)
    drawn = figure.renderers[0].data_source.data["image"][0]
    np.testing.assert_allclose(drawn, full[1, 2], atol=1e-6)
    assert contract.detail_params(panel, {**options, "view": "map"}) is None  # drawn from the overview
    panel(overview, **{**options, "view": "map"})


def test_a_plain_panel_function_still_works() -> None:
    def plain(result: Any, *, save_path: str | None = None, **options: Any) -> Any:
        return None

    assert contract.overview_params(plain) == {}
    assert contract.controls(plain, object()) == {}
    assert contract.detail_params(plain, {"x": 1}) is None


def test_api_backend_matches_in_process_and_keeps_error_codes(
    host: PluginHost, analyzer: Analyzer, api: Any, request: Any
) -> None:
    remote = ApiBackend(api.url, host=host)
    request.addfinalizer(remote.close)
    local = InProcessBackend(analyzer, models=["tiny-gpt2"])
    catalogue = remote.catalogue()
    assert catalogue.default_model == "tiny-gpt2" and {"attention", "surprisal"} <= set(catalogue.methods)
    assert local.catalogue().methods == {m: d for m, d in catalogue.methods.items() if m in local.catalogue().methods}

    params = {"attention": {"layers": [0], "heads": [1], "patterns": True}}  # the service defaults to summaries
    a = remote.analyze(TEXT, "tiny-gpt2", ["attention", "surprisal"], params)
    b = local.analyze(TEXT, "tiny-gpt2", ["attention", "surprisal"], params)
    np.testing.assert_allclose(a.methods["attention"].patterns, b.methods["attention"].patterns, atol=1e-6)
    np.testing.assert_allclose(a.methods["surprisal"].bits, b.methods["surprisal"].bits, atol=1e-5)

    for backend in (remote, local):
        with pytest.raises(ServiceError) as empty:
            backend.analyze("   ", "tiny-gpt2", ["attention"], {})
        assert (empty.value.code, empty.value.field) == ("empty_text", "text")
        with pytest.raises(ServiceError) as bad:
            backend.analyze(TEXT, "tiny-gpt2", ["attention"], {"attention": {"layers": "first"}})
        assert bad.value.field is not None and bad.value.field.startswith("params")


def test_api_backend_says_when_the_service_is_gone(host: PluginHost) -> None:
    from lmlens_http.testing import free_port

    gone = ApiBackend(f"http://127.0.0.1:{free_port()}", host=host, timeout=5)
    with pytest.raises(ConnectionLost, match="no answer"):
        gone.catalogue()
    gone.close()


def test_api_backend_passes_the_services_progress_events_on(host: PluginHost, api: Any, request: Any) -> None:
    remote = ApiBackend(api.url, host=host)
    request.addfinalizer(remote.close)
    events: list[tuple[str, str]] = []
    result = remote.analyze("A new text for the socket", "tiny-gpt2", ["attention", "surprisal"], {},
                            progress=lambda stage, what: events.append((stage, what)))
    assert remote.use_websocket and result.methods["surprisal"].bits.shape == (len(result.tokens),)
    assert ("start", "") in events and ("end", "attention") in events and ("end", "surprisal") in events
    with pytest.raises(ServiceError) as empty:
        remote.analyze(" ", "tiny-gpt2", ["attention"], {}, progress=lambda stage, what: None)
    assert (empty.value.code, empty.value.field) == ("empty_text", "text")


def test_api_key_goes_with_every_request_and_the_socket(host: PluginHost, request: Any) -> None:
    from lmlens_http import create_app
    from lmlens_http.testing import running, tiny_config

    with running(create_app(tiny_config(api_keys=["s3cret-key"]), host=host)) as server:
        anonymous = ApiBackend(server.url, host=host)
        request.addfinalizer(anonymous.close)
        with pytest.raises(ServiceError) as refused:
            anonymous.catalogue()
        assert refused.value.code == "unauthorized" and "API key" in refused.value.message

        keyed = ApiBackend(server.url, "s3cret-key", host=host)
        request.addfinalizer(keyed.close)
        assert "attention" in keyed.catalogue().methods
        events: list[tuple[str, str]] = []
        result = keyed.analyze(TEXT, "tiny-gpt2", ["attention"], {},
                               progress=lambda stage, what: events.append((stage, what)))
        assert keyed.use_websocket and ("end", "attention") in events and result.tokens
