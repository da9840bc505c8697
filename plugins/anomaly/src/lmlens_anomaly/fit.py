"""Fit a detector from normal texts and store it as a kernel artifact."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lmlens.artifacts import check_name
from lmlens.errors import InvalidParamsError
from lmlens_anomaly.collect import collect, normal_texts
from lmlens_anomaly.detector import KIND, Detector, fit_detector
from lmlens_anomaly.features import hidden_point

Progress = Callable[[float, str], None]


def check_fit_params(name: object, target_fpr: object) -> tuple[str, float]:
    check_name(name, "name")  # type: ignore[arg-type]
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not 0 < target_fpr < 0.5:
        raise InvalidParamsError("target_fpr must be a number in (0, 0.5)", field="target_fpr")
    return str(name), float(target_fpr)


def points_of(detector: Detector) -> list[str]:
    plan = detector.plan()
    points = [hidden_point(layer) for layer in plan.hidden_layers]
    points += [f"blocks.{layer}.attn.pattern" for layer in plan.attention_layers]
    if plan.surprisal:
        points.append("logits")
    return points


def build_artifact(
    loaded: Any,
    texts: Sequence[Any],
    *,
    name: str,
    target_fpr: float = 0.01,
    seed: int = 0,
    combine: str = "bonferroni_max",
    progress: Progress | None = None,
) -> Any:
    """Validate, run the passes, fit; return an (unsaved) ``Artifact``."""
    from lmlens import Artifact, model_fingerprint

    name, target_fpr = check_fit_params(name, target_fpr)
    valid = normal_texts(texts, loaded.name)
    notify = progress or (lambda fraction, message: None)
    data = collect(loaded, valid, seed=seed, progress=lambda f, m: notify(0.85 * f, m))
    detector, metrics = fit_detector(
        data, target_fpr=target_fpr, seed=seed, rule=combine, progress=lambda f, m: notify(0.85 + 0.15 * f, m)
    )
    digest = hashlib.sha256("\x00".join(valid).encode("utf-8")).hexdigest()
    return Artifact(
        kind=KIND,
        name=name,
        model=model_fingerprint(loaded),
        model_name=loaded.name,
        points=points_of(detector),
        config=detector.config,
        tensors={
            k: v.astype(np.float32) if k.endswith((".precision", ".location")) else v
            for k, v in detector.tensors.items()
        },
        metrics=metrics,
        provenance={"data_hash": digest, "data_size": len(valid), "seed": seed},
    )


def fit_anomaly_detector(
    analyzer: Any,
    normal_texts: Sequence[Any],
    name: str | None = None,
    target_fpr: float = 0.01,
    *,
    model: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Any:
    """Fit a detector to ``analyzer``'s model from ``normal_texts`` and save it.

    Returns the saved artifact's ``ArtifactInfo`` (``metrics`` has the held-out false
    positive rate and the threshold). Use it with ``detect_anomalies(text, detector=name)``.
    """
    loaded = analyzer.load_model(model)
    artifact = build_artifact(
        loaded, normal_texts, name=name or f"{loaded.name}-fitted", target_fpr=target_fpr, seed=seed, progress=progress
    )
    return analyzer.save_artifact(artifact)
