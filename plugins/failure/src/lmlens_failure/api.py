"""The verbs: generate labelled data, train, predict, evaluate (``Analyzer.<verb>(...)``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from lmlens.artifacts import (
    Artifact,
    ArtifactInfo,
    ArtifactModelMismatchError,
    check_name,
    data_provenance,
    model_fingerprint,
)
from lmlens.errors import InvalidParamsError
from lmlens.models import LoadedModel
from lmlens_failure.data import (
    FailureData,
    TrainingDataError,
    check_labels,
    data_from_pairs,
    generate_data,
    parse_pairs,
)
from lmlens_failure.evaluate import cross_validate
from lmlens_failure.features import ATTN_STATS, LOGIT_FEATURES, check_model
from lmlens_failure.predictor import Predictor, compare, fit_predictor, metrics

KIND = "failure_predictor"
DEFAULT_NAME = "default"
# the predictor "default" stands for on a model other than smollm2-135m (all ship in this wheel)
SHIPPED = {"tiny-gpt2": "tiny-gpt2-default"}
Progress = Callable[[float, str], None]

_memo: dict[str, Predictor] = {}
_memo_lock = threading.Lock()


class TrainReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``train_failure_predictor`` returns; readable by key too (``report["metrics"]``)."""

    name: str
    artifact: ArtifactInfo | None
    n: int
    failure_rate: float
    metrics: dict[str, Any]
    config: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def points(n_layers: int) -> list[str]:
    return ["logits"] + [f"blocks.{i}.{p}" for i in range(n_layers) for p in ("resid_post", "attn.pattern")]


