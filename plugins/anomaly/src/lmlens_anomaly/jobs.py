"""The ``anomaly.fit`` job: fit a detector on a worker, with progress."""

from __future__ import annotations

from typing import Any

import msgspec

from lmlens import Job


class FitParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    normal_texts: list[str]
    name: str
    target_fpr: float = 0.01
    model: str | None = None
    seed: int = 0


def run_fit(params: FitParams, context: Any) -> dict[str, Any]:
    from lmlens_anomaly.fit import fit_anomaly_detector

    info = fit_anomaly_detector(
        context.analyzer,
        params.normal_texts,
        name=params.name,
        target_fpr=params.target_fpr,
        model=params.model,
        seed=params.seed,
        progress=context.progress,
    )
    context.progress(1.0, f"saved {info.kind} {info.name!r}")
    return {"kind": info.kind, "name": info.name, "content_hash": info.content_hash, "metrics": info.metrics}


FIT_JOB = Job(
    kind="anomaly.fit",
    description="fit an anomaly detector to a model from normal texts and save it as an artifact",
    params=FitParams,
    run=run_fit,
)
