"""Typed failures of the importance method, each with its own stable code."""

from __future__ import annotations

from lmlens.errors import MethodFailedError


class NonFiniteAttributionError(MethodFailedError):
    """A NaN or infinity appeared in a target value or a gradient.

    Never returned as a number: an attribution built on a NaN would look like data.
    """

    code = "non_finite_attribution"
