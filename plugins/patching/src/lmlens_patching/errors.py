"""Typed failures of the patching plugin, each with its own stable code."""

from __future__ import annotations

from lmlens.errors import UnsupportedArchitectureError


class NoLanguageModelHeadError(UnsupportedArchitectureError):
    """The method scores next-token logits, and this model has none (an encoder such as BERT).

    Refused before any work rather than answered with a different metric: a final-state
    distance would not be a logit difference or a log-probability, and a result that
    silently means something else is worse than a clear refusal.
    """

    code = "no_lm_head"
