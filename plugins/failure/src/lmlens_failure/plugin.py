"""Hook implementations: the method, the shipped predictor, verbs, job, CLI, panel, route."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import click
import msgspec

from lmlens import Method, hookimpl

__version__ = "0.1.0"


def default_artifact_dir() -> Path:
    return Path(str(resources.files("lmlens_failure").joinpath("default", "default")))


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    from lmlens_failure.method import FAILURE

    register(FAILURE)


@hookimpl
def register_artifacts(register: Callable[[Any], None]) -> None:
    # "default" (smollm2-135m) and the predictors shipped for the tiny test models
    for directory in sorted(default_artifact_dir().parent.iterdir()):
        if (directory / "artifact.json").exists():
            register(directory)


@hookimpl
def register_verbs(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from lmlens_failure import api

    register("predict_failure_probability", api.predict_failure_probability)
    register("train_failure_predictor", api.train_failure_predictor)
    register("generate_failure_data", api.generate_failure_data)
    register("evaluate_failure_predictor", api.evaluate_failure_predictor)


# --- job --------------------------------------------------------------------------------------


class TrainParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``failure.train``: fit on ``training_data`` ([[text, label], ...]) or on generated data."""

    training_data: list[tuple[str, int]] | None = None
    n_synthetic_samples: int = 300
    tasks: list[str] | None = None
    name: str | None = None
    model: str | None = None
    evaluate: bool = True
    seed: int = 0


def run_train_job(params: TrainParams, context: Any) -> dict[str, Any]:
    from lmlens_failure import api

    report = api.train_failure_predictor(
        context.analyzer,
        [list(p) for p in params.training_data] if params.training_data is not None else None,
        generate_synthetic=params.training_data is None,
        n_synthetic_samples=params.n_synthetic_samples,
        tasks=params.tasks,
        name=params.name,
        evaluate=params.evaluate,
        seed=params.seed,
        model=params.model,
        progress=context.progress,
    )
    return {"name": report.name, "n": report.n, "failure_rate": report.failure_rate, "metrics": report.metrics}


@hookimpl
def register_jobs(register: Callable[[Any], None]) -> None:
    from lmlens.jobs import Job

    register(
        Job(
            kind="failure.train",
            description="generate labelled data on the model (or take yours) and fit a failure predictor",
            params=TrainParams,
            run=run_train_job,
        )
    )


# --- panel ------------------------------------------------------------------------------------


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    def panel(result: Any, save_path: str | None = None, **options: Any) -> Any:
        from lmlens_failure.panels import failure_panel

        return failure_panel(result, save_path=save_path, **options)

    def controls(result: Any) -> dict[str, list[str]]:
        from lmlens_failure.panels import groups

        return {"group": groups(result)}

    # the dashboard's optional attributes (lmlens_dashboard.contract): every signal's contribution
    # in the first request, and a selector of the signal groups
    panel.overview = {"top_k": 32}  # type: ignore[attr-defined]
    panel.controls = controls  # type: ignore[attr-defined]
    register("failure", panel)


# --- HTTP -------------------------------------------------------------------------------------


@hookimpl
def register_routes(register: Any) -> None:
    from lmlens_failure import routes

    routes.register(register)


# --- CLI --------------------------------------------------------------------------------------


@hookimpl
def register_commands(cli: click.Group) -> None:
    from lmlens_failure.commands import failure

    cli.add_command(failure)
