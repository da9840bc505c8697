"""The ``failure`` method: a stored predictor over the signals of the shared pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import numpy as np

from lmlens import Method, ModelInfo, Need, Result, Trace
from lmlens.errors import InvalidParamsError
from lmlens_failure.api import DEFAULT_NAME, KIND, predictor_from_artifact, shipped_name
from lmlens_failure.features import check_model, feature_needs, signals_from_activations
from lmlens_failure.predictor import FEATURE_GROUP

__version__ = "0.1.0"

SIGNAL_HELP = {
    "max_prob": "probability of the most likely next token",
    "entropy": "entropy of the next-token distribution (nats)",
    "margin": "top-1 minus top-2 next-token probability",
    "top5_mass": "probability mass of the five most likely next tokens",
    "log_tokens": "log of the input length in tokens",
    "probe": "hidden-state probe score (log-odds of failure)",
    "attn_probe": "attention-statistics probe score (log-odds of failure)",
    "mean_lookback_ratio": "mean share of the last token's attention reaching back past the last 4 tokens",
    "mean_attn_entropy": "mean entropy of the last token's attention rows (nats)",
    "mean_sink_mass": "mean share of the last token's attention on the first token",
}


class FailureParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    predictor: str = DEFAULT_NAME  # artifact name (kind failure_predictor); "default": the one shipped for the model
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    top_k: Annotated[int, msgspec.Meta(ge=0, le=32)] = 5  # contributing signals returned


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """One signal's part in the prediction; readable by key too (``signal["value"]``)."""

    name: str
    group: str  # logit | length | probe | attention
    value: float  # the signal's raw value on this input
    contribution: float  # its term in the decision, in log-odds of failure
    direction: str  # "raises" or "lowers" the failure probability
    description: str = ""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class FailureResult(Result, frozen=True, kw_only=True, tag="failure"):
    failure_probability: float  # calibrated
    predicted_failure: bool  # failure_probability >= threshold
    label: str  # "failure" or "success" at the threshold
    threshold: float
    contributions: list[Signal]  # the top_k signals by |contribution|
    decision: float  # log-odds before calibration
    one_minus_max_prob: float  # the baseline, for comparison
    predictor: str
    n_tokens: int
    warnings: list[str] = msgspec.field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def _needs(info: ModelInfo, params: FailureParams) -> Sequence[Need]:
    check_model(info)
    return feature_needs(info)


def _artifacts(params: FailureParams, loaded: Any) -> list[tuple[str, str]]:
    return [(KIND, shipped_name(params.predictor, loaded.name))]


def _run(trace: Trace, params: FailureParams) -> FailureResult:
    name = shipped_name(params.predictor, trace.model.name)
    predictor = predictor_from_artifact(trace.artifact(KIND, name))
    info = trace.model.info
    if predictor.layer >= info.n_layers:
        raise InvalidParamsError(f"predictor {name!r} reads layer {predictor.layer}", field="predictor")
    n_tokens = int(trace.input_ids.shape[1])
    sig = signals_from_activations(dict(trace.activations), info, [n_tokens])
    values, contrib = predictor.contributions(sig)
    values, contrib = values[0], contrib[0]
    decision = float(contrib.sum() + predictor.final.intercept)
    p = float(predictor.calibrator(np.array([decision]))[0])
    order = np.argsort(-np.abs(contrib), kind="stable")[: params.top_k]
    signals = [
        Signal(
            name=predictor.features[i],
            group=FEATURE_GROUP[predictor.features[i]],
            value=float(values[i]),
            contribution=float(contrib[i]),
            direction="raises" if contrib[i] > 0 else "lowers",
            description=SIGNAL_HELP.get(predictor.features[i], ""),
        )
        for i in order
    ]
    warnings = []
    trained_max = int(predictor.info.get("max_tokens", 0) or 0)
    if trained_max and n_tokens > trained_max:
        warnings.append(
            f"the input has {n_tokens} tokens; the predictor was trained on inputs of at most {trained_max}"
        )
    failed = p >= params.threshold
    return FailureResult(
        failure_probability=p,
        predicted_failure=failed,
        label="failure" if failed else "success",
        threshold=params.threshold,
        contributions=signals,
        decision=decision,
        one_minus_max_prob=float(1.0 - sig.logit[0, 0]),
        predictor=name,
        n_tokens=n_tokens,
        warnings=warnings,
    )


FAILURE = Method(
    name="failure",
    description="how likely the model is to get this input wrong (a predictor fitted on its real failures)",
    params=FailureParams,
    result=FailureResult,
    needs=_needs,
    run=_run,
    version=__version__,
    artifacts=_artifacts,
)
