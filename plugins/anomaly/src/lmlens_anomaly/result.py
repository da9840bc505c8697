"""Params and result of the ``anomaly`` method."""

from __future__ import annotations

from typing import Any

import msgspec

from lmlens.wire import Float32Array, Result


class _ByKey:
    """Read a Struct's fields by key too (``report["value"]``), as the seed does."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self.__struct_fields__:  # type: ignore[attr-defined]
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return self.__struct_fields__  # type: ignore[attr-defined,no-any-return]

    def __contains__(self, key: object) -> bool:
        return key in self.__struct_fields__  # type: ignore[attr-defined]


class AnomalyParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``detector``: the name of an ``anomaly_detector`` artifact fitted to this model
    (default: the shipped default for the model). ``check_attention`` / ``check_activations``
    turn the attention and hidden-state signals off (the pass then skips the patterns,
    which lets it run with SDPA)."""

    detector: str | None = None
    check_attention: bool = True
    check_activations: bool = True


class SignalReport(_ByKey, msgspec.Struct, frozen=True, kw_only=True):
    """One signal: its value, how rare that is on normal text, and the normal range."""

    name: str
    group: str  # activations | attention | surprisal | text
    value: float
    p_value: float  # P_normal(signal >= value), from the fitted tail
    score: float  # -log10(k * p_value), Bonferroni-adjusted over the k active signals
    normal_low: float  # 0.5% quantile of normal texts
    normal_high: float  # 99.5% quantile of normal texts
    fired: bool
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class AnomalyResult(_ByKey, Result, frozen=True, kw_only=True, tag="anomaly"):
    """Is this input unlike normal text for the model, and on which signals."""

    is_anomaly: bool
    score: float  # higher = odder; anomalous when above threshold
    threshold: float
    target_fpr: float
    detector: str
    anomaly_types: list[SignalReport]  # the signals that fired
    signals: list[SignalReport]  # every active signal
    token_scores: Float32Array  # [pos] -log10 p of each token's own oddness (0 for special tokens)
    notes: list[str] = msgspec.field(default_factory=list)
