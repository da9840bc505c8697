"""lmlens-anomaly: is this input unlike what the model normally sees, and on which signal.

One method, ``anomaly``, scores the shared forward pass against a fitted detector (an
``anomaly_detector`` artifact): Mahalanobis distance of mean-pooled hidden states
(Ledoit-Wolf), token surprisal, attention entropy and sink mass per head, character
and repetition statistics, each as a calibrated tail probability; the signals that
fired; per-token scores. Verbs: ``analyzer.fit_anomaly_detector(normal_texts, name=...,
target_fpr=0.01)`` and ``analyzer.detect_anomalies(text)``. Defaults ship for
``smollm2-135m`` and ``minilm-l6``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmlens import Job, Method, hookimpl
from lmlens_anomaly.detector import KIND, MIN_TEXTS, Detector
from lmlens_anomaly.errors import EmptyNormalTextError, MixedModelsError, TooFewTextsError
from lmlens_anomaly.method import ANOMALY, VERSION, default_name
from lmlens_anomaly.result import AnomalyParams, AnomalyResult, SignalReport

if TYPE_CHECKING:
    import click

__version__ = VERSION
DEFAULTS = Path(__file__).resolve().parent / "defaults"

__all__ = [
    "ANOMALY",
    "KIND",
    "MIN_TEXTS",
    "AnomalyParams",
    "AnomalyResult",
    "Detector",
    "EmptyNormalTextError",
    "MixedModelsError",
    "SignalReport",
    "TooFewTextsError",
    "__version__",
    "default_name",
]


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    register(ANOMALY)


@hookimpl
def register_artifacts(register: Callable[[str | Path], None]) -> None:
    if DEFAULTS.is_dir():
        for directory in sorted(DEFAULTS.iterdir()):
            if (directory / "artifact.json").exists():
                register(directory)


@hookimpl
def register_verbs(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from lmlens_anomaly.fit import fit_anomaly_detector
    from lmlens_anomaly.verbs import detect_anomalies

    register("fit_anomaly_detector", fit_anomaly_detector)
    register("detect_anomalies", detect_anomalies)


@hookimpl
def register_jobs(register: Callable[[Job], None]) -> None:
    from lmlens_anomaly.jobs import FIT_JOB

    register(FIT_JOB)


@hookimpl
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    def anomaly_panel(result: Any, *, save_path: str | None = None, **options: Any) -> Any:
        from lmlens_anomaly.panels import anomaly_panel as draw  # bokeh loads on first use

        return draw(result, save_path=save_path, **options)

    def controls(result: Any) -> dict[str, list[str]]:
        from lmlens_anomaly.panels import groups

        return {"group": groups(result)}

    anomaly_panel.controls = controls  # type: ignore[attr-defined]  # the dashboard's group selector
    register("anomaly", anomaly_panel)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from lmlens_anomaly.commands import add_commands

    add_commands(cli)
