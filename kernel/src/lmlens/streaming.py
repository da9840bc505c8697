"""Streaming analysis of long documents: one window at a time, in bounded memory."""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmlens.chunking import (
    RULE_CAUSAL,
    RULE_ENCODER,
    DocumentResult,
    Window,
    WindowResult,
    owners,
    plan_windows,
    stitch_field,
)
from lmlens.errors import InvalidParamsError
from lmlens.method import Method
from lmlens.models import LoadedModel
from lmlens.special import special_tokens
from lmlens.wire import ModelRef, Token

if TYPE_CHECKING:
    from lmlens.analyzer import Analyzer
    from lmlens.request import Progress, Request


class DocumentStream:
    """An iterable of ``WindowResult``s over one document, with the document's facts.

    Work happens only as the consumer iterates; leaving the loop early stops it.
    """

    def __init__(
        self,
        analyzer: Analyzer,
        document: str,
        methods: Sequence[str] | str,
        params: Mapping[str, Any] | None,
        *,
        window_size: int,
        stride: int | None,
        model: str | None,
        progress: Progress | None,
        clamp_window: bool = False,
    ) -> None:
        """``stride=None``: half the window. ``clamp_window``: a ``window_size`` above what the
        model and MAX_SEQUENCE_LENGTH allow shrinks to the limit (said in ``notes``) instead
        of being refused; ``analyze_efficient``'s ``max_length`` is such a request."""
        self.analyzer = analyzer
        # the cheap checks first, so a bad request never loads a model
        analyzer.check_text(document, limit=analyzer.settings.max_document_chars)
        analyzer.resolve_params(analyzer.resolve_methods(methods), params)
        loaded = analyzer.load_model(model)
        self.prefix, self.suffix = special_tokens(loaded.tokenizer)
        n_special = len(self.prefix) + len(self.suffix)
        limit = analyzer.token_limit(loaded)
        self.notes: list[str] = []
        self.requested_window_size = window_size
        if window_size + n_special > limit and clamp_window and limit - n_special >= 1:
            clamped = limit - n_special
            self.notes.append(
                f"max_length {window_size} clamped to {clamped} tokens per window: the limit for "
                f"{loaded.name} is {limit} tokens (MAX_SEQUENCE_LENGTH "
                f"{analyzer.settings.max_sequence_length}, the model's {loaded.info.max_positions or 'unbounded'} "
                f"positions), {n_special} of them special tokens"
            )
            if stride is not None and stride > clamped:
                self.notes.append(f"stride {stride} clamped to the window, {clamped}")
                stride = clamped
            window_size = clamped
        if stride is None:
            stride = max(1, window_size // 2)
        self.window_size, self.stride = window_size, stride
        if window_size + n_special > limit:
            raise InvalidParamsError(
                f"window_size {window_size} (+{n_special} special tokens) exceeds the limit of "
                f"{limit} tokens for {loaded.name}",
                field="window_size",
            )
        self.request: Request = analyzer.prepare(
            document, methods, params, model=model, document=True,
            window_size=window_size + n_special, stride=stride,
        )
        self.document = self.request.text
        self.methods: list[Method] = list(self.request.methods)
        self.params = self.request.params
        self.loaded: LoadedModel = self.request.loaded
        self.ids, self.spans = analyzer.tokenize_document(self.loaded, self.document)
        if not self.ids:
            raise InvalidParamsError("the document has no tokens", field="text")
        self.plan = plan_windows(len(self.ids), window_size, stride)
        assert self.request.estimate is not None
        self.estimate = self.request.estimate
        self.progress = progress
        pieces = self.loaded.tokenizer.convert_ids_to_tokens(self.ids)
        self.tokens = [
            Token(id=i, piece=str(p), text=self.document[s:e], start=s, end=e)
            for i, p, (s, e) in zip(self.ids, pieces, self.spans, strict=True)
        ]
        self.windows = [
            Window(index=w, start=s, end=e, char_start=self.spans[s][0], char_end=self.spans[e - 1][1])
            for w, (s, e) in enumerate(self.plan)
        ]

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self) -> Iterator[WindowResult]:
        return self.run()

    def run(self, skip: Container[int] = ()) -> Iterator[WindowResult]:
        """The windows in order, leaving out those whose index is in ``skip`` (a job that
        resumes after a crash skips the windows it recorded)."""
        tokenizer = self.loaded.tokenizer
        for window in self.windows:
            if window.index in skip:
                continue
            if self.progress is not None:
                self.progress("window", f"{window.index + 1}/{len(self.windows)}")
            ids = self.prefix + self.ids[window.start : window.end] + self.suffix
            text = self.document[window.char_start : window.char_end]
            shift = window.char_start
            tokens = [
                Token(id=i, piece=str(p), text="", start=0, end=0)
                for i, p in zip(self.prefix, tokenizer.convert_ids_to_tokens(self.prefix), strict=True)
            ]
            tokens += [
                Token(id=t.id, piece=t.piece, text=t.text, start=t.start - shift, end=t.end - shift)
                for t in self.tokens[window.start : window.end]
            ]
            tokens += [
                Token(id=i, piece=str(p), text="", start=len(text), end=len(text))
                for i, p in zip(self.suffix, tokenizer.convert_ids_to_tokens(self.suffix), strict=True)
            ]
            input_ids = torch.tensor([ids])  # [1, pos]
            result = self.analyzer.run_uncached(self.request.window(text, input_ids, tokens), progress=self.progress)
            yield WindowResult(window=window, n_windows=len(self.windows), offset=len(self.prefix), result=result)
            del result  # the consumer holds the window now; do not keep it through the next one


def collect_document(stream: DocumentStream, *, keep_windows: bool = False) -> DocumentResult:
    """Run every window and stitch the methods' per-token fields onto the document."""
    causal = stream.loaded.info.causal
    owner = owners(stream.plan, len(stream.ids), causal=causal)
    per_window: list[WindowResult] = list(stream)
    per_token: dict[str, dict[str, np.ndarray]] = {}
    for method in stream.methods:
        for field, axis in method.token_fields.items():
            arrays = [getattr(w.result.methods[method.name], field) for w in per_window]
            if any(a is None for a in arrays):
                continue
            per_token.setdefault(method.name, {})[field] = stitch_field(
                [np.asarray(a) for a in arrays], axis, [w.offset for w in per_window], stream.plan, owner
            )
    loaded = stream.loaded
    return DocumentResult(
        model=ModelRef(name=loaded.name, revision=loaded.revision, family=loaded.info.family),
        n_tokens=len(stream.ids),
        tokens=stream.tokens,
        windows=stream.windows,
        stitch_rule=RULE_CAUSAL if causal else RULE_ENCODER,
        per_token=per_token,
        window_results=per_window if keep_windows else None,
        window_size=stream.window_size,
        stride=stream.stride,
        requested_window_size=stream.requested_window_size,
        notes=list(stream.notes),
    )
