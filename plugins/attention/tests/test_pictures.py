"""Pictures: files are written, are valid HTML/PNG, are small, and show what they claim."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmlens import InvalidParamsError
from lmlens_attention.panels import PANELS, attention_panel

TEXT = "Pictures of attention: who looks at whom, and how much."
METHODS = ["attention", "head_patterns", "head_importance", "attention_rollout"]


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.json_docs: list[str] = []
        self._in_json = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.sources.append(a["src"] or "")
        self._in_json = tag == "script" and a.get("type") == "application/json"

    def handle_data(self, data: str) -> None:
        if self._in_json:
            self.json_docs.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_json = False


def read_html(path: Path, *, cdn: bool = False) -> tuple[_Scripts, dict]:
    parser = _Scripts()
    text = path.read_text(encoding="utf-8")
    parser.feed(text)
    if cdn:
        assert any("cdn.bokeh.org" in s for s in parser.sources), "resources='cdn': BokehJS comes from the CDN"
    else:  # the default: the page opens offline
        assert parser.sources == [] and "cdn.bokeh.org" not in text, "BokehJS is inlined"
    (doc,) = parser.json_docs
    return parser, json.loads(doc)


@pytest.fixture(scope="module")
def analysis(tiny_models, plugin_host):
    from lmlens import Analyzer

    return Analyzer(tiny_models["llama"], plugins=plugin_host).analyze(TEXT, methods=METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_every_panel_writes_small_valid_html_and_png(analysis, tmp_path: Path, method: str) -> None:
    html, png = tmp_path / f"{method}.html", tmp_path / f"{method}.png"
    layout = PANELS[method](analysis, save_path=str(html), resources="cdn")
    assert layout is not None
    PANELS[method](analysis, save_path=str(png))
    _, doc = read_html(html, cdn=True)
    assert doc, "the page embeds a Bokeh document"
    assert html.stat().st_size < 100_000  # the document itself, without BokehJS
    offline = tmp_path / f"{method}-offline.html"
    PANELS[method](analysis, save_path=str(offline))  # the default: BokehJS inlined
    _, same = read_html(offline)
    assert same, "the offline page embeds the document too"
    assert offline.stat().st_size < 5_000_000
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) >= 200
    assert png.stat().st_size < 200_000


def test_pattern_page_carries_the_map_and_token_hover(analysis, tmp_path: Path) -> None:
    path = tmp_path / "head.html"
    attention_panel(analysis, save_path=str(path), layer=1, head=2, resources="cdn")
    text = path.read_text(encoding="utf-8")
    read_html(path, cdn=True)
    assert "HoverTool" in text and "CustomJSHover" in text
    assert "layer 1 head 2" in text
    # every token label is in the page once, for the hover to look up
    n = len(analysis.tokens)
    assert f"{n - 1}: " in text
    # the map travels packed: n * n float32 values, base64 (about 4/3 of the bytes)
    assert path.stat().st_size < 40_000 + 2 * 4 * n * n


def _synthetic(analysis, pattern: np.ndarray):
    """The analysis with its attention replaced by one known [q, k] map."""
    import msgspec

    from lmlens_attention import AttentionResult

    zeros = np.zeros((1, 1), dtype=np.float32)
    att = AttentionResult(layers=[0], heads=[0], patterns=pattern[None, None].astype(np.float32), entropy=zeros)
    return msgspec.structs.replace(analysis, methods={"attention": att})


def _yellow(path: Path) -> np.ndarray:
    """(row, col) of the brightest viridis colour, left of the colour bar."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    rgb = rgb[:, : int(rgb.shape[1] * 0.8)]
    mask = (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 100)
    return np.argwhere(mask)


def test_png_pixels_follow_the_pattern(analysis, tmp_path: Path) -> None:
    """A head all on key 0 draws one bright column; a self-attending head a bright diagonal."""
    n = len(analysis.tokens)
    sink = np.zeros((n, n))
    sink[:, 0] = 1.0
    attention_panel(_synthetic(analysis, sink), save_path=str(tmp_path / "sink.png"))
    column = _yellow(tmp_path / "sink.png")
    assert len(column) > 100
    assert np.ptp(column[:, 1]) < np.ptp(column[:, 0]) / 10  # tall and thin
    attention_panel(_synthetic(analysis, np.eye(n)), save_path=str(tmp_path / "eye.png"))
    diagonal = _yellow(tmp_path / "eye.png")
    assert np.corrcoef(diagonal[:, 0], diagonal[:, 1])[0, 1] > 0.99  # row grows with column


