"""The seed's verbs: ``analyzer.fit_anomaly_detector`` and ``analyzer.detect_anomalies``.

A text longer than one window is scored window by window through the kernel's
streaming (``analyze_document_streaming``). The document verdict applies a Bonferroni
correction over the ``W`` windows: a window counts as anomalous when its score is above
``threshold + log10(W)``, so a long normal document is not flagged just for having many
windows. It names the anomalous windows (token and character spans) and stitches the
per-token scores onto the document (the kernel's ownership rule).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

from lmlens.chunking import owners, stitch_field
from lmlens.wire import Float32Array, Token
from lmlens_anomaly.result import AnomalyResult, _ByKey

DEFAULT_WINDOW = 256


class WindowVerdict(_ByKey, msgspec.Struct, frozen=True, kw_only=True):
    index: int
    start: int  # first document token
    end: int  # one past the last
    char_start: int
    char_end: int
    score: float
    is_anomaly: bool  # score above the document-level (Bonferroni) threshold
    anomaly_types: list[str]  # signals that fired in this window


class DocumentAnomalyResult(_ByKey, msgspec.Struct, frozen=True, kw_only=True):
    """A long text's verdict: anomalous when any window is (after the correction)."""

    is_anomaly: bool
    score: float  # the highest window score
    threshold: float  # the per-window threshold + log10(number of windows)
    detector: str
    n_windows: int
    anomalous_windows: list[WindowVerdict]
    windows: list[WindowVerdict]
    tokens: list[Token]
    token_scores: Float32Array  # [document tokens]
    rule: str


def _params(detector: str | None, check_attention: bool, check_activations: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"check_attention": check_attention, "check_activations": check_activations}
    if detector is not None:
        params["detector"] = detector
    return params


def detect_anomalies(
    analyzer: Any,
    text: str,
    check_attention: bool = True,
    check_activations: bool = True,
    *,
    detector: str | None = None,
    model: str | None = None,
    window_size: int = DEFAULT_WINDOW,
    stride: int | None = None,
) -> AnomalyResult | DocumentAnomalyResult:
    """Is ``text`` unlike normal text for the model? One pass for a text that fits in
    ``window_size`` tokens (an ``AnomalyResult``); windows for a longer one (a
    ``DocumentAnomalyResult``)."""
    params = {"anomaly": _params(detector, check_attention, check_activations)}
    text = analyzer.check_text(text, limit=analyzer.settings.max_document_chars)
    loaded = analyzer.load_model(model)
    ids, _ = analyzer.tokenize_document(loaded, text)
    if len(ids) + 2 <= window_size:
        result = analyzer.analyze(text, ["anomaly"], params, model=model)
        found: AnomalyResult = result.methods["anomaly"]
        return found
    return detect_document(analyzer, text, params, model=model, window_size=window_size, stride=stride)


def detect_document(
    analyzer: Any,
    text: str,
    params: dict[str, Any],
    *,
    model: str | None = None,
    window_size: int = DEFAULT_WINDOW,
    stride: int | None = None,
) -> DocumentAnomalyResult:
    stream = analyzer.analyze_document_streaming(
        text, ["anomaly"], params, window_size=window_size, stride=stride or max(1, window_size // 2), model=model
    )
    n = len(stream)
    windows: list[tuple[Any, AnomalyResult, int]] = []
    for w in stream:  # one window at a time; only the small verdicts are kept
        windows.append((w.window, w.result.methods["anomaly"], w.offset))
    threshold = windows[0][1].threshold + math.log10(max(n, 1))
    verdicts = [
        WindowVerdict(
            index=window.index,
            start=window.start,
            end=window.end,
            char_start=window.char_start,
            char_end=window.char_end,
            score=found.score,
            is_anomaly=found.score > threshold,
            anomaly_types=[s.name for s in found.signals if s.score > threshold],
        )
        for window, found, _ in windows
    ]
    owner = owners(stream.plan, len(stream.ids), causal=stream.loaded.info.causal)
    scores = stitch_field(
        [np.asarray(found.token_scores) for _, found, _ in windows], 0, [o for _, _, o in windows], stream.plan, owner
    )
    bad = [v for v in verdicts if v.is_anomaly]
    return DocumentAnomalyResult(
        is_anomaly=bool(bad),
        score=max(v.score for v in verdicts),
        threshold=threshold,
        detector=windows[0][1].detector,
        n_windows=n,
        anomalous_windows=bad,
        windows=verdicts,
        tokens=list(stream.tokens),
        token_scores=scores.astype(np.float32),
        rule="a window is anomalous when its score exceeds the detector threshold + log10(number of windows) "
        "(Bonferroni over windows); the document is anomalous when any window is",
    )
