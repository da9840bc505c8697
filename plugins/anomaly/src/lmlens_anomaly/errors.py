"""Typed errors of the anomaly plugin, each with a stable code."""

from __future__ import annotations

from lmlens.errors import EmptyTextError, InvalidParamsError


class TooFewTextsError(InvalidParamsError):
    """Fewer normal texts than a detector needs (``MIN_TEXTS``, stated in the message)."""

    code = "too_few_normal_texts"


class EmptyNormalTextError(EmptyTextError):
    """One of the normal texts is empty or only whitespace (``field`` says which)."""

    code = "empty_text"


class MixedModelsError(InvalidParamsError):
    """The normal texts (or their records) name more than one model, or another model."""

    code = "mixed_models"
