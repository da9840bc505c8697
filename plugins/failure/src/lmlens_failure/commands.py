"""``lmlens failure generate|train|evaluate|predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lmlens import wire
from lmlens.cli import friendly_errors


def _analyzer(model: str | None) -> Any:
    """An Analyzer with the plugin host the ``lmlens`` command already loaded."""
    from lmlens import Analyzer

    ctx = click.get_current_context(silent=True)
    host = ctx.find_root().obj.get("host") if ctx is not None and isinstance(ctx.find_root().obj, dict) else None
    return Analyzer(model, plugins=host) if host is not None else Analyzer(model)


def _bar() -> Any:
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", leave=False)

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_description(message[:40])
        bar.refresh()

    return bar, progress


def _load_data(path: str) -> Any:
    """A FailureData written by `lmlens failure generate`, or a JSON list of [text, label]."""
    from lmlens_failure.data import FailureData

    p = Path(path)
    if p.with_suffix(".npz").exists() and p.with_suffix(".json").exists() and p.suffix != ".json":
        return FailureData.load(p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: not generated data or a JSON list of [text, label] ({exc})") from None


@click.group("failure")
def failure() -> None:
    """Generate labelled data, train and evaluate failure predictors."""


@failure.command("generate")
@click.option("--n", "n", default=200, show_default=True, help="prompts to generate")
@click.option("--task", "tasks", multiple=True, help="task or family (repeatable; default: all)")
@click.option("--model", default=None)
@click.option("--seed", default=0, show_default=True)
@click.option("--output", "-o", required=True, help="path stem: writes STEM.npz and STEM.json")
@friendly_errors
def generate_command(n: int, tasks: tuple[str, ...], model: str | None, seed: int, output: str) -> None:
    """Ask the model checkable prompts and label each by what it said."""
    analyzer = _analyzer(model)
    bar, progress = _bar()
    data = analyzer.generate_failure_data(n, list(tasks) or None, seed=seed, progress=progress)
    bar.close()
    data.save(output)
    click.echo(json.dumps(data.summary(), indent=1))


@failure.command("train")
@click.option("--data", "data_path", default=None, help="generated data stem, or a JSON list of [text, label]")
@click.option("--n", "n", default=300, show_default=True, help="prompts to generate when no --data")
@click.option("--task", "tasks", multiple=True)
@click.option("--name", default=None, help="artifact name (default: the model's name)")
@click.option("--model", default=None)
@click.option("--no-evaluate", "evaluate", is_flag=True, flag_value=False, default=True)
@friendly_errors
def train_command(
    data_path: str | None, n: int, tasks: tuple[str, ...], name: str | None, model: str | None, evaluate: bool
) -> None:
    """Fit a failure predictor and save it as an artifact."""
    analyzer = _analyzer(model)
    bar, progress = _bar()
    if data_path is not None:
        report = analyzer.train_failure_predictor(
            _load_data(data_path), name=name, evaluate=evaluate, progress=progress
        )
    else:
        report = analyzer.train_failure_predictor(
            generate_synthetic=True,
            n_synthetic_samples=n,
            tasks=list(tasks) or None,
            name=name,
            evaluate=evaluate,
            progress=progress,
        )
    bar.close()
    from lmlens_failure.evaluate import format_table

    click.echo(f"saved failure_predictor {report.name!r}: {report.n} examples, failure rate {report.failure_rate:.2f}")
    split = report.metrics.get("random_split", {}).get("overall")
    if split:
        click.echo(format_table(split, "out-of-fold"))
    lofo = report.metrics.get("leave_one_family_out", {}).get("pooled")
    if lofo:
        click.echo(format_table(lofo, "leave-one-family-out"))


@failure.command("evaluate")
@click.option("--data", "data_path", default=None, help="generated data stem, or a JSON list of [text, label]")
@click.option("--n", "n", default=200, show_default=True, help="prompts to generate when no --data")
@click.option("--task", "tasks", multiple=True)
@click.option("--predictor", default=None)
@click.option("--model", default=None)
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def evaluate_command(
    data_path: str | None,
    n: int,
    tasks: tuple[str, ...],
    predictor: str | None,
    model: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Score a stored predictor on data against the majority class and 1 - max softmax."""
    analyzer = _analyzer(model)
    data = _load_data(data_path) if data_path is not None else n
    report = analyzer.evaluate_failure_predictor(data, predictor=predictor, tasks=list(tasks) or None, seed=seed)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    from lmlens_failure.evaluate import format_table

    click.echo(format_table(report["overall"], f"predictor {report['predictor']}"))
    for fam, rows in report["per_family"].items():
        click.echo("")
        click.echo(format_table(rows, fam))


@failure.command("predict")
@click.argument("text")
@click.option("--threshold", default=0.5, show_default=True)
@click.option("--predictor", default=None)
@click.option("--model", default=None)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def predict_command(text: str, threshold: float, predictor: str | None, model: str | None, as_json: bool) -> None:
    """How likely the model is to get TEXT wrong."""
    analyzer = _analyzer(model)
    result = analyzer.predict_failure_probability(text, threshold, predictor=predictor)
    if as_json:
        click.echo(wire.to_json(result))
        return
    click.echo(f"failure probability {result.failure_probability:.3f} -> {result.label} (threshold {threshold})")
    for s in result.contributions:
        click.echo(f"  {s.name:<22} {s.value:>9.4f}  {s.direction} ({s.contribution:+.3f} log-odds)")
