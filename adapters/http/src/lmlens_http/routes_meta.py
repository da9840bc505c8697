"""``GET /plugins``, ``GET /models``, ``GET /artifacts``, ``GET /health``."""

from __future__ import annotations

import anyio.to_thread
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import lmlens_http
from lmlens.wire import ModelRow, PluginInfo
from lmlens_http.codec import encode_response
from lmlens_http.schemas import CacheHealth, Health, PoolHealth
from lmlens_http.service import Service


def plugin_infos(service: Service) -> list[PluginInfo]:
    """The kernel's plugin report, plus errors from the service's own ``register_routes``."""
    return [
        msgspec.structs.replace(info, error=info.error or service.route_errors[info.name])
        if info.name in service.route_errors
        else info
        for info in service.host.infos()
    ]


def model_rows(service: Service) -> list[ModelRow]:
    loaded = set(service.loaded_models())
    rows = []
    for name in service.allowed:
        alias = service.host.aliases.get(name)
        rows.append(
            ModelRow(
                name=name,
                description=alias.description if alias else f"configured model {name}",
                installed=alias.locate() is not None if alias else True,
                source=alias.source if alias else name,
                loaded=name in loaded,
                default=name == service.default_model,
                install_hint=alias.install_hint if alias else None,
            )
        )
    return rows


def health_report(service: Service) -> Health:
    cache: CacheHealth = service.cache.health()  # pings Redis: call from a thread
    rate = service.limiter.health()
    plugins = plugin_infos(service)
    stats = service.pool.stats()
    degraded = not cache.healthy or not rate.healthy or any(p.error for p in plugins)
    return Health(
        status="degraded" if degraded else "ok",
        version=lmlens_http.__version__,
        models_loaded=service.loaded_models(),
        default_model=service.default_model,
        cache=cache,
        rate_limit=rate,
        pool=PoolHealth(
            workers=stats.workers, queue_size=stats.queue_size, running=stats.running, queued=stats.queued
        ),
        plugins=plugins,
    )


async def plugins(request: Request) -> Response:
    return encode_response(request, plugin_infos(request.app.state.service))


async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    return encode_response(request, await anyio.to_thread.run_sync(model_rows, service))


async def artifacts(request: Request) -> Response:
    """Fitted artifacts (``?kind=sae``), with their metrics; never their tensors or paths."""
    service: Service = request.app.state.service
    kind = request.query_params.get("kind") or None
    rows = await anyio.to_thread.run_sync(service.analyzer.artifacts, kind)
    return encode_response(request, [msgspec.structs.replace(row, path="") for row in rows])


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    return encode_response(request, await anyio.to_thread.run_sync(health_report, service))


ROUTES = [
    Route("/plugins", plugins, methods=["GET"], name="plugins"),
    Route("/models", models, methods=["GET"], name="models"),
    Route("/artifacts", artifacts, methods=["GET"], name="artifacts"),
    Route("/health", health, methods=["GET"], name="health"),
]
