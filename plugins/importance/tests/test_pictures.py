"""The Bokeh panel, its HTML and the PNG."""

from __future__ import annotations

import pytest
from bokeh.models import LayoutDOM

from lmlens import InvalidParamsError
from lmlens_importance.pictures import importance_panel, layout

TEXT = "The cat sat on the mat, and then it slept for a long while in the sun."


@pytest.fixture(scope="module")
def results(tiny_models, plugin_host, tmp_path_factory):
    from lmlens import Analyzer
    from lmlens.settings import Settings

    analyzer = Analyzer(
        tiny_models["llama"], plugins=plugin_host, settings=Settings(cache_dir=str(tmp_path_factory.mktemp("c")))
    )
    good = analyzer.analyze(
        TEXT, methods=["importance"], params={"importance": {"method": "occlusion", "faithfulness": False}}
    )
    bad = analyzer.analyze(
        TEXT,
        methods=["importance"],
        params={"importance": {
            "method": "integrated_gradients", "steps": 2, "rule": "riemann_trapezoid",
            "tolerance": 1e-9, "faithfulness": False}},
    )
    return good, bad


def test_panel_is_registered(plugin_host):
    assert plugin_host.panels["importance"].__name__ == importance_panel.__name__  # a lazy wrapper around it


def test_layout_wraps_and_keeps_every_token(results):
    found = results[0].methods["importance"]
    pieces = layout(found, "tokens", 20)
    assert len(pieces) == len(found.tokens)
    assert max(p.line for p in pieces) >= 3
    assert all(p.x + p.width <= 20 or p.x == 0 for p in pieces)
    words = layout(found, "words", 20)
    assert [p.label.strip() for p in words] == [w.text for w in found.words]


def test_html_shows_scores_and_the_unreliable_flag(results, tmp_path):
    good, bad = results
    made = importance_panel(good, save_path=str(tmp_path / "good.html"))
    assert isinstance(made, LayoutDOM)
    html = (tmp_path / "good.html").read_text()
    assert "UNRELIABLE" not in html and "occlusion" in html
    importance_panel(bad, save_path=str(tmp_path / "bad.html"), view="words")
    assert "UNRELIABLE" in (tmp_path / "bad.html").read_text()


def test_png_is_written(results, tmp_path):
    importance_panel(results[1], save_path=str(tmp_path / "bad.png"), width_chars=40)
    data = (tmp_path / "bad.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bad_picture_requests_are_typed_errors(results, tmp_path):
    with pytest.raises(InvalidParamsError):
        importance_panel(results[0], save_path=str(tmp_path / "x.svg"))
    with pytest.raises(InvalidParamsError):
        importance_panel(results[0], view="letters")
    with pytest.raises(InvalidParamsError):
        importance_panel(results[0], colour="red")


def test_saved_html_opens_offline(results, tmp_path):
    path = tmp_path / "offline.html"
    importance_panel(results[0], save_path=str(path))
    page = path.read_text()
    assert "cdn.bokeh.org" not in page and "<script src=" not in page
    assert path.stat().st_size < 5_000_000
    importance_panel(results[0], save_path=str(tmp_path / "cdn.html"), resources="cdn")
    assert "cdn.bokeh.org" in (tmp_path / "cdn.html").read_text()
