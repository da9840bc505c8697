"""The lmlens plugin of this adapter: the ``lmlens serve`` command."""

from __future__ import annotations

from typing import Any

import click

from lmlens.hookspecs import hookimpl


@click.command("serve")
@click.option("--host", default=None, help="bind address (API_HOST, default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port (API_PORT, default 8000)")
@click.option("--workers", type=int, default=None, help="server processes (API_WORKERS, default 1)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="a config.yaml (default: $LMLENS_CONFIG, else ./config.yaml if present)")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None,
          config_file: str | None) -> None:
    """Run the HTTP + WebSocket service (uvicorn)."""
    from lmlens.errors import LmlensError
    from lmlens_http.server import run

    try:  # the command's plugin host (already loaded) serves too: no second discovery
        run(config_file, plugins=(ctx.obj or {}).get("host"), host=host, port=port, workers=workers)
    except LmlensError as exc:
        raise click.ClickException(f"[{exc.code}] {exc.message}") from None


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(serve)
