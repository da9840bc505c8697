"""Training as a service: one params Struct for the job, the CLI and ``Analyzer.train_sae``.

``run_training(analyzer, params, progress)`` validates, resumes from the store's
checkpoint of the same name and params when one exists (a killed worker's retry),
checkpoints every ``checkpoint_every`` steps, evaluates on held-out text and saves the
artifact. A NaN loss stops training with ``training_diverged``; the last good checkpoint
stays in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from lmlens import Artifact, InvalidParamsError, data_provenance, model_fingerprint
from lmlens.artifacts import check_name
from lmlens_sae.activations import resolve_point
from lmlens_sae.errors import TrainingDivergedError
from lmlens_sae.fit import fit
from lmlens_sae.record import KIND, SAERecord
from lmlens_sae.train import TrainConfig


class TrainSAEParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    texts: list[str] | None = None  # training text; or a built-in corpus:
    corpus: Literal["pydoc"] | None = None  # the Python docs in the standard library
    model: str | None = None
    name: str | None = None  # artifact name; default "<model>-<point>-<arch>"
    point: str | None = None  # e.g. blocks.15.resid_post (SAELens hook names work too)
    layer: int | None = None  # instead of point: resid_post of this layer (-1: the last)
    architecture: Literal["relu", "topk", "batchtopk"] = "topk"
    k: int = 32
    expansion: int = 8
    d_sae: int | None = None  # overrides expansion
    tokens: int | None = None  # tokens to train on (default: one pass over the corpus)
    n_epochs: int | None = None  # instead of tokens: passes over the corpus
    l1_coeff: float = 5.0
    lr: float = 4e-4
    batch_size: int = 4096
    buffer_mb: float = 128.0
    context: int = 128
    held_out: float = 0.05
    dead_after_tokens: int = 50_000
    seed: int = 0
    checkpoint_every: int = 50
    evaluate_ce: bool = True


def validate(params: TrainSAEParams) -> None:
    def bad(message: str, field: str) -> InvalidParamsError:
        return InvalidParamsError(message, field=field)

    if params.texts is None and params.corpus is None:
        raise bad("give texts (a list of strings) or corpus='pydoc'", "texts")
    if params.texts is not None and not all(isinstance(t, str) for t in params.texts):
        raise bad("texts must be strings", "texts")
    if params.k <= 0:
        raise bad("k must be positive", "k")
    if params.expansion <= 0 or (params.d_sae is not None and params.d_sae <= 0):
        raise bad("expansion and d_sae must be positive", "d_sae")
    if params.tokens is not None and params.tokens <= 0:
        raise bad("tokens must be positive", "tokens")
    if params.n_epochs is not None and not 1 <= params.n_epochs <= 1000:
        raise bad("n_epochs must be in 1..1000", "n_epochs")
    if not 0 < params.lr < 1:
        raise bad("lr must be in (0, 1)", "lr")
    if params.batch_size < 1 or params.batch_size > 65536:
        raise bad("batch_size must be in 1..65536", "batch_size")
    if params.buffer_mb <= 0:
        raise bad("buffer_mb must be positive", "buffer_mb")
    if not 2 <= params.context <= 4096:
        raise bad("context must be in 2..4096", "context")
    if not 0 <= params.held_out < 0.5:
        raise bad("held_out must be in [0, 0.5)", "held_out")
    if params.checkpoint_every < 1:
        raise bad("checkpoint_every must be >= 1", "checkpoint_every")
    if params.name is not None:
        check_name(params.name, "name")


def corpus_texts(params: TrainSAEParams) -> list[str]:
    if params.texts is not None:
        return list(params.texts)
    import pydoc_data.topics

    return [body for _, body in sorted(pydoc_data.topics.topics.items())]


def run_training(
    analyzer: Any,
    params: TrainSAEParams,
    progress: Callable[[float, str], None] | None = None,
    *,
    fail_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) and save; returns a summary (name, metrics, resumed_from_step, ...).

    ``fail_after_steps`` is for tests: raise after that many steps of this attempt, as a
    killed worker would stop.
    """
    validate(params)
    loaded = analyzer.load_model(params.model)
    point = resolve_point(loaded, params.point, params.layer)
    d_in = loaded.info.d_model
    d_sae = params.d_sae or params.expansion * d_in
    if params.architecture in ("topk", "batchtopk") and params.k >= d_sae:
        raise InvalidParamsError(f"k={params.k} must be below d_sae={d_sae}", field="k")
    name = params.name or f"{loaded.name}-{point}-{params.architecture}".replace("/", "_")
    check_name(name, "name")
    texts = corpus_texts(params)
    store = analyzer.artifact_store
    fingerprint = model_fingerprint(loaded)
    identity = msgspec.to_builtins(params)
    cfg = TrainConfig(
        architecture=params.architecture, d_sae=d_sae, k=params.k, l1_coeff=params.l1_coeff, lr=params.lr,
        batch_size=params.batch_size, total_tokens=params.tokens or 0, seed=params.seed,
        dead_after_tokens=params.dead_after_tokens,
    )
    if params.tokens is None and params.n_epochs is None:
        n_epochs: int | None = 1
    else:
        n_epochs = params.n_epochs if params.tokens is None else None
    resume = None
    found = store.load_checkpoint(KIND, name)
    if found is not None and found.model == fingerprint and found.config.get("params") == identity:
        resume = (found.config["checkpoint"], found.tensors)

    def checkpoint(config: dict[str, Any], tensors: dict[str, Any]) -> None:
        store.checkpoint(Artifact(kind=KIND, name=name, model=fingerprint, model_name=loaded.name, points=[point],
                                  config={"checkpoint": config, "params": identity}, tensors=tensors))

    steps_this_attempt = [0]

    def report(fraction: float, message: str, stats: Any) -> None:
        steps_this_attempt[0] += 1
        if progress is not None:
            progress(fraction, message)
        if fail_after_steps is not None and steps_this_attempt[0] >= fail_after_steps:
            raise RuntimeError(f"stopped after {fail_after_steps} steps (test)")

    result = fit(loaded, texts, cfg, point=point, context=params.context, n_epochs=n_epochs,
                 buffer_mb=params.buffer_mb, held_out=params.held_out, checkpoint=checkpoint,
                 checkpoint_every=params.checkpoint_every, resume=resume, progress=report,
                 evaluate_ce=params.evaluate_ce)
    if result.diverged is not None:
        raise result.diverged
    record = SAERecord(
        name=name, sae=result.sae, point=point, model=fingerprint, model_name=loaded.name,
        metrics=result.metrics, density=result.density,
        extra={"train": cfg.to_dict(), "history": result.history, "context": params.context},
        provenance=data_provenance(texts),
    )
    info = store.save(record.to_artifact())
    store.drop_checkpoint(KIND, name)
    if progress is not None:
        progress(1.0, f"saved sae {name!r}: " + ", ".join(
            f"{k} {v:.3g}" for k, v in result.metrics.items()
            if k in ("eval_explained_variance", "eval_l0", "eval_dead_fraction", "eval_ce_loss_recovered")
        ))
    return {
        "kind": KIND, "name": name, "point": point, "model_name": loaded.name, "metrics": result.metrics,
        "content_hash": info.content_hash, "path": info.path, "resumed_from_step": result.resumed_from_step,
    }


__all__ = ["TrainSAEParams", "TrainingDivergedError", "run_training", "validate"]
