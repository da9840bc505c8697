"""The ``lmlens`` command. Plugins add subcommands through ``register_commands``."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from lmlens import wire
from lmlens.errors import LmlensError
from lmlens.plugins import PluginHost

F = TypeVar("F", bound=Callable[..., Any])


def _fail(code: str, message: str) -> None:
    click.echo(f"error [{code}]: {message}", err=True)
    sys.exit(2)


def friendly_errors(func: F) -> F:
    """Typed errors end the command with their code and message, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LmlensError as exc:
            _fail(exc.code, exc.message)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="lmlens")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Look inside transformer language models."""
    ctx.ensure_object(dict)


def _host(ctx: click.Context) -> PluginHost:
    host = ctx.obj.get("host") if ctx.obj else None
    if host is None:
        host = PluginHost()
        ctx.obj["host"] = host
    return host


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List loaded plugins: name, version, methods, hooks, load errors."""
    infos = _host(ctx).infos()
    if as_json:
        click.echo(wire.to_json(infos))
        return
    for info in infos:
        status = f"ERROR {info.error}" if info.error else "ok"
        click.echo(f"{info.name} {info.version or '-'} ({info.dist or 'in-process'}): {status}")
        if info.methods:
            click.echo(f"  methods: {', '.join(info.methods)}")
        click.echo(f"  hooks:   {', '.join(info.hooks) or '-'}")


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def models_command(ctx: click.Context, as_json: bool) -> None:
    """List model aliases, where their weights come from, and whether they are installed."""
    rows = [
        wire.ModelRow(
            name=a.name,
            description=a.description,
            source=a.source,
            installed=a.locate() is not None,
            install_hint=a.install_hint,
        )
        for a in _host(ctx).aliases.values()
    ]
    if as_json:
        click.echo(wire.to_json(rows))
        return
    for row in rows:
        state = "installed" if row.installed else f"missing: {row.install_hint}"
        click.echo(f"{row.name:14} {state}\n  {row.description}\n  from {row.source}")


