"""Typed errors of the SAE plugin (stable codes, like every lmlens error)."""

from __future__ import annotations

from lmlens.errors import InvalidParamsError, LmlensError


class TrainingDivergedError(LmlensError):
    """The loss became NaN/inf: training stopped; the last good checkpoint is kept."""

    code = "training_diverged"
    http_status = 500

    def __init__(self, message: str, *, step: int) -> None:
        super().__init__(message, field="lr")
        self.step = step


class CorpusTooSmallError(InvalidParamsError):
    code = "corpus_too_small"


class UnknownHookPointError(InvalidParamsError):
    code = "unknown_hook_point"


class InvalidSAEError(InvalidParamsError):
    """An imported SAE whose cfg lacks fields or whose tensors disagree with it."""

    code = "invalid_sae"
