"""The page's Python side with every installed panel, without a server or a browser.

Work that the page sends to its thread pool runs at once here, and what it would put on
the page at the next tick runs at once too, so each step can be checked in order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest
from bokeh.document import Document

from lmlens import Analyzer
from lmlens.plugins import PluginHost
from lmlens_dashboard.app import Page
from lmlens_dashboard.backend import InProcessBackend

TEXT = "When Mary and John went to the store, John gave a drink to"


class Now(Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


@pytest.fixture(scope="module")
def backend() -> InProcessBackend:
    host = PluginHost(load=["attention", "importance", "surprisal"])
    return InProcessBackend(Analyzer("tiny-gpt2", plugins=host), models=["tiny-gpt2"])


def page_for(backend: InProcessBackend) -> Page:
    page = Page(Document(), backend, Now())
    page.later = lambda fn, *args: fn(*args)  # type: ignore[method-assign]
    return page


def drawn(page: Page, method: str, side: int = 0) -> Any:
    children = page.sections[method].holders[side].children
    assert len(children) == 1, f"{method}: {page.sections[method].error.text}"
    return children[0]


def test_every_installed_panel_draws_and_follows_its_selectors(backend: InProcessBackend) -> None:
    page = page_for(backend)
    names = page.methods.labels
    everything = {"attention", "head_patterns", "head_importance", "attention_rollout", "importance", "surprisal"}
    assert everything <= set(names)
    page.text.value = TEXT
    page.methods.active = list(range(len(names)))
    page.start_analysis()
    assert page.status.text.startswith("done"), (page.status.text, page.error.text, page.methods_error.text)
    for method in names:
        assert not page.sections[method].error.visible, (method, page.sections[method].error.text)
        drawn(page, method)

    reference = backend.analyzer.analyze(TEXT, ["attention"]).methods["attention"].patterns
    attention = page.sections["attention"]
    attention.selects["layer"].value = "1"
    attention.selects["head"].value = "3"
    image = drawn(page, "attention").renderers[0].data_source.data["image"][0]
    np.testing.assert_allclose(image, reference[1, 3], atol=1e-6)

    attention.selects["view"].value = "grid"  # every head of layer 1, fetched for that layer only
    grid = drawn(page, "attention").renderers[0].data_source.data["image"]
    assert len(grid) == 4
    np.testing.assert_allclose(grid[2], reference[1, 2], atol=1e-6)
    attention.selects["view"].value = "map"  # per-head scores from the overview: no new request
    assert "entropy" in drawn(page, "attention").title.text

    patterns = page.sections["head_patterns"]
    category = patterns.choices["category"][1]
    patterns.selects["category"].value = category
    assert category in drawn(page, "head_patterns").title.text
    page.sections["importance"].selects["view"].value = "words"
    drawn(page, "importance")


def test_errors_go_next_to_their_field_and_a_link_restores_the_page(backend: InProcessBackend) -> None:
    page = page_for(backend)
    page.text.value = "   "
    page.start_analysis()
    assert page.text_error.visible and "empty_text" in page.text_error.text and not page.error.visible
    page.text.value = TEXT
    page.methods.active = []
    page.start_analysis()
    assert page.methods_error.visible and not page.text_error.visible

    page.methods.active = [page.methods.labels.index("attention"), page.methods.labels.index("surprisal")]
    page.compare.value = "A second, shorter text"
    page.start_analysis()
    link = page.share.tags[0]
    again = Page(Document(), backend, Now())
    again.later = lambda fn, *args: fn(*args)  # type: ignore[method-assign]
    from urllib.parse import parse_qs

    again.load_catalogue({k: [v.encode() for v in vs] for k, vs in parse_qs(link).items()})
    assert again.text.value == TEXT and again.compare.value == "A second, shorter text"
    assert [again.methods.labels[i] for i in again.methods.active] == ["attention", "surprisal"]
    assert again.status.text.startswith("done")
    assert len(again.sections["attention"].row.children) == 2