def _parse_params(raw: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``--param attention.layers=[0,1]``: the value is JSON, or a bare string."""
    params: dict[str, dict[str, Any]] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise click.BadParameter(f"{item!r}: use METHOD.NAME=VALUE", param_hint="--param")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        params.setdefault(method, {})[name] = parsed
    return params


def _summary(result: wire.AnalysisResult) -> str:
    lines = [
        f"model   {result.model.name} ({result.model.family}, revision {result.model.revision})",
        f"tokens  {len(result.tokens)}: "
        + " ".join(repr(t.text or t.piece) for t in result.tokens[:24])
        + (" ..." if len(result.tokens) > 24 else ""),
        "timings " + ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items()),
    ]
    for name, method_result in result.methods.items():
        lines.append(f"{name}:")
        for field in msgspec.structs.fields(method_result):
            value = getattr(method_result, field.name)
            shape = getattr(value, "shape", None)
            if shape is not None:
                flat = value.reshape(-1)
                stats = f"min {flat.min():.4g} mean {flat.mean():.4g} max {flat.max():.4g}"
                lines.append(f"  {field.name:12} array {list(shape)}  {stats}")
            else:
                text = repr(value)
                lines.append(f"  {field.name:12} {text[:100]}{'...' if len(text) > 100 else ''}")
    return "\n".join(lines)


@cli.command("analyze")
@click.argument("text")
@click.option("--method", "-m", "methods", multiple=True, help="repeatable (default: the plugins' default methods)")
@click.option("--model", default=None, help="alias, directory, .gguf file or hub id")
@click.option("--param", "-p", "params", multiple=True, help="METHOD.NAME=JSON, repeatable")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the JSON result to this file (with --json: instead of stdout)")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
@click.option("--dtype", default=None, help="float32, float16, bfloat16 (default: float32)")
@click.pass_context
@friendly_errors
def analyze_command(
    ctx: click.Context,
    text: str,
    methods: tuple[str, ...],
    model: str | None,
    params: tuple[str, ...],
    as_json: bool,
    output: Path | None,
    device: str | None,
    dtype: str | None,
) -> None:
    """Analyse TEXT with one or more methods over one forward pass."""
    from lmlens.analyzer import Analyzer

    analyzer = Analyzer(model, device=device, dtype=dtype, plugins=_host(ctx))
    result = analyzer.analyze(text, methods=list(methods) or None, params=_parse_params(params))
    encoded = wire.to_json(result)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(encoded)
    if as_json and output is None:
        click.echo(encoded)  # the JSON goes to one place: the file when -o is given, else stdout
    elif not as_json:
        click.echo(_summary(result))
    if output is not None:
        click.echo(f"wrote {output} ({len(encoded) / 1e6:.3g} MB)", err=as_json)


def _read_document(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    if not path.is_file():
        raise click.BadParameter(f"no file {source!r} (use - for standard input)", param_hint="DOCUMENT")
    return path.read_text(encoding="utf-8")


@cli.command("analyze-document")
@click.argument("document")
@click.option("--method", "-m", "methods", multiple=True, help="repeatable (default: the plugins' default methods)")
@click.option("--model", default=None, help="alias, directory, .gguf file or hub id")
@click.option("--param", "-p", "params", multiple=True, help="METHOD.NAME=JSON, repeatable")
@click.option("--window-size", default=512, show_default=True, help="tokens per window")
@click.option("--stride", default=256, show_default=True, help="tokens between window starts")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the stitched document result as JSON")
@click.option("--keep-windows", is_flag=True, help="include every window's full result in the output")
@click.pass_context
@friendly_errors
def analyze_document_command(
    ctx: click.Context,
    document: str,
    methods: tuple[str, ...],
    model: str | None,
    params: tuple[str, ...],
    window_size: int,
    stride: int,
    output: Path | None,
    keep_windows: bool,
) -> None:
    """Analyse a long DOCUMENT (a file, or - for stdin) in windows, with a progress bar."""
    from tqdm.auto import tqdm

    from lmlens.analyzer import Analyzer
    from lmlens.streaming import collect_document

    analyzer = Analyzer(model, plugins=_host(ctx))
    stream = analyzer.analyze_document_streaming(
        _read_document(document), methods=list(methods) or None, params=_parse_params(params),
        window_size=window_size, stride=stride,
    )
    mem = stream.estimate.memory_estimate_gb
    click.echo(f"{len(stream.ids)} tokens in {len(stream)} windows of {window_size} (stride {stride}); "
               f"estimated peak {mem.total_gb:.2f} GB", err=True)
    with tqdm(total=len(stream), unit="window", desc="analysing") as bar:
        # "window i/n" announces window i, so it also means window i - 1 is done
        stream.progress = lambda stage, what: bar.update(1) if stage == "window" and not what.startswith("1/") else None
        result = collect_document(stream, keep_windows=keep_windows)
        bar.update(bar.total - bar.n)
    click.echo(f"stitched {result.n_tokens} tokens; rule: {result.stitch_rule}")
    for method, fields in result.per_token.items():
        for name, array in fields.items():
            click.echo(f"  {method}.{name}: array {list(array.shape)}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(wire.to_json(result))
        click.echo(f"wrote {output}")


@cli.command("estimate")
@click.argument("text")
@click.option("--method", "-m", "methods", multiple=True, help="repeatable (default: the plugins' default methods)")
@click.option("--model", default=None)
@click.option("--window-size", type=int, default=None, help="tokens per window (default: one pass)")
@click.option("--stride", type=int, default=None)
@click.pass_context
@friendly_errors
def estimate_command(
    ctx: click.Context, text: str, methods: tuple[str, ...], model: str | None,
    window_size: int | None, stride: int | None,
) -> None:
    """Estimate memory and time for analysing TEXT, before running anything."""
    from lmlens.analyzer import Analyzer

    analyzer = Analyzer(model, plugins=_host(ctx))
    found = analyzer.estimate_processing_requirements(
        text, list(methods) or None, window_size=window_size, stride=stride
    )
    click.echo(wire.to_json(found))


@cli.group("artifacts", invoke_without_command=True)
@click.option("--kind", default=None, help="only this kind (sae, failure_predictor, anomaly_detector, ...)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
@friendly_errors
def artifacts_command(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """List fitted artifacts (SAEs, predictors, detectors) with their metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from lmlens.analyzer import Analyzer

    rows = Analyzer(plugins=_host(ctx)).artifacts(kind)
    if as_json:
        click.echo(wire.to_json(rows))
        return
    if not rows:
        click.echo("no artifacts" + (f" of kind {kind}" if kind else ""))
    for row in rows:
        metrics = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.metrics.items()
            if isinstance(v, (int, float, str))
        )
        where = "builtin" if row.builtin else row.path
        click.echo(f"{row.kind:<18} {row.name:<28} {row.model_name:<14} {metrics}  [{where}]")


@artifacts_command.command("delete")
@click.argument("kind")
@click.argument("name")
@click.pass_context
@friendly_errors
def artifacts_delete(ctx: click.Context, kind: str, name: str) -> None:
    """Delete the artifact KIND NAME from the store."""
    from lmlens.analyzer import Analyzer

    if not Analyzer(plugins=_host(ctx)).delete_artifact(kind, name):
        _fail("artifact_not_found", f"no {kind} artifact named {name!r}")
    click.echo(f"deleted {kind} {name}")


def main() -> None:
    host = PluginHost()
    host.pm.hook.register_commands(cli=cli)
    cli(obj={"host": host}, prog_name="lmlens")
