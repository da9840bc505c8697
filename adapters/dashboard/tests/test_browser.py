"""The dashboard in a real browser: load, analyse, draw, switch heads, plugins, API errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np

from lmlens import Analyzer
from lmlens_dashboard.testing import (
    children,
    choose,
    click,
    find,
    image,
    inner,
    prop,
    screenshot,
    tap_glyph,
    type_text,
    wait,
)

MODEL = "tiny-gpt2"
SCREENSHOTS = Path(__file__).resolve().parents[3] / "out" / "screenshots"
TEXT = "The cat sat on the mat because the cat was tired"


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: prop(d, "analyse", "label") == "Analyse", message="the page did not load")


def done(driver: Any) -> bool:
    text = prop(driver, "status", "text") or ""
    if text == "failed":  # stop waiting: say what the page says
        shown = [prop(driver, f"error-{w}", "text") for w in ("text", "compare", "model", "methods", "general")]
        raise AssertionError(f"the analysis failed: {[s for s in shown if s]}")
    return text.startswith("done")


def head_pattern(reference: Analyzer, text: str, layer: int, head: int) -> np.ndarray:
    params = {"attention": {"layers": [layer], "heads": [head], "top_k": 0}}
    return reference.analyze(text, ["attention"], params).methods["attention"].patterns[0, 0]


def colours(picture: Any) -> int:
    return len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0))


def test_page_loads(driver: Any, dash: Any) -> None:
    open_page(driver, dash.url + "/")
    assert prop(driver, "methods", "labels") == ["attention", "attention_rollout", "head_importance",
                                                 "head_patterns", "surprisal"]
    assert prop(driver, "model", "value") == MODEL
    assert inner(driver, ".lmlens-text", "textarea") is not None
    screenshot(driver, None, SCREENSHOTS / "01-loaded.png")


def test_analyse_heatmap_and_head_selector(driver: Any, dash: Any, reference: Analyzer) -> None:
    open_page(driver, dash.url + "/")
    type_text(driver, ".lmlens-text", TEXT)
    click(driver, ".lmlens-analyse")
    wait(driver, done, message="the analysis did not finish")
    n = len(reference.analyze(TEXT, ["attention"], {"attention": {"patterns": False}}).tokens)

    # the heatmap is the selected head's map, the numbers the kernel gives for it, and nothing more
    shown = wait(driver, lambda d: (i := image(d, "panel-attention-0", values=True)) and i["painted"] and i)
    assert shown["shape"] == [n, n]
    np.testing.assert_allclose(np.asarray(shown["values"]).reshape(n, n), head_pattern(reference, TEXT, 0, 0),
                               atol=1e-6)
    assert prop(driver, "control-attention-head", "options") == ["0", "1", "2", "3"]  # tiny-gpt2: 2 layers x 4 heads
    assert prop(driver, "control-attention-layer", "options") == ["0", "1"]
    before = screenshot(driver, ".lmlens-panel-attention-0", SCREENSHOTS / "02-heatmap-head0.png")
    assert before.size[0] > 300 and colours(before) > 30  # a drawn map, not a blank box

    # the link in the address bar carries text, model and methods
    query = parse_qs(urlparse(driver.current_url).query)
    assert query["text"] == [TEXT] and query["model"] == [MODEL] and query["methods"] == ["attention"]

    choose(driver, ".lmlens-control-attention-head", "1")
    after = wait(driver, lambda d: (i := image(d, "panel-attention-0", values=True))
                 and i["checksum"] != shown["checksum"] and i["painted"] and i, message="head 1 was not drawn")
    np.testing.assert_allclose(np.asarray(after["values"]).reshape(n, n), head_pattern(reference, TEXT, 0, 1),
                               atol=1e-6)
    assert "head 1" in after["title"]
    picture = screenshot(driver, ".lmlens-panel-attention-0", SCREENSHOTS / "03-heatmap-head1.png")
    difference = np.abs(np.asarray(picture, dtype=np.int16) - np.asarray(before, dtype=np.int16))
    assert picture.size == before.size and (difference.sum(axis=2) > 30).mean() > 0.02


def test_shared_link_compare_and_template_panel(driver: Any, dash: Any) -> None:
    query = urlencode({"text": TEXT, "compare": "A dog ran home", "model": MODEL, "methods": "attention,surprisal"})
    open_page(driver, f"{dash.url}/?{query}")
    wait(driver, done, message="the linked analysis did not finish")
    assert prop(driver, "text", "value") == TEXT
    assert find(driver, ".lmlens-section-surprisal") is not None  # the template plugin's panel
    both = [wait(driver, lambda d, s=s: image(d, f"panel-attention-{s}")) for s in (0, 1)]
    assert both[0]["shape"] != both[1]["shape"]  # two texts side by side, each its own map
    assert children(driver, "panel-surprisal-0") == ["Figure"]
    assert children(driver, "panel-surprisal-1") == ["Figure"]
    screenshot(driver, None, SCREENSHOTS / "04-compare-surprisal.png")

    # the same link on a dashboard whose only plugin is attention: no surprisal panel, a note why
    open_page(driver, f"{dash.url}/attention?{query}")
    wait(driver, done, message="the analysis without the template plugin did not finish")
    assert "surprisal" not in prop(driver, "methods", "labels")
    assert find(driver, ".lmlens-section-attention") is not None
    assert find(driver, ".lmlens-section-surprisal") is None
    assert "not installed here: surprisal" in prop(driver, "error-methods", "text")


def test_api_mode_draws_and_shows_the_services_error(driver: Any, dash: Any, reference: Analyzer) -> None:
    open_page(driver, dash.url + "/api")
    type_text(driver, ".lmlens-text", TEXT)
    click(driver, ".lmlens-analyse")
    wait(driver, done, message="the analysis through the API did not finish")
    shown = wait(driver, lambda d: image(d, "panel-attention-0", values=True))
    n = shown["shape"][0]
    np.testing.assert_allclose(np.asarray(shown["values"]).reshape(n, n), head_pattern(reference, TEXT, 0, 0),
                               atol=1e-6)

    type_text(driver, ".lmlens-text", " ".join(["word"] * 60))  # the service allows 64 tokens
    click(driver, ".lmlens-analyse")
    wait(driver, lambda d: prop(d, "error-text", "visible"), message="no error next to the text")
    message = prop(driver, "error-text", "text")
    assert "text_too_long" in message and "limit" in message and "Traceback" not in message
    screenshot(driver, None, SCREENSHOTS / "05-api-error.png")


def test_lost_api_connection_offers_a_retry(driver: Any, monkeypatch: Any, full_host: Any, request: Any) -> None:
    import lmlens_http.testing
    from lmlens_dashboard.backend import ApiBackend
    from lmlens_dashboard.server import running
    from lmlens_http import create_app
    from lmlens_http.testing import running as running_api
    from lmlens_http.testing import tiny_config

    service = running_api(create_app(tiny_config(), host=full_host))
    port = service.__enter__().port
    client = ApiBackend(f"http://127.0.0.1:{port}", host=full_host)
    request.addfinalizer(client.close)
    with running({"/": client}) as page:
        open_page(driver, page.url + "/")
        service.__exit__(None, None, None)  # the service goes away under the open page
        type_text(driver, ".lmlens-text", TEXT)
        click(driver, ".lmlens-analyse")
        wait(driver, lambda d: prop(d, "retry", "visible"), message="no retry after the API went away")
        assert "connection to the API is lost" in prop(driver, "error-general", "text")
        screenshot(driver, None, SCREENSHOTS / "06-connection-lost.png")

        monkeypatch.setattr(lmlens_http.testing, "free_port", lambda: port)  # the service comes back
        with running_api(create_app(tiny_config(), host=full_host)):
            click(driver, ".lmlens-retry")
            wait(driver, done, message="retry did not analyse")
            assert not prop(driver, "retry", "visible")
            assert image(driver, "panel-attention-0") is not None


def test_tapping_a_feature_in_the_sae_strip_opens_its_card(driver: Any) -> None:
    """SAE, failure and anomaly panels; a mouse click on a cell of the strip opens that feature's card."""
    from lmlens.plugins import PluginHost
    from lmlens_dashboard.backend import InProcessBackend
    from lmlens_dashboard.server import running

    host = PluginHost(load=["sae", "failure", "anomaly"])
    reference = Analyzer(MODEL, plugins=host)
    backend = InProcessBackend(Analyzer(MODEL, plugins=host), models=[MODEL])
    backend.warm()
    overview = reference.analyze(TEXT, ["sae_features", "failure"], {"failure": {"top_k": 32}})
    feature = overview.methods["sae_features"].top_features[2].feature
    with running({"/": backend}) as server:
        query = urlencode({"text": TEXT, "model": MODEL, "methods": "sae_features,failure,anomaly"})
        open_page(driver, f"{server.url}/?{query}")
        wait(driver, done, message="the analysis did not finish")
        assert prop(driver, "sae-card", "tags") is None  # no card before a click
        gauge = prop(driver, "failure-gauge", "data")
        assert abs(gauge["value"][0] - overview.methods["failure"].failure_probability) < 1e-9
        assert prop(driver, "anomaly-gauge", "data")["threshold"][0] > 0
        screenshot(driver, None, SCREENSHOTS / "07-sae-failure-anomaly.png")

        features = prop(driver, "sae-strip", "data")["feature"]
        cells = [i for i, f in enumerate(features) if f == feature]
        tap_glyph(driver, "sae-strip", cells[len(cells) // 2])
        wait(driver, lambda d: prop(d, "sae-card", "tags") == [feature],
             message=f"the card of feature {feature} did not open")
        heading = driver.execute_script(
            "return Bokeh.documents[0].get_model_by_name('sae-card').children[0].text;")
        assert f"feature {feature} " in heading
        card = wait(driver, lambda d: find(d, ".sae-card"), message="the card is not in the page")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", card)
        wait(driver, lambda d: "activation histogram" in (card.text or "") or card.size["height"] > 200)
        picture = screenshot(driver, None, SCREENSHOTS / "08-sae-feature-card.png")
        assert colours(picture) > 30 and card.size["height"] > 200
        assert f"feature {feature}" in card.text  # the card's heading as the browser shows it


DOCUMENT = " ".join(f"Line {i}: the cat sat on mat number {i}, and then it slept." for i in range(6))


def test_uploaded_document_follows_its_job_window_by_window(driver: Any, dash: Any, tmp_path: Path) -> None:
    """A file through the FileInput, analysed on the in-process queue: the bar reaches 100%,
    every window is listed, a window's heatmap renders, and a reload follows the same job."""
    path = tmp_path / "document.txt"
    path.write_text(DOCUMENT, encoding="utf-8")
    open_page(driver, dash.url + "/")
    inner(driver, ".lmlens-upload", "input[type=file]").send_keys(str(path))
    wait(driver, lambda d: prop(d, "analyse-document", "disabled") is False, message="the upload was not read")
    assert f"{len(DOCUMENT):,} characters" in prop(driver, "upload-note", "text")
    choose(driver, ".lmlens-window-size", "64")
    click(driver, ".lmlens-analyse-document")

    def finished(d: Any) -> Any:
        tags = prop(d, "job-progress", "tags") or [0, 0]
        return tags[1] and tags[0] == tags[1] and "done" in (prop(d, "job-progress", "text") or "") and tags

    done_windows, total = wait(driver, finished, message="the job did not finish")
    assert total > 2 and "100%" in prop(driver, "job-progress", "text")
    assert len(prop(driver, "job-window", "options")) == total
    shown = wait(driver, lambda d: (i := image(d, "panel-attention-0")) and i["painted"] and i,
                 message="no heatmap for the first window")
    assert shown["shape"] == [64, 64]
    bar = screenshot(driver, ".lmlens-job-progress", SCREENSHOTS / "09-document-progress.png")
    assert colours(bar) > 3  # the filled bar, its track and the text
    heatmap = screenshot(driver, ".lmlens-panel-attention-0", SCREENSHOTS / "10-document-window.png")
    assert colours(heatmap) > 30
    screenshot(driver, None, SCREENSHOTS / "11-document-page.png")

    # another window, then a reload: the address names the job, and the page follows it again
    from selenium.webdriver.support.ui import Select  # the options are (value, label): BokehJS shows labels

    last = prop(driver, "job-window", "options")[-1]
    Select(inner(driver, ".lmlens-job-window", "select")).select_by_visible_text(last[1])
    wait(driver, lambda d: (prop(d, "status", "text") or "").startswith(f"window {total} of {total}"),
         message="the last window was not drawn")
    query = parse_qs(urlparse(driver.current_url).query)
    assert len(query["job"][0]) == 32 and query["methods"] == ["attention"]
    driver.get(driver.current_url)
    again = wait(driver, finished, message="the reloaded page did not follow the job")
    assert list(again) == [done_windows, total]