def predictor_artifact(
    loaded: LoadedModel,
    predictor: Predictor,
    *,
    name: str,
    report: dict[str, Any] | None = None,
    texts: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Artifact:
    config, tensors = predictor.to_arrays()
    config["signals"] = {"logit": list(LOGIT_FEATURES), "attention": list(ATTN_STATS)}
    config["max_train_tokens"] = int(predictor.info.get("max_tokens", 0))
    provenance = data_provenance(texts) if texts else {}
    provenance.update(extra or {})
    return Artifact(
        kind=KIND,
        name=check_name(name, "name"),
        model=model_fingerprint(loaded),
        model_name=loaded.name,
        points=points(loaded.info.n_layers),
        config=config,
        tensors=tensors,
        metrics=_json_safe(report or {}),
        provenance=provenance,
    )


def _json_safe(value: Any) -> Any:
    """NaN (an AUROC over one class) is not JSON: store it as null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def shipped_name(name: str, model_name: str) -> str:
    """``name``, or for ``"default"`` the predictor shipped for ``model_name`` when one is."""
    return SHIPPED.get(model_name, name) if name == DEFAULT_NAME else name


def predictor_from_artifact(artifact: Artifact) -> Predictor:
    key = artifact.content_hash or f"{artifact.kind}/{artifact.name}/{id(artifact)}"
    with _memo_lock:
        found = _memo.get(key)
    if found is None:
        found = Predictor.from_arrays(artifact.config, artifact.tensors)
        if artifact.content_hash:
            with _memo_lock:
                _memo[key] = found
    return found


def resolve_name(analyzer: Any, loaded: LoadedModel, name: str | None) -> str:
    """A given name; else the newest predictor fitted on this model (yours before shipped ones);
    else the default (which refuses another model with artifact_model_mismatch)."""
    if name is not None:
        return check_name(name, "predictor")
    fingerprint = model_fingerprint(loaded)
    found = analyzer.artifact_store.list(kind=KIND, model=fingerprint)
    if found:
        found.sort(key=lambda i: (not i.builtin, i.provenance.get("created", "")))
        return str(found[-1].name)
    return DEFAULT_NAME


def load_predictor(analyzer: Any, name: str | None = None, *, model: str | None = None) -> tuple[str, Predictor]:
    loaded = analyzer.load_model(model)
    name = resolve_name(analyzer, loaded, name)
    return name, predictor_from_artifact(analyzer.load_artifact(KIND, name, model=model))


# --- verbs -----------------------------------------------------------------------------------


def generate_failure_data(
    analyzer: Any,
    n: int = 200,
    tasks: Sequence[str] | None = None,
    *,
    seed: int = 0,
    max_new_tokens: int = 8,
    model: str | None = None,
    progress: Progress | None = None,
) -> FailureData:
    """``n`` prompts with checkable answers, run greedily through the model and labelled by
    what it said (``data.records[i].output``, ``.failed``)."""
    loaded = analyzer.load_model(model)
    check_model(loaded.info)
    return generate_data(loaded, n, tasks, seed=seed, max_new_tokens=max_new_tokens, progress=progress)


CHUNK = 64


def generate_resumable(
    analyzer: Any,
    loaded: LoadedModel,
    n: int,
    tasks: Sequence[str] | None,
    seed: int,
    name: str,
    progress: Progress | None,
    *,
    chunk: int = CHUNK,
) -> FailureData:
    """Generate in chunks, checkpointing the labelled data after each one
    (``artifact_store.checkpoint``), so a retried job resumes where it stopped."""
    from lmlens_failure.features import Signals
    from lmlens_failure.labels import Labelled, run_examples
    from lmlens_failure.tasks import make_examples

    store = analyzer.artifact_store
    examples = make_examples(n, tasks, seed=seed)
    request = {"n": n, "tasks": sorted(tasks) if tasks else None, "seed": seed, "model": model_fingerprint(loaded)}
    records: list[Labelled] = []
    parts: list[Signals] = []
    saved = store.load_checkpoint(KIND, name)
    if saved is not None and saved.config.get("request") == request:
        records = [Labelled(**r) for r in saved.config["records"]]
        parts = [Signals(**{k[len("signals.") :]: v for k, v in saved.tensors.items() if k.startswith("signals.")})]
    notify = progress or (lambda f, m: None)
    while len(records) < n:
        start = len(records)
        batch = examples[start : start + chunk]
        new, sig = run_examples(loaded, batch)
        records.extend(new)
        parts.append(sig)
        merged = Signals.concat(parts)
        parts = [merged]
        store.checkpoint(
            Artifact(
                kind=KIND,
                name=name,
                model=model_fingerprint(loaded),
                model_name=loaded.name,
                config={"request": request, "records": [vars(r) for r in records]},
                tensors={f"signals.{k}": v for k, v in merged.arrays().items()},
            )
        )
        notify(len(records) / n, f"{len(records)}/{n} prompts labelled")
    return FailureData(records, Signals.concat(parts), loaded.name)


def _as_data(
    analyzer: Any, loaded: LoadedModel, data: object, tasks: Sequence[str] | None, seed: int, progress: Progress | None
) -> FailureData:
    if isinstance(data, FailureData):
        if data.model and data.model != loaded.name:
            raise TrainingDataError(
                f"this data was generated with {data.model}, not {loaded.name}", field="training_data"
            )
        return data
    if isinstance(data, int) and not isinstance(data, bool):
        return generate_data(loaded, data, tasks, seed=seed, progress=progress)
    texts, y = parse_pairs(data, max_chars=analyzer.settings.max_text_chars)
    return data_from_pairs(loaded, texts, y, progress=progress)


def train_failure_predictor(
    analyzer: Any,
    training_data: object = None,
    *,
    generate_synthetic: bool = False,
    n_synthetic_samples: int = 500,
    tasks: Sequence[str] | None = None,
    name: str | None = None,
    evaluate: bool = True,
    save: bool = True,
    seed: int = 0,
    model: str | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Fit a failure predictor on ``[(text, label), ...]`` (label 1: the model fails) or a
    ``FailureData``, or on ``n_synthetic_samples`` generated prompts; evaluate it out-of-fold
    (and leave-one-family-out for generated data) and save it as an artifact."""
    loaded = analyzer.load_model(model)
    check_model(loaded.info)
    name = check_name(name or loaded.name.replace("/", "-"), "name")
    notify = progress or (lambda f, m: None)
    if training_data is None and not generate_synthetic:
        raise TrainingDataError("give training_data or generate_synthetic=True", field="training_data")
    if training_data is not None and generate_synthetic:
        raise TrainingDataError("give training_data or generate_synthetic=True, not both", field="training_data")
    if generate_synthetic:
        if not isinstance(n_synthetic_samples, int) or n_synthetic_samples < 1:
            raise InvalidParamsError("n_synthetic_samples must be a positive integer", field="n_synthetic_samples")
        training_data = n_synthetic_samples
    if isinstance(training_data, (list, tuple)):
        parse_pairs(training_data, max_chars=analyzer.settings.max_text_chars)  # refuse before any model work

    def stage(lo: float, hi: float) -> Progress:
        return lambda f, m: notify(lo + (hi - lo) * f, m)

    if isinstance(training_data, int) and not isinstance(training_data, bool):
        data = generate_resumable(analyzer, loaded, training_data, tasks, seed, name, stage(0.0, 0.6))
    else:
        data = _as_data(analyzer, loaded, training_data, tasks, seed, stage(0.0, 0.6))
    y = data.labels
    check_labels(y)
    report: dict[str, Any] = {"summary": data.summary()}
    if evaluate:
        families = data.families if len(set(data.families)) > 1 else None
        report.update(cross_validate(data.signals, y, families, seed=seed, progress=stage(0.6, 0.95)))
    notify(0.95, "fitting the predictor")
    predictor = fit_predictor(data.signals, y, seed=seed)
    predictor.info["max_tokens"] = int(data.signals.n_tokens.max())
    artifact = predictor_artifact(
        loaded,
        predictor,
        name=name,
        report=report,
        texts=data.texts,
        extra={"tasks": sorted(set(data.families)), "seed": seed},
    )
    info = analyzer.save_artifact(artifact) if save else None
    analyzer.artifact_store.drop_checkpoint(KIND, name)
    notify(1.0, "saved" if save else "fitted")
    return TrainReport(
        name=name,
        artifact=info,
        n=len(y),
        failure_rate=float(y.mean()),
        metrics=artifact.metrics,
        config=artifact.config,
    )


def predict_failure_probability(
    analyzer: Any,
    text: str,
    threshold: float = 0.5,
    *,
    predictor: str | None = None,
    top_k: int = 5,
    model: str | None = None,
) -> Any:
    """How likely the model is to get ``text`` wrong: the ``failure`` method's result."""
    loaded = analyzer.load_model(model)
    name = resolve_name(analyzer, loaded, predictor)
    params = {"failure": {"predictor": name, "threshold": threshold, "top_k": top_k}}
    try:
        return analyzer.analyze(text, ["failure"], params, model=model).methods["failure"]
    except ArtifactModelMismatchError as exc:
        if predictor is not None:
            raise
        raise ArtifactModelMismatchError(
            f"no failure predictor is fitted on {loaded.name} (the shipped one is for smollm2-135m): "
            "train one with analyzer.train_failure_predictor(generate_synthetic=True) or your "
            f"(text, label) pairs. ({exc.message})",
            field="predictor",
        ) from None


def evaluate_failure_predictor(
    analyzer: Any,
    data: object,
    *,
    predictor: str | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 1,
    model: str | None = None,
) -> dict[str, Any]:
    """A stored predictor on new data (``FailureData``, ``[(text, label), ...]`` or a number of
    prompts to generate): accuracy, AUROC, Brier, ECE against the majority class and
    1 - max softmax, overall and per task family."""
    loaded = analyzer.load_model(model)
    name, pred = load_predictor(analyzer, predictor, model=model)
    evaluated = _as_data(analyzer, loaded, data, tasks, seed, None)
    y = evaluated.labels
    if len(y) == 0:
        raise TrainingDataError("no examples to evaluate", field="data")
    p = pred.predict_proba(evaluated.signals)
    fam = np.asarray(evaluated.families)
    per_family = {}
    for f in sorted(set(fam.tolist())):
        mask = fam == f
        per_family[f] = compare(y[mask], p[mask], evaluated.signals.take(np.flatnonzero(mask)), pred)
    return _json_safe(
        {
            "predictor": name,
            "n": len(y),
            "failure_rate": float(y.mean()),
            "overall": compare(y, p, evaluated.signals, pred),
            "per_family": per_family,
        }
    )


__all__ = [
    "KIND",
    "TrainReport",
    "evaluate_failure_predictor",
    "generate_failure_data",
    "load_predictor",
    "metrics",
    "predict_failure_probability",
    "predictor_artifact",
    "train_failure_predictor",
]
