"""``lmlens importance TEXT``: run the method and print, save or draw the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def _summary(found: Any) -> str:
    lines = [f"{found.method}: {found.target.description} = {found.target.value:.4f}"]
    if found.method_reason:
        lines.append(f"({found.method_reason})")
    c = found.convergence
    if c is not None:
        rel = "n/a" if c.relative_delta is None else f"{c.relative_delta:.2%}"
        lines.append(
            f"IG: {c.steps} steps ({c.rule}, {c.spacing}, {c.path}), baseline {found.baseline}, "
            f"delta {c.delta:.4g} ({rel})" + ("  UNRELIABLE" if found.unreliable else "")
        )
    width = max((len(repr(w.text)) for w in found.words), default=4)
    for w in sorted(found.words, key=lambda w: -abs(w.score))[:15]:
        bar = "#" * round(abs(w.normalized) * 20)
        lines.append(f"  {w.text!r:{width}} {w.score:+10.4f} {'+' if w.score >= 0 else '-'}{bar}")
    f = found.faithfulness
    if f is not None:
        lines.append(
            "faithfulness: comprehensiveness "
            + ", ".join(f"{x:.3g}@{k}" for x, k in zip(f.comprehensiveness, f.counts, strict=True))
            + "; sufficiency "
            + ", ".join(f"{x:.3g}@{k}" for x, k in zip(f.sufficiency, f.counts, strict=True))
            + f"; AOPC {f.aopc_comprehensiveness:.3g} / {f.aopc_sufficiency:.3g} ({f.units})"
            + "".join(
                f"; ERASER (deleted, probability) AOPC {e.aopc_comprehensiveness:.3g} / {e.aopc_sufficiency:.3g}"
                for e in [f.erasure("delete", "probability")] if e is not None
            )
            + f"; deletion AUC {f.deletion_auc:.4g}"
            + ("" if f.random_deletion_auc is None else f" (random {f.random_deletion_auc:.4g})")
        )
    lines += [f"warning: {w}" for w in found.warnings]
    return "\n".join(lines)


def add_commands(cli: click.Group) -> None:
    @cli.command("importance")
    @click.argument("text")
    @click.option("--model", default=None, help="alias, directory, .gguf file or hub id")
    @click.option(
        "--method",
        "-m",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "gradient", "gradient_x_input", "integrated_gradients", "occlusion"]),
        help="auto: chosen per model family (occlusion on RMSNorm models, converged IG elsewhere)",
    )
    @click.option(
        "--target",
        default="auto",
        show_default=True,
        type=click.Choice(["auto", "next_token", "continuation", "loss", "similarity"]),
    )
    @click.option("--continuation", default=None)
    @click.option("--other-text", default=None, help="similarity target: the second text")
    @click.option("--baseline", default="zero", show_default=True, type=click.Choice(["zero", "pad", "mask", "text"]))
    @click.option("--steps", default=32, show_default=True, type=int)
    @click.option("--adaptive", is_flag=True, help="double the steps until the delta is in tolerance")
    @click.option("--param", "-p", "extra", multiple=True, help="NAME=JSON, any other parameter")
    @click.option(
        "--save",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="write the picture (.html or .png)",
    )
    @click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
    def importance_command(
        text: str,
        model: str | None,
        method: str,
        target: str,
        continuation: str | None,
        other_text: str | None,
        baseline: str,
        steps: int,
        adaptive: bool,
        extra: tuple[str, ...],
        save: Path | None,
        as_json: bool,
    ) -> None:
        """Which tokens of TEXT made the model produce its output."""
        import json

        from lmlens import Analyzer, LmlensError, wire
        from lmlens_importance.pictures import importance_panel

        params: dict[str, Any] = {
            "method": method,
            "target": target,
            "baseline": baseline,
            "steps": steps,
            "adaptive": adaptive,
        }
        if continuation is not None:
            params["continuation"] = continuation
        if other_text is not None:
            params["other_text"] = other_text
        for item in extra:
            key, sep, raw = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r}: use NAME=VALUE", param_hint="--param")
            try:
                params[key] = json.loads(raw)
            except json.JSONDecodeError:
                params[key] = raw
        try:
            result = Analyzer(model).analyze(text, methods=["importance"], params={"importance": params})
            if save is not None:
                importance_panel(result, save_path=str(save))
        except LmlensError as exc:
            click.echo(f"error [{exc.code}]: {exc.message}", err=True)
            raise SystemExit(2) from None
        found = result.methods["importance"]
        click.echo(wire.to_json(found) if as_json else _summary(found))
        if save is not None and not as_json:
            click.echo(f"wrote {save}")
