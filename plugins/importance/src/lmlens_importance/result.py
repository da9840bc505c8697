"""The ``importance`` result: scores per token and per word, and how far to trust them."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from lmlens.wire import Float32Array, Result


class TokenScore(msgspec.Struct, frozen=True, kw_only=True):
    index: int  # position in the analysed tokens
    text: str  # text[start:end]
    start: int
    end: int
    score: float  # signed; in the target's units for IG and occlusion
    normalized: float  # score / max |score|, in [-1, 1]
    special: bool  # a special token ([CLS], <bos>): held fixed, scored 0


class WordScore(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    start: int
    end: int
    tokens: list[int]  # indices of the tokens merged into this word
    score: float  # sum of its tokens' scores (additive for IG and gradient x input)
    normalized: float  # score / max |word score|


class TargetInfo(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # next_token, continuation, loss, similarity
    description: str
    value: float  # f(input)
    token_ids: list[int] = msgspec.field(default_factory=list)  # next_token / continuation: the explained tokens
    token_text: str = ""


class ConvergenceStep(msgspec.Struct, frozen=True, kw_only=True):
    steps: int
    delta: float
    relative_delta: float | None


class Convergence(msgspec.Struct, frozen=True, kw_only=True):
    """Completeness check of integrated gradients: sum(attributions) = f(x) - f(baseline)."""

    steps: int  # where it stopped
    rule: str
    spacing: str
    path: str
    f_input: float
    f_baseline: float
    delta: float  # sum(attributions) - (f_input - f_baseline)
    relative_delta: float | None  # |delta| / |f_input - f_baseline|; None when that is 0
    tolerance: float
    unreliable: bool
    adaptive: bool
    converged: bool
    history: list[ConvergenceStep]


class Erasure(msgspec.Struct, frozen=True, kw_only=True):
    """ERASER's comprehensiveness and sufficiency for one removal and one unit.

    Per fraction of ``Faithfulness.fractions``; AOPC is their mean (DeYoung et al. 2020).
    """

    removal: str  # "replace": embeddings swapped for the replacement; "delete": tokens dropped
    units: str  # "target": the target's own units (Faithfulness.units); "probability"
    comprehensiveness: list[float]  # m(x) - m(x without the top k)
    sufficiency: list[float]  # m(x) - m(the top k alone)
    aopc_comprehensiveness: float  # mean over the fractions
    aopc_sufficiency: float


class Faithfulness(msgspec.Struct, frozen=True, kw_only=True):
    """Remove tokens in the attribution's order and watch the target (ERASER-style).

    Higher comprehensiveness and lower sufficiency mean a more faithful ranking; a
    deletion curve below the random-order reference means the top tokens matter.
    """

    replacement: str
    fractions: list[float]
    counts: list[int]  # tokens removed/kept for each fraction
    comprehensiveness: list[float]  # f(x) - f(x without the top tokens), replaced, target units
    sufficiency: list[float]  # f(x) - f(only the top tokens), replaced, target units
    aopc_comprehensiveness: float = 0.0  # mean of comprehensiveness over the fractions
    aopc_sufficiency: float = 0.0
    units: str = ""  # the target's units, e.g. "log-probability (nats)"
    rounding: str = ""  # how a fraction becomes a token count
    # every (removal, units) pair computed: replace/delete x target/probability
    erasures: list[Erasure] = msgspec.field(default_factory=list)
    deletion_counts: list[int]  # [point]
    deletion_curve: Float32Array  # [point] f after removing the top deletion_counts tokens
    deletion_auc: float  # mean of the curve over the removed fraction (trapezoid)
    random_deletion_auc: float | None  # same for random orders (mean), the reference
    beats_random: bool | None  # deletion_auc < random_deletion_auc
    notes: list[str] = msgspec.field(default_factory=list)

    def erasure(self, removal: str = "delete", units: str = "probability") -> Erasure | None:
        """The ERASER-comparable numbers by default: tokens deleted, in probabilities."""
        return next((e for e in self.erasures if e.removal == removal and e.units == units), None)


class ImportanceResult(Result, frozen=True, kw_only=True, tag="importance"):
    """Also readable as a mapping: ``result["token_importance"]`` is ``scores``."""

    mapping_aliases: ClassVar[tuple[str, ...]] = ("token_importance",)

    method: str  # the attribution that ran (method="auto" resolves per model family)
    target: TargetInfo
    baseline: str | None  # what integrated gradients started from
    scores: Float32Array  # [pos] signed scores, 0 for special tokens
    normalized: Float32Array  # [pos] scores / max |scores|
    tokens: list[TokenScore]
    words: list[WordScore]
    convergence: Convergence | None  # integrated gradients only
    unreliable: bool  # the convergence check failed: do not read the scores as exact
    faithfulness: Faithfulness | None
    batch_size: int  # rows per extra pass
    passes: int  # extra forward passes run (batched)
    warnings: list[str] = msgspec.field(default_factory=list)
    method_reason: str | None = None  # why this method, when the caller left it to "auto"

    @property
    def token_importance(self) -> Float32Array:
        """[pos] signed per-token scores: the product description's name for ``scores``."""
        return self.scores
