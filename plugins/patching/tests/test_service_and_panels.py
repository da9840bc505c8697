"""The methods reach users: discovery, the HTTP service's /analyze, panels saved as offline HTML."""

from __future__ import annotations

import numpy as np
import pytest

from lmlens import Analyzer
from lmlens.plugins import PluginHost
from lmlens.settings import Settings

CLEAN, CORRUPTED = "The cat sat", "The dog sat"


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost(load=["patching", "http"])


def test_the_plugin_is_discovered_with_its_version(host: PluginHost) -> None:
    import importlib.metadata

    assert {"activation_patching", "steering"} <= set(host.methods)
    from lmlens_patching import __version__

    assert __version__ == importlib.metadata.version("lmlens-patching")
    assert host.methods["steering"].version == __version__


def test_http_analyze_runs_both_methods_and_refuses_bad_params(host: PluginHost, tiny_models, tmp_path) -> None:
    from lmlens_http import create_app
    from lmlens_http.testing import running, tiny_config

    params = {
        "activation_patching": {"corrupted_text": CORRUPTED, "correct": "a", "wrong": "b", "per_head": True},
        "steering": {"layer": 0, "positive": "good", "negative": "bad", "generate": 3},
    }
    with running(create_app(tiny_config(), host=host)) as server, server.client() as client:
        response = client.post("/analyze", json={"text": CLEAN, "methods": ["activation_patching", "steering"],
                                                 "params": params})
        assert response.status_code == 200, response.text
        body = response.json()["methods"]
        bad = client.post("/analyze", json={"text": CLEAN, "methods": ["activation_patching"],
                                            "params": {"activation_patching": {**params["activation_patching"],
                                                                               "corrupted_text": "dog"}}})
        encoder = client.post("/analyze", json={"text": CLEAN, "model": "tiny-bert", "methods": ["steering"],
                                                "params": {"steering": params["steering"]}})
    reference = Analyzer(tiny_models["gpt2"], settings=Settings(cache_dir=str(tmp_path)), plugins=host)
    expected = reference.analyze(CLEAN, ["activation_patching", "steering"], params).methods
    ap = body["activation_patching"]
    assert ap["kind"] == "activation_patching" and ap["metric"] == "logit_diff"
    np.testing.assert_allclose(np.array(ap["resid"]), expected["activation_patching"].resid, atol=1e-6)
    np.testing.assert_allclose(np.array(ap["heads"]), expected["activation_patching"].heads, atol=1e-6)
    assert body["steering"]["continuation_ids_after"] == expected["steering"].continuation_ids_after
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_params" and "3 tokens" in bad.json()["message"]
    assert encoder.status_code == 422 and encoder.json()["code"] == "no_lm_head"


def test_panels_save_offline_html(tiny_analyzer, tmp_path) -> None:
    from bokeh.models import ColumnDataSource, GlyphRenderer, Image

    from lmlens_patching import panels

    analyzer = tiny_analyzer("gpt2")
    result = analyzer.analyze(CLEAN, ["activation_patching", "steering"], {
        "activation_patching": {"corrupted_text": CORRUPTED, "correct": "a", "wrong": "b", "per_head": True},
        "steering": {"layer": 0, "positive": "good", "negative": "bad", "generate": 2},
    })
    path = tmp_path / "patching.html"
    layout = panels.patching_panel(result, save_path=str(path))
    images = [r for r in layout.select({"type": GlyphRenderer}) if isinstance(r.glyph, Image)]
    assert len(images) == 2  # the layer x position map and the head grid
    ap = result.methods["activation_patching"]
    drawn = {np.shape(r.data_source.data["image"][0]): r.data_source.data["image"][0] for r in images}
    np.testing.assert_array_equal(drawn[(2, 11)], ap.resid_normalised)
    np.testing.assert_array_equal(drawn[(2, 4)], ap.heads_normalised)
    html = path.read_text()
    assert "cdn.bokeh.org" not in html and "Bokeh" in html and len(html) > 500_000  # BokehJS inline
    steering = panels.steering_panel(result, save_path=str(tmp_path / "steering.html"))
    sources = list(steering.select({"type": ColumnDataSource}))
    st = result.methods["steering"]
    assert any(len(s.data.get("before", [])) == len({p.id for p in [*st.top_before, *st.top_after]}) for s in sources)
    assert "with steering" in (tmp_path / "steering.html").read_text()
    from lmlens import InvalidParamsError

    with pytest.raises(InvalidParamsError, match=r"\.html"):
        panels.steering_panel(result, save_path=str(tmp_path / "steering.png"))
    small = tmp_path / "small.html"
    panels.steering_panel(result, save_path=str(small), resources="cdn")
    assert "cdn.bokeh.org" in small.read_text() and small.stat().st_size < 100_000
    lone = analyzer.analyze(CLEAN, "steering", {"steering": {"layer": 0, "positive": "a", "negative": "b"}})
    with pytest.raises(InvalidParamsError, match="no 'activation_patching' result"):
        panels.patching_panel(lone)


def test_panels_are_registered(host: PluginHost) -> None:
    assert {"activation_patching", "steering"} <= set(host.panels)
