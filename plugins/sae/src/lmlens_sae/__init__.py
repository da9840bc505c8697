"""Sparse autoencoders for lmlens: train, evaluate, import/export SAELens, explain features.

Methods ``sae_features`` (alias ``sae``) and ``sae_feature``; the job ``sae.train``; the
CLI group ``lmlens sae``; the verb ``Analyzer.train_sae``; panels; and a shipped default
TopK SAE for SmolLM2-135M (``smollm2-135m-res15-topk``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lmlens import Job, Method, hookimpl

__version__ = "0.1.0"

DEFAULT_DIR = Path(__file__).resolve().parent / "default"


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    from lmlens_sae.methods import METHODS

    for method in METHODS:
        register(method)


@hookimpl
def register_artifacts(register: Callable[[Any], None]) -> None:
    if DEFAULT_DIR.is_dir():
        for directory in sorted(DEFAULT_DIR.iterdir()):
            if (directory / "artifact.json").is_file():
                register(directory)


def _run_job(params: Any, context: Any) -> Any:
    from lmlens_sae.service import run_training

    return run_training(context.analyzer, params, context.progress)


@hookimpl
def register_jobs(register: Callable[[Job], None]) -> None:
    from lmlens_sae.service import TrainSAEParams

    register(Job(kind="sae.train", description="train a sparse autoencoder on a model's activations at one hook "
                 "point; checkpoints and resumes", params=TrainSAEParams, run=_run_job))


def train_sae(analyzer: Any, training_texts: list[str] | None = None, layer: int | None = None,
              n_epochs: int | None = None, hidden_size: int | None = None, **options: Any) -> dict[str, Any]:
    """``analyzer.train_sae(...)``: the seed's form (``training_texts, layer, n_epochs, hidden_size``)
    or any field of ``TrainSAEParams`` (``texts``, ``point``, ``architecture``, ``k``, ...)."""
    import msgspec

    from lmlens import InvalidParamsError
    from lmlens_sae.service import TrainSAEParams, run_training

    progress = options.pop("progress", None)
    if training_texts is not None:
        options.setdefault("texts", list(training_texts))
    if layer is not None and "point" not in options:
        options["layer"] = layer
    if n_epochs is not None:
        options["n_epochs"] = n_epochs
    if hidden_size is not None:
        options["d_sae"] = hidden_size
    try:
        params = msgspec.convert(options, TrainSAEParams)
    except msgspec.ValidationError as exc:
        raise InvalidParamsError(f"train_sae: {exc}", field="params") from None
    return run_training(analyzer, params, progress)


@hookimpl
def register_verbs(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("train_sae", train_sae)


def _card_request(options: dict[str, Any]) -> dict[str, Any] | None:
    feature = options.get("feature")
    return None if feature is None else {"method": "sae_feature", "params": {"feature": int(feature)}}


# The dashboard's optional panel attributes (lmlens_dashboard.contract): a tap on a cell of the
# strip (source "sae-strip", column "feature") picks a feature; its card is sae_feature's result.
DASHBOARD: dict[str, dict[str, Any]] = {
    "feature_strip": {"selections": {"feature": "sae-strip"}, "detail": _card_request},
}


def _lazy_panel(function: str) -> Callable[..., Any]:
    def panel(result: Any, *, save_path: str | None = None, **options: Any) -> Any:
        from lmlens_sae import panels

        return getattr(panels, function)(result, save_path=save_path, **options)

    panel.__name__ = function
    for name, value in DASHBOARD.get(function, {}).items():
        setattr(panel, name, value)
    return panel


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("sae_features", _lazy_panel("feature_strip"))
    register("sae", _lazy_panel("feature_strip"))
    register("sae_feature", _lazy_panel("feature_card"))


@hookimpl
def register_commands(cli: click.Group) -> None:
    from lmlens_sae.commands import add_commands

    add_commands(cli)
