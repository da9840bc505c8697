"""The ``anomaly`` method: read the shared pass, score it against a fitted detector."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmlens import Method, ModelInfo, Need, Trace
from lmlens_anomaly.collect import candidate_layers, special_ids
from lmlens_anomaly.detector import KIND, Detector, Verdict
from lmlens_anomaly.features import Plan, extract
from lmlens_anomaly.result import AnomalyParams, AnomalyResult, SignalReport

VERSION = "0.1.0"


def default_name(model_name: str) -> str:
    """The shipped default detector's artifact name for a model alias."""
    return f"{model_name}-default"


def capture_plan(info: ModelInfo, params: AnomalyParams) -> Plan:
    """What the shared pass captures: a superset of what any detector for this model reads
    (detector layers are always among ``candidate_layers``)."""
    return Plan(
        hidden_layers=tuple(candidate_layers(info.n_layers)) if params.check_activations else (),
        attention_layers=tuple(range(info.n_layers)) if params.check_attention else (),
        surprisal=bool(info.causal and info.has_lm_head),
        causal=bool(info.causal),
    )


def _needs(info: ModelInfo, params: AnomalyParams) -> Sequence[Need]:
    return capture_plan(info, params).needs()


def report(verdict: Verdict, detector: Detector, name: str, params: AnomalyParams, notes: list[str]) -> AnomalyResult:
    signals = [
        SignalReport(
            name=s.name,
            group=s.group,
            value=s.value,
            p_value=s.p_value,
            score=s.score,
            normal_low=s.normal_low,
            normal_high=s.normal_high,
            fired=s.fired,
            details=s.details,
        )
        for s in sorted(verdict.signals, key=lambda s: -s.score)
    ]
    return AnomalyResult(
        is_anomaly=verdict.is_anomaly,
        score=float(verdict.score),
        threshold=float(verdict.threshold),
        target_fpr=float(detector.config["target_fpr"]),
        detector=name,
        anomaly_types=[s for s in signals if s.fired],
        signals=signals,
        token_scores=verdict.token_scores.astype(np.float32),
        notes=notes,
    )


_DETECTORS: OrderedDict[str, Detector] = OrderedDict()
_DETECTORS_LOCK = threading.Lock()
_MEMO_SIZE = 8


def detector_from(artifact: Any) -> Detector:
    """The artifact as a ready ``Detector`` (float64 arrays), memoised by content hash."""
    key = artifact.content_hash
    with _DETECTORS_LOCK:
        found = _DETECTORS.get(key) if key else None
        if found is not None:
            _DETECTORS.move_to_end(key)
            return found
    made = Detector.from_artifact(artifact)
    if key:
        with _DETECTORS_LOCK:
            _DETECTORS[key] = made
            while len(_DETECTORS) > _MEMO_SIZE:
                _DETECTORS.popitem(last=False)
    return made


def detector_for(trace: Trace, params: AnomalyParams) -> tuple[Detector, str]:
    name = params.detector or default_name(trace.model.name)
    return detector_from(trace.artifact(KIND, name)), name


def score_trace(detector: Detector, trace: Trace, params: AnomalyParams) -> Verdict:
    plan = detector.plan(check_attention=params.check_attention, check_activations=params.check_activations)
    features = extract(plan, trace.activations, trace.input_ids, trace.text, special_ids(trace.model))
    return detector.detect(
        features, check_attention=params.check_attention, check_activations=params.check_activations
    )


def notes_for(detector: Detector, params: AnomalyParams) -> list[str]:
    notes = []
    if not detector.config["surprisal"]:
        notes.append("no surprisal signals: this model has no causal LM head (an encoder)")
    if not params.check_attention:
        notes.append("attention signals off (check_attention=False)")
    if not params.check_activations:
        notes.append("hidden-state signals off (check_activations=False)")
    return notes


def run_anomaly(trace: Trace, params: AnomalyParams) -> AnomalyResult:
    detector, name = detector_for(trace, params)
    verdict = score_trace(detector, trace, params)
    return report(verdict, detector, name, params, notes_for(detector, params))


def _artifacts(params: AnomalyParams, loaded: Any) -> list[tuple[str, str]]:
    return [(KIND, params.detector or default_name(loaded.name))]


def _extra_bytes(info: Any, params: AnomalyParams, n_tokens: int) -> float:
    return float(n_tokens * info.d_model * 8 * 4)  # float64 copies of the states one layer at a time


ANOMALY = Method(
    name="anomaly",
    description="is this input unlike normal text for this model: Mahalanobis distance of hidden states, "
    "surprisal, attention entropy and sink mass, character and repetition statistics, each as a "
    "calibrated tail probability; which signals fired; per-token scores",
    params=AnomalyParams,
    result=AnomalyResult,
    needs=_needs,
    run=run_anomaly,
    version=VERSION,
    token_fields={"token_scores": 0},
    extra_bytes=_extra_bytes,
    # the named detector, or the model's default, is checked against the model before any
    # work, and its content hash keys the result cache
    artifacts=_artifacts,
)
