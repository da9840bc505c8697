"""The kernel's ``analyze_document`` job: one recorded item per window, resumable, cancellable."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from lmlens import Analyzer, wire
from lmlens.chunking import Window
from lmlens.default_plugins.jobs import AnalyzeDocumentParams, analyze_document
from lmlens.jobs import JobCancelled
from lmlens.plugins import PluginHost

DOCUMENT = " ".join(f"Line {i}: the cat sat on mat number {i}." for i in range(5))
PARAMS = {"attention": {"patterns": False, "top_k": 0}}


class Context:
    def __init__(self, analyzer: Analyzer, done: dict[int, bytes] | None = None, stop_after: int | None = None):
        self.analyzer = analyzer
        self.done = dict(done or {})
        self.recorded: dict[int, bytes] = {}
        self.progressed: list[tuple[float, str]] = []
        self.stop_after = stop_after

    def progress(self, fraction: float, message: str) -> None:
        self.progressed.append((fraction, message))
        if self.stop_after is not None and len(self.recorded) >= self.stop_after:
            raise JobCancelled("the job was cancelled")

    def done_items(self) -> dict[int, bytes]:
        return dict(self.done)

    def item_done(self, index: int, value: bytes) -> None:
        self.recorded[index] = value


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer("tiny-gpt2", plugins=PluginHost(load=["attention"]))


def decode(analyzer: Analyzer, raw: bytes) -> Any:
    typed = msgspec.defstruct("W", [("window", Window), ("n_windows", int), ("offset", int),
                                    ("result", wire.result_type([analyzer.plugins.methods["attention"].result]))],
                              kw_only=True)
    return wire.from_msgpack(raw, typed)


def test_every_window_is_an_item_as_the_stream_gives_it(analyzer: Analyzer) -> None:
    params = AnalyzeDocumentParams(text=DOCUMENT, methods=["attention"], params=PARAMS, model="tiny-gpt2",
                                   window_size=48)
    context = Context(analyzer)
    summary = analyze_document(params, context)
    stream = list(analyzer.analyze_document_streaming(DOCUMENT, ["attention"], PARAMS, window_size=48, stride=24,
                                                      model="tiny-gpt2"))
    n = len(stream)
    assert n > 2 and sorted(context.recorded) == list(range(n)) and len(summary.windows) == n
    assert summary.n_tokens == stream[-1].window.end and summary.stride == 24
    for index, expected in enumerate(stream):
        window = decode(analyzer, context.recorded[index])
        assert window.window == expected.window and window.n_windows == n
        assert [t.id for t in window.result.tokens] == [t.id for t in expected.result.tokens]
        np.testing.assert_allclose(window.result.methods["attention"].entropy,
                                   expected.result.methods["attention"].entropy, rtol=1e-6)
    fractions = [f for f, _ in context.progressed]
    assert fractions == [i / n for i in range(n + 1)]
    assert context.progressed[-1][1] == f"window {n}/{n} done"


def test_a_retried_job_skips_the_windows_it_recorded_and_a_cancelled_one_stops(analyzer: Analyzer) -> None:
    params = AnalyzeDocumentParams(text=DOCUMENT, methods=["attention"], params=PARAMS, window_size=48)
    first = Context(analyzer, stop_after=2)
    with pytest.raises(JobCancelled):
        analyze_document(params, first)
    assert sorted(first.recorded) == [0, 1]  # stopped at the check after its second window
    second = Context(analyzer, done=first.recorded)
    analyze_document(params, second)
    n = len(analyzer.analyze_document_streaming(DOCUMENT, ["attention"], PARAMS, window_size=48, stride=24))
    assert sorted(second.recorded) == list(range(2, n))  # only what was left
    assert second.progressed[0][0] == pytest.approx(2 / n) and second.progressed[-1][0] == 1.0
