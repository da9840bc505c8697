"""``lmlens anomaly fit FILE`` and ``lmlens anomaly detect TEXT``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from lmlens.cli import friendly_errors


def read_texts(path: Path) -> list[Any]:
    """One text per line of a ``.jsonl`` file (a string or ``{"text", "model"}``), or
    paragraphs separated by blank lines of any other file."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw) if p.strip()]


def add_commands(cli: click.Group) -> None:
    @cli.group("anomaly")
    def anomaly() -> None:
        """Fit and use anomaly detectors."""

    @anomaly.command("fit")
    @friendly_errors
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--name", required=True, help="artifact name of the detector")
    @click.option("--model", default=None, help="alias, directory, .gguf file or hub id")
    @click.option("--target-fpr", default=0.01, show_default=True, type=float)
    @click.option("--seed", default=0, show_default=True, type=int)
    def fit(file: Path, name: str, model: str | None, target_fpr: float, seed: int) -> None:
        """Fit a detector from the normal texts in FILE (paragraphs, or .jsonl)."""
        from tqdm import tqdm

        from lmlens import Analyzer
        from lmlens_anomaly.fit import fit_anomaly_detector

        analyzer = Analyzer(model)
        bar = tqdm(total=100, unit="%", leave=False)

        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction)
            bar.set_description(message[:40])
            bar.refresh()

        info = fit_anomaly_detector(
            analyzer, read_texts(file), name=name, target_fpr=target_fpr, seed=seed, progress=progress
        )
        bar.close()
        m = info.metrics
        click.echo(
            f"saved anomaly_detector {info.name!r} for {info.model_name}: layers {m['hidden_layers']}, "
            f"threshold {m['threshold']:.3f}, held-out FPR {m['held_fpr']:.3f} "
            f"({m['n_fit']} fitting texts, {m['n_held']} held out)"
        )

    @anomaly.command("detect")
    @friendly_errors
    @click.argument("text")
    @click.option("--model", default=None)
    @click.option("--detector", default=None, help="artifact name (default: the model's shipped default)")
    @click.option("--json", "as_json", is_flag=True, help="print the whole result as JSON")
    def detect(text: str, model: str | None, detector: str | None, as_json: bool) -> None:
        """Say whether TEXT is anomalous for the model, and which signals fired."""
        from lmlens import Analyzer
        from lmlens.wire import to_json

        found = Analyzer(model).detect_anomalies(text, detector=detector)
        if as_json:
            click.echo(to_json(found).decode())
            return
        verdict = "ANOMALY" if found.is_anomaly else "normal"
        click.echo(f"{verdict}: score {found.score:.2f} (threshold {found.threshold:.2f})")
        for s in getattr(found, "anomaly_types", []):
            click.echo(
                f"  {s.name}: {s.value:.4g} (normal {s.normal_low:.4g} .. {s.normal_high:.4g}), p={s.p_value:.2g}"
            )
        for w in getattr(found, "anomalous_windows", []):
            fired = ", ".join(w.anomaly_types)
            click.echo(f"  window {w.index} chars {w.char_start}-{w.char_end}: {w.score:.2f} {fired}")
