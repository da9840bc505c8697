"""The kernel's own job: analyse a batch of texts, resumable item by item."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from lmlens import wire
from lmlens.batching import DEFAULT_BATCH_SIZE
from lmlens.errors import LmlensError
from lmlens.hookspecs import hookimpl
from lmlens.jobs import Job, JobContext

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


@hookimpl
def register_jobs(register: Callable[[Job], None]) -> None:
    register(ANALYZE_BATCH)
