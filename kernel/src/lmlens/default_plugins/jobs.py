"""The kernel's own jobs: a batch of texts, and a long document window by window.

Both are resumable item by item: a finished text (a finished window) is recorded with
``context.item_done`` as soon as it is computed, so a retried job skips it, and a client
can read it before the job ends (``GET /jobs/{id}/items``; the dashboard draws each
window of an uploaded document as it arrives).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from lmlens import wire
from lmlens.batching import DEFAULT_BATCH_SIZE
from lmlens.chunking import Window
from lmlens.errors import LmlensError
from lmlens.hookspecs import hookimpl
from lmlens.jobs import Job, JobContext
from lmlens.wire import ModelRef

MAX_JOB_BATCH_SIZE = 64
WINDOW = 256  # pending texts prepared and analysed together


class AnalyzeBatchParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    texts: list[str]
    methods: list[str] = []  # empty: the installed plugins' default methods
    params: dict[str, dict[str, Any]] = {}
    model: str | None = None
    # texts of similar length per padded pass when every method is batchable; 1: one by one
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_JOB_BATCH_SIZE)] = DEFAULT_BATCH_SIZE


def analyze_batch(params: AnalyzeBatchParams, context: JobContext) -> list[Any]:
    """Each finished text is recorded, so a retried batch resumes where it stopped."""
    done = context.done_items()
    total = len(params.texts)
    todo = [i for i in range(total) if i not in done]

    def finished(position: int, result: Any) -> None:
        index = todo[position]
        encoded = wire.to_msgpack(result)
        context.item_done(index, encoded)
        done[index] = encoded
        context.progress(len(done) / total, f"analysed {len(done)} of {total} texts")  # raises if cancelled

    # windows of pending texts: grouped by length within a window; a window's requests and
    # results (full attention maps, say) are all that is held at once
    for first in range(0, len(todo), WINDOW):
        try:
            context.analyzer.analyze_batch(
                [params.texts[i] for i in todo[first : first + WINDOW]],
                methods=params.methods or None,
                params=params.params,
                model=params.model,
                batch_size=params.batch_size,
                on_result=lambda position, result, first=first: finished(first + position, result),
            )
        except LmlensError as exc:  # name the text by its index in the job
            found = re.fullmatch(r"texts\[(\d+)\]", exc.field or "")
            if found:
                exc.field = f"texts[{todo[first + int(found.group(1))]}]"
            raise
    return [msgspec.msgpack.decode(done[i]) for i in range(total)]


ANALYZE_BATCH = Job(
    kind="analyze_batch",
    description="analyse many texts with the same methods; resumes item by item after a crash",
    params=AnalyzeBatchParams,
    run=analyze_batch,
)


class AnalyzeDocumentParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: str
    methods: list[str] = []  # empty: the installed plugins' default methods
    params: dict[str, dict[str, Any]] = {}
    model: str | None = None
    window_size: int = 512  # document tokens per window, special tokens not counted
    stride: int | None = None  # tokens between window starts; None: half the window


class DocumentJobResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an ``analyze_document`` job returns; the windows' results are its items
    (item ``i`` is window ``i``'s ``WindowResult``, as MessagePack)."""

    model: ModelRef
    n_tokens: int
    window_size: int
    stride: int
    windows: list[Window]
    notes: list[str] = []


def analyze_document(params: AnalyzeDocumentParams, context: JobContext) -> DocumentJobResult:
    """``Analyzer.analyze_document_streaming``, one recorded item per window.

    Progress is the fraction of windows done, with the message ``"window i/n done"``;
    everything is validated (and the memory estimate checked) before the first window.
    """
    stream = context.analyzer.analyze_document_streaming(
        params.text, methods=params.methods or None, params=params.params, model=params.model,
        window_size=params.window_size, stride=params.stride or max(1, params.window_size // 2),
    )
    total = len(stream)
    done = set(context.done_items())
    context.progress(len(done) / total, f"{len(done)}/{total} windows done")
    for window in stream.run(skip=done):
        context.item_done(window.window.index, wire.to_msgpack(window))
        done.add(window.window.index)
        context.progress(len(done) / total, f"window {window.window.index + 1}/{total} done")
    loaded = stream.loaded
    return DocumentJobResult(
        model=ModelRef(name=loaded.name, revision=loaded.revision, family=loaded.info.family),
        n_tokens=len(stream.ids), window_size=stream.window_size, stride=stream.stride,
        windows=stream.windows, notes=list(stream.notes),
    )


ANALYZE_DOCUMENT = Job(
    kind="analyze_document",
    description="analyse a long document in windows; each window is an item, readable as soon as it is done",
    params=AnalyzeDocumentParams,
    run=analyze_document,
)


@hookimpl
def register_jobs(register: Callable[[Job], None]) -> None:
    register(ANALYZE_BATCH)
    register(ANALYZE_DOCUMENT)
