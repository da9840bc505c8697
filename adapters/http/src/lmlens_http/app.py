"""``create_app(config)``: the Starlette app, its routes, and the plugins' routes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from lmlens.plugins import PluginHost
from lmlens_http import hookspecs, openapi, routes_analyze, routes_meta, websocket
from lmlens_http.codec import encode_response
from lmlens_http.config import ServiceConfig, load_config
from lmlens_http.errors import EXCEPTION_HANDLERS, error_response
from lmlens_http.ratelimit import client_id
from lmlens_http.security import GuardMiddleware
from lmlens_http.service import Service


class RateLimitMiddleware:
    """Counts every POST per client; reading the docs or /health is never limited."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            request = Request(scope)
            limiter = scope["app"].state.service.limiter
            if limiter.enabled:
                try:
                    await anyio.to_thread.run_sync(limiter.check, client_id(request))
                except Exception as exc:
                    await error_response(request, exc)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _plugin_endpoint(endpoint: Callable[..., Any]) -> Callable[[Request], Any]:
    async def call(request: Request) -> Response:
        answer = await endpoint(request)
        return answer if isinstance(answer, Response) else encode_response(request, answer)

    return call


def collect_plugin_routes(service: Service, taken: set[str]) -> tuple[list[BaseRoute], list[dict[str, Any]]]:
    """Ask every plugin's ``register_routes``; a bad registration is that plugin's error."""
    pm = service.host.pm
    if getattr(pm.hook, "register_routes", None) is None or pm.hook.register_routes.spec is None:
        pm.add_hookspecs(hookspecs)
    routes: list[BaseRoute] = []
    documented: list[dict[str, Any]] = []
    for impl in pm.hook.register_routes.get_hookimpls():
        owner = impl.plugin_name

        def register(
            path: str,
            endpoint: Callable[..., Any],
            methods: tuple[str, ...] | list[str] = ("POST",),
            request: Any = None,
            response: Any = None,
            summary: str | None = None,
            *,
            status: int = 200,
            errors: tuple[str, ...] | list[str] = (),
            responses: dict[str, Any] | None = None,
            path_schema: dict[str, Any] | None = None,
            owner: str = owner,
        ) -> None:
            if not path.startswith("/") or path in taken:
                raise ValueError(f"route {path!r} is taken or not an absolute path")
            taken.add(path)
            routes.append(Route(path, _plugin_endpoint(endpoint), methods=list(methods), name=f"{owner}:{path}"))
            documented.append({"path": path, "methods": list(methods), "request": request,
                               "response": response, "summary": summary, "status": status,
                               "errors": list(errors), "responses": dict(responses or {}),
                               "path_schema": dict(path_schema or {})})

        try:
            impl.function(**({"register": register} if impl.argnames else {}))
        except Exception as exc:  # a broken plugin is reported on /health, never fatal
            service.route_errors[owner] = f"register_routes: {type(exc).__name__}: {exc}"
    return routes, documented


def create_app(config: ServiceConfig | None = None, *, host: PluginHost | None = None) -> Starlette:
    """The service for ``config`` (default: read from config.yaml and the environment)."""
    config = config or load_config()
    service = Service(config, host)
    builtin: list[BaseRoute] = [
        *routes_analyze.ROUTES, *routes_meta.ROUTES, *websocket.ROUTES, *openapi.ROUTES
    ]
    taken = {getattr(r, "path", "") for r in builtin}
    plugin_routes, documented = collect_plugin_routes(service, taken)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.warm()  # the default model loads in the background while the server starts
        await service.preload()
        try:
            yield
        finally:
            service.close()

    app = Starlette(routes=[*builtin, *plugin_routes], exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
                    lifespan=lifespan)
    app.add_middleware(RateLimitMiddleware)  # innermost: counts requests that got past the guard
    app.add_middleware(GuardMiddleware, config=config)  # request id, origin, API key, last-resort 500
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=6)  # on Accept-Encoding: gzip
    if config.allowed_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.allowed_origins), allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "x-api-key", "content-type", "accept"],
            expose_headers=["x-request-id", "retry-after", "location"],
        )
    document = openapi.build_openapi(service, documented)
    app.state.service = service
    app.state.openapi_bytes = json.dumps(document).encode()
    app.state.docs_html = openapi.docs_html(document)
    return app


def app_from_env() -> Starlette:
    """uvicorn factory for ``lmlens serve --workers N``: each process reads the same settings."""
    return create_app(load_config())
