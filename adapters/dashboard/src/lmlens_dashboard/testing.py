"""Drive the page from Selenium (tests and the benchmark).

Bokeh 3 draws every widget and plot inside shadow roots, so elements are found with a
query that walks them, and the page's state is read from BokehJS's own document
(``Bokeh.documents[0]``) by model name.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1500")

DEEP = """
function deep(sel, root) {
  root = root || document;
  const hit = root.querySelector(sel);
  if (hit) return hit;
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) { const found = deep(sel, el.shadowRoot); if (found) return found; }
  }
  return null;
}
"""

MODEL = """
function model(name) {
  if (!window.Bokeh || !Bokeh.documents || !Bokeh.documents.length) return null;
  return Bokeh.documents[0].get_model_by_name(name);
}
"""

# The first Image glyph under a holder column: its array, shape and whether its view has painted.
IMAGE = MODEL + """
const holder = model(arguments[0]);
if (!holder || !holder.children.length) return null;
const fig = holder.children[0];
if (!fig.renderers) return null;
const r = fig.renderers.find(r => r.glyph && r.glyph.type === 'Image');
if (!r) return null;
const img = r.data_source.data.image[0];
// painted: the plot's view (found by walking the view tree) has drawn every renderer
function find_view(view, target) {
  if (view.model === target) return view;
  for (const child of view.children_views ? Array.from(view.children_views()) : []) {
    const found = find_view(child, target);
    if (found) return found;
  }
  return null;
}
let painted = false;
for (const root of Object.values(Bokeh.index)) {
  const view = find_view(root, fig);
  if (view) { painted = view.has_finished(); break; }
}
let checksum = 0;
for (let i = 0; i < img.length; i++) { checksum += img[i] * ((i % 97) + 1); }
return {id: fig.id, shape: Array.from(img.shape), checksum: checksum, title: fig.title ? fig.title.text : null,
        values: arguments[1] ? Array.from(img) : null, painted: painted};
"""

# Where a glyph of the renderer drawing the source named arguments[0] sits on the page: row
# arguments[1]'s screen point (the glyph view's sx, sy) plus its canvas's place in the viewport.
GLYPH_POINT = MODEL + """
function views(view, out) {
  out.push(view);
  for (const child of view.children_views ? Array.from(view.children_views()) : []) { views(child, out); }
  return out;
}
const source = model(arguments[0]);
if (!source) return null;
for (const root of Object.values(Bokeh.index)) {
  for (const view of views(root, [])) {
    if (view.model.data_source !== source || !view.glyph || !view.glyph.sx) continue;
    const canvas = view.parent.canvas_view.el;
    canvas.scrollIntoView({block: 'center'});
    const box = canvas.getBoundingClientRect();
    const i = arguments[1];
    return {x: box.left + view.glyph.sx[i], y: box.top + view.glyph.sy[i]};
  }
}
return null;
"""


@contextmanager
def chromium(window: str = "1280,1500", log_network: bool = False) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lmlens-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={window}")
    if log_network:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def find(driver: Any, css: str) -> Any:
    """The first element matching ``css``, looking inside every shadow root."""
    return driver.execute_script(DEEP + "return deep(arguments[0]);", css)


def inner(driver: Any, host_css: str, css: str) -> Any:
    """An element inside a widget's shadow root (the textarea of a TextAreaInput, say)."""
    host = find(driver, host_css)
    if host is None:
        return None
    return driver.execute_script(DEEP + "return deep(arguments[1], arguments[0].shadowRoot || arguments[0]);",
                                 host, css)


def prop(driver: Any, name: str, attribute: str) -> Any:
    """A property of the page's Bokeh model called ``name`` (None while it does not exist)."""
    return driver.execute_script(MODEL + "const m = model(arguments[0]); return m ? m[arguments[1]] : null;",
                                 name, attribute)


def children(driver: Any, name: str) -> list[str] | None:
    """The model types of a layout's children (None while the layout does not exist)."""
    result: list[str] | None = driver.execute_script(
        MODEL + "const m = model(arguments[0]); return m ? m.children.map(c => c.type) : null;", name)
    return result


def image(driver: Any, holder: str, values: bool = False) -> dict[str, Any] | None:
    result: dict[str, Any] | None = driver.execute_script(IMAGE, holder, values)
    return result


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 60.0, message: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message)


def type_text(driver: Any, host_css: str, text: str) -> None:
    area = inner(driver, host_css, "textarea")
    area.clear()
    area.send_keys(text)


def click(driver: Any, host_css: str) -> None:
    inner(driver, host_css, "button").click()


def tap_glyph(driver: Any, source: str, index: int) -> dict[str, float]:
    """Click, with the mouse, the glyph drawing row ``index`` of the ColumnDataSource named ``source``."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    point: dict[str, float] | None = wait(driver, lambda d: d.execute_script(GLYPH_POINT, source, index),
                                          message=f"no glyph drawn from {source!r}")
    assert point is not None
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(round(point["x"]), round(point["y"]))  # type: ignore[no-untyped-call]
    actions.pointer_action.click()
    actions.perform()
    return point


def choose(driver: Any, host_css: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(inner(driver, host_css, "select")).select_by_value(value)


def screenshot(driver: Any, host_css: str | None, path: Any) -> Any:
    """Save a PNG of one element (or the page) and return it as a PIL image."""
    from PIL import Image

    png = find(driver, host_css).screenshot_as_png if host_css else driver.get_screenshot_as_png()
    with open(path, "wb") as out:
        out.write(png)
    return Image.open(io.BytesIO(png)).convert("RGB")