def test_head_grid_and_layer_head_map(analysis, tmp_path: Path) -> None:
    grid = tmp_path / "grid.html"
    attention_panel(analysis, save_path=str(grid), view="grid", layer=0)
    text = grid.read_text(encoding="utf-8")
    for head in range(4):
        assert f"layer 0 head {head}" in text
    assert text.count("\"type\":\"object\",\"name\":\"Figure\"") == 1  # one figure, four images
    attention_panel(analysis, save_path=str(tmp_path / "grid.png"), view="grid", layer=1)
    for score in ("entropy", "sink_mass", "mean_distance"):
        attention_panel(analysis, save_path=str(tmp_path / f"{score}.html"), view="map", score=score)
        read_html(tmp_path / f"{score}.html")
    PANELS["head_patterns"](analysis, save_path=str(tmp_path / "sink.png"), category="sink")
    PANELS["head_importance"](analysis, save_path=str(tmp_path / "mean.html"), ablation="mean")
    assert (tmp_path / "sink.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"save_path": "x.svg"}, "save_path"),
        ({"layer": 9}, "layer"),
        ({"head": 7}, "head"),
        ({"view": "spiral"}, "view"),
        ({"view": "map", "score": "nonsense"}, "score"),
    ],
)
def test_bad_picture_options_are_typed_errors(analysis, tmp_path: Path, kwargs: dict, field: str) -> None:
    if "save_path" in kwargs:
        kwargs = {**kwargs, "save_path": str(tmp_path / kwargs["save_path"])}
    with pytest.raises(InvalidParamsError) as info:
        attention_panel(analysis, **kwargs)
    assert info.value.field == field


def test_panels_are_registered_with_the_kernel(plugin_host) -> None:
    for method in METHODS:
        assert plugin_host.panels[method].__name__ == PANELS[method].__name__  # a lazy wrapper around it
    assert set(METHODS) <= set(plugin_host.methods)


def test_analyzer_visualize_attention_uses_this_panel(tiny_models, plugin_host, tmp_path: Path) -> None:
    from lmlens import Analyzer

    analyzer = Analyzer(tiny_models["gpt2"], plugins=plugin_host)
    result = analyzer.analyze(TEXT, methods=["attention", "head_patterns"])
    analyzer.visualize_attention(result, layer=1, head=3, save_path=str(tmp_path / "a.html"))
    assert "layer 1 head 3" in (tmp_path / "a.html").read_text(encoding="utf-8")
    analyzer.visualize_attention(result, layer=0, head=0, save_path=str(tmp_path / "a.png"))
    with Image.open(tmp_path / "a.png") as image:
        assert image.format == "PNG"
    analyzer.visualize(result, "head_patterns", save_path=str(tmp_path / "ind.html"), category="induction")
    read_html(tmp_path / "ind.html")


def test_saved_pages_open_offline_and_stay_under_5_mb(tiny_models, plugin_host, tmp_path: Path) -> None:
    from lmlens import Analyzer

    text = " ".join(["attention pictures must open without a network"] * 5)  # 250 byte tokens
    analysis = Analyzer(tiny_models["gpt2"], plugins=plugin_host).analyze(text, methods=["attention"])
    path = tmp_path / "offline.html"
    attention_panel(analysis, save_path=str(path), layer=0, head=1)
    page = path.read_text(encoding="utf-8")
    assert "cdn.bokeh.org" not in page and "<script src=" not in page
    assert "Bokeh.embed" in page or "embed_items" in page  # BokehJS itself is in the file
    assert path.stat().st_size < 5_000_000
    with pytest.raises(InvalidParamsError, match="inline or cdn"):
        attention_panel(analysis, save_path=str(path), resources="web")
