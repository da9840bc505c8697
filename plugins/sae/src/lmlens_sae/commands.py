"""``lmlens sae train|export|import|list``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _analyzer(model: str | None) -> Any:
    from lmlens import Analyzer

    return Analyzer(model=model) if model else Analyzer()


def _fail(exc: Exception) -> None:
    code = getattr(exc, "code", "error")
    raise click.ClickException(f"{code}: {exc}")


def add_commands(cli: click.Group) -> None:
    @cli.group("sae")
    def sae() -> None:
        """Sparse autoencoders: train, list, import and export (SAELens format)."""

    @sae.command("train")
    @click.option("--model", default=None, help="alias, directory, .gguf file or hub id")
    @click.option("--point", default=None, help="hook point, e.g. blocks.15.resid_post (default: a middle layer)")
    @click.option("--layer", default=None, type=int, help="instead of --point: resid_post of this layer")
    @click.option("--arch", "architecture", default="topk", show_default=True,
                  type=click.Choice(["relu", "topk", "batchtopk"]))
    @click.option("--k", default=32, show_default=True, type=int)
    @click.option("--expansion", default=8, show_default=True, type=int)
    @click.option("--tokens", default=None, type=int, help="tokens to train on (default: one pass)")
    @click.option("--epochs", "n_epochs", default=None, type=int)
    @click.option("--corpus", "corpus_file", default=None, type=click.Path(exists=True, dir_okay=False),
                  help="a UTF-8 text file; paragraphs (blank-line separated) are the texts")
    @click.option("--pydoc", is_flag=True, help="train on the Python docs in the standard library")
    @click.option("--name", default=None)
    @click.option("--lr", default=4e-4, show_default=True, type=float)
    @click.option("--l1", "l1_coeff", default=5.0, show_default=True, type=float, help="ReLU: L1 weight")
    @click.option("--batch-size", default=4096, show_default=True, type=int)
    @click.option("--buffer-mb", default=128.0, show_default=True, type=float)
    @click.option("--no-ce", is_flag=True, help="skip CE-loss-recovered evaluation")
    def train(model: str | None, corpus_file: str | None, pydoc: bool, no_ce: bool, **options: Any) -> None:
        """Train an SAE and save it as an artifact (kind sae)."""
        from lmlens.errors import LmlensError
        from lmlens_sae.service import TrainSAEParams, run_training

        texts = None
        if corpus_file:
            raw = Path(corpus_file).read_text(encoding="utf-8")
            texts = [p for p in raw.split("\n\n") if p.strip()]
        try:
            params = TrainSAEParams(texts=texts, corpus="pydoc" if pydoc or texts is None else None, model=model,
                                    evaluate_ce=not no_ce, **options)

            def progress(fraction: float, message: str) -> None:
                click.echo(f"[{fraction:6.1%}] {message}", err=True)

            summary = run_training(_analyzer(model), params, progress)
        except LmlensError as exc:
            _fail(exc)
            return
        click.echo(json.dumps(summary, indent=1, default=str))

    @sae.command("list")
    @click.option("--model", default=None, help="only SAEs fitted on this model (loads it)")
    def list_(model: str | None) -> None:
        """SAEs in the artifact store (shipped ones are marked builtin) with their metrics."""
        analyzer = _analyzer(model)
        rows = analyzer.artifacts("sae", model=model) if model else analyzer.artifacts("sae")
        for info in rows:
            m = info.metrics
            shown = ", ".join(f"{k.removeprefix('eval_')} {m[k]:.3g}" for k in
                              ("eval_explained_variance", "eval_l0", "eval_dead_fraction", "eval_ce_loss_recovered")
                              if isinstance(m.get(k), int | float))
            click.echo(f"{info.name}\t{info.model_name}\t{','.join(info.points)}\t"
                       f"{'builtin' if info.builtin else 'user'}\t{shown}")

    @sae.command("export")
    @click.argument("args", nargs=-1, required=True)
    @click.option("--model", default=None)
    def export(args: tuple[str, ...], model: str | None) -> None:
        """export [NAME] DIR: write an SAE in SAELens format (NAME: default SAE of the model)."""
        from lmlens.errors import LmlensError
        from lmlens_sae.methods import default_sae
        from lmlens_sae.record import KIND, SAERecord
        from lmlens_sae.saelens import export_saelens

        if len(args) > 2:
            raise click.UsageError("export takes [NAME] DIR")
        try:
            analyzer = _analyzer(model)
            if len(args) == 2:
                name, directory = args
            else:
                name, directory = default_sae(analyzer.load_model().name), args[0]
            record = SAERecord.from_artifact(analyzer.artifact_store.load(KIND, name))
            from lmlens_sae.activations import saelens_hook_name

            out = export_saelens(record.sae, directory, hook_name=saelens_hook_name(record.point),
                                 model_name=record.model_name,
                                 extra={"name": record.name, "model_fingerprint": record.model,
                                        "metrics": record.metrics})
        except LmlensError as exc:
            _fail(exc)
            return
        click.echo(str(out))

    @sae.command("import")
    @click.argument("directory", type=click.Path(exists=True, file_okay=False))
    @click.option("--model", default=None, help="the model it belongs to (default: the cfg's, else the default)")
    @click.option("--name", default=None)
    def import_(directory: str, model: str | None, name: str | None) -> None:
        """Read an SAELens SAE (cfg.json + sae_weights.safetensors) into the artifact store."""
        from lmlens.errors import LmlensError
        from lmlens_sae.saelens_store import import_into_store

        try:
            info = import_into_store(_analyzer(model), directory, model=model, name=name)
        except LmlensError as exc:
            _fail(exc)
            return
        click.echo(f"imported sae {info.name!r} ({info.path})")
