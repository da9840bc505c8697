"""Labelled data: the model's own answers to checkable prompts, with the signals of each pass.

``FailureData`` holds one record per prompt (what the model said, whether that was a
failure, the task and family) and the signals of its shared pass, so a predictor can
be trained and evaluated without running the model again. It saves to a ``.npz``
(plain arrays, loaded with ``allow_pickle=False``) plus a JSON file of records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlens.errors import InvalidParamsError, LmlensError, TextTooLongError
from lmlens.models import LoadedModel
from lmlens_failure.features import Signals
from lmlens_failure.labels import Labelled, Progress, run_examples, signals_for, tokenize
from lmlens_failure.tasks import make_examples

MIN_EXAMPLES = 20
MIN_PER_CLASS = 5
MAX_TRAIN_TOKENS = 256  # a training text longer than this is refused


class TrainingDataError(LmlensError):
    """Training data the predictor cannot learn from."""

    code = "invalid_training_data"
    http_status = 422


class OneClassError(TrainingDataError):
    code = "training_data_one_class"


class TooFewExamplesError(TrainingDataError):
    code = "training_data_too_few"


@dataclass
class FailureData:
    records: list[Labelled]
    signals: Signals
    model: str = ""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([r.failed for r in self.records], dtype=np.int64)

    @property
    def families(self) -> list[str]:
        return [r.family for r in self.records]

    @property
    def texts(self) -> list[str]:
        return [r.prompt for r in self.records]

    def pairs(self) -> list[tuple[str, int]]:
        return [(r.prompt, r.failed) for r in self.records]

    def take(self, index: Sequence[int]) -> FailureData:
        return FailureData([self.records[i] for i in index], self.signals.take(list(index)), self.model)

    def summary(self) -> dict[str, Any]:
        fams: dict[str, dict[str, float]] = {}
        for fam in sorted(set(self.families)):
            ys = [r.failed for r in self.records if r.family == fam]
            fams[fam] = {"n": len(ys), "failure_rate": float(np.mean(ys))}
        return {"n": len(self), "failure_rate": float(self.labels.mean()) if len(self) else 0.0, "families": fams}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path.with_suffix(".npz"), **self.signals.arrays())
        payload = {"model": self.model, "records": [asdict(r) for r in self.records]}
        path.with_suffix(".json").write_text(json.dumps(payload, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> FailureData:
        path = Path(path)
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as arrays:
            signals = Signals(**{k: arrays[k] for k in arrays.files})
        payload = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        return cls([Labelled(**r) for r in payload["records"]], signals, payload.get("model", ""))


def generate_data(
    loaded: LoadedModel,
    n: int,
    tasks: Sequence[str] | None = None,
    *,
    seed: int = 0,
    max_new_tokens: int = 8,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> FailureData:
    """``n`` prompts from the tasks, answered greedily by the model and labelled."""
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 64:
        raise InvalidParamsError("max_new_tokens must be between 1 and 64", field="max_new_tokens")
    examples = make_examples(n, tasks, seed=seed)
    records, signals = run_examples(
        loaded, examples, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    return FailureData(records, signals, loaded.name)


def check_labels(labels: np.ndarray) -> None:
    counts = np.bincount(labels, minlength=2)
    if len(labels) < MIN_EXAMPLES:
        raise TooFewExamplesError(
            f"{len(labels)} examples; the predictor needs at least {MIN_EXAMPLES}", field="training_data"
        )
    if counts.min() == 0:
        only = "failures" if counts[1] else "successes"
        raise OneClassError(
            f"every example is labelled the same ({only} only); give both failures (1) and successes (0)",
            field="training_data",
        )
    if counts.min() < MIN_PER_CLASS:
        raise TooFewExamplesError(
            f"{int(counts[0])} successes and {int(counts[1])} failures; each class needs at least {MIN_PER_CLASS}",
            field="training_data",
        )


def parse_pairs(training_data: object, *, max_chars: int) -> tuple[list[str], np.ndarray]:
    """Validate ``[(text, label), ...]`` (label 1/True = the model fails)."""
    if not isinstance(training_data, (list, tuple)):
        raise TrainingDataError("training_data must be a list of (text, label) pairs", field="training_data")
    texts: list[str] = []
    labels: list[int] = []
    for i, item in enumerate(training_data):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise TrainingDataError(f"training_data[{i}] is not a (text, label) pair", field=f"training_data[{i}]")
        text, lab = item
        if not isinstance(text, str) or not text.strip():
            raise TrainingDataError(f"training_data[{i}] has an empty or non-string text", field=f"training_data[{i}]")
        if len(text) > max_chars:
            raise TextTooLongError(
                f"training_data[{i}] has {len(text)} characters; the limit is {max_chars}", field=f"training_data[{i}]"
            )
        if isinstance(lab, bool):
            lab = int(lab)
        if lab not in (0, 1) or (isinstance(lab, float) and not float(lab).is_integer()):
            raise TrainingDataError(
                f"training_data[{i}] has label {lab!r}; use 1 (the model fails) or 0", field=f"training_data[{i}]"
            )
        texts.append(text)
        labels.append(int(lab))
    y = np.asarray(labels, dtype=np.int64)
    check_labels(y)
    return texts, y


def token_ids(loaded: LoadedModel, texts: Sequence[str], limit: int = MAX_TRAIN_TOKENS) -> list[list[int]]:
    ids = [tokenize(loaded, t) for t in texts]
    for i, row in enumerate(ids):
        if len(row) > limit:
            raise TextTooLongError(
                f"text {i} is {len(row)} tokens long; the limit for failure prediction is {limit}", field=f"texts[{i}]"
            )
    return ids


def data_from_pairs(
    loaded: LoadedModel, texts: Sequence[str], labels: np.ndarray, *, progress: Progress | None = None
) -> FailureData:
    sig = signals_for(loaded, token_ids(loaded, texts), progress=progress)
    records = [
        Labelled(
            prompt=t, answer=None, output="", raw_output="", failed=int(y), degenerate=False, task="user", family="user"
        )
        for t, y in zip(texts, labels, strict=True)
    ]
    return FailureData(records, sig, loaded.name)
