"""The kernel's own job: analyse a batch of texts, resumable item by item."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from lmlens import wire
from lmlens.hookspecs import hookimpl
from lmlens.jobs import Job, JobContext


class AnalyzeBatchParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    texts: list[str]
    methods: list[str] = []  # empty: the installed plugins' default methods
    params: dict[str, dict[str, Any]] = {}
    model: str | None = None


def analyze_batch(params: AnalyzeBatchParams, context: JobContext) -> list[Any]:
    """Each finished text is recorded, so a retried batch resumes where it stopped."""
    done = context.done_items()
    total = len(params.texts)
    for index, text in enumerate(params.texts):
        if index in done:
            continue
        methods = params.methods or None
        result = context.analyzer.analyze(text, methods=methods, params=params.params, model=params.model)
        encoded = wire.to_msgpack(result)
        context.item_done(index, encoded)
        done[index] = encoded
        context.progress((index + 1) / total, f"analysed {index + 1} of {total} texts")
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
