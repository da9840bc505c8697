"""The lmlens plugin of this adapter: the ``lmlens dashboard`` command."""

from __future__ import annotations

from typing import Any

import click

from lmlens.hookspecs import hookimpl


@click.command("dashboard")
@click.option("--port", type=int, default=5006, show_default=True, help="port of the page")
@click.option("--address", default="127.0.0.1", show_default=True, help="bind address")
@click.option("--api", "api_url", default=None, envvar="LMLENS_API_URL",
              help="URL of an lmlens HTTP service to analyse with (default: analyse in this process)")
@click.option("--api-key", default=None, envvar="LMLENS_API_KEY", help="API key for --api, when the service needs one")
@click.option("--model", default=None, help="default model in process (LMLENS_DEFAULT_MODEL)")
@click.option("--allow-websocket-origin", "origins", multiple=True,
              help="host[:port] a browser may open the page from (default: this address and localhost)")
@click.option("--show", is_flag=True, help="open the page in a browser")
def dashboard(port: int, address: str, api_url: str | None, api_key: str | None, model: str | None,
              origins: tuple[str, ...], show: bool) -> None:
    """Serve the dashboard: every installed method's panels on one page (Bokeh server)."""
    from lmlens_dashboard.backend import ApiBackend, InProcessBackend
    from lmlens_dashboard.server import serve

    backend: Any
    if api_url:
        backend = ApiBackend(api_url, api_key)
    else:
        from lmlens import Analyzer

        backend = InProcessBackend(Analyzer(model))
    serve(backend, port=port, address=address, origins=origins, show=show)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(dashboard)
