"""The hook this adapter adds to the plugin contract: routes of a plugin's own.

It lives here, not in the kernel, because only the HTTP service calls it; the app
adds it to the PluginManager at startup (``pm.add_hookspecs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmlens.hookspecs import hookspec


@hookspec
def register_routes(register: Callable[..., None]) -> None:
    """Call ``register(path, endpoint, methods=("POST",), request=None, response=None,
    summary=None, *, status=200, errors=(), responses=None, path_schema=None)`` for each
    HTTP route this plugin serves (``/predict/failure``). ``status`` is the success status,
    ``errors`` the error statuses it answers (``"404"``, ...), ``responses`` a response type
    per HTTP method where they differ, ``path_schema`` a JSON schema per path parameter:
    all for the OpenAPI document, which must say what the route really answers.

    ``endpoint(request)`` is an async Starlette endpoint; ``request.app.state.service``
    is the running ``lmlens_http.service.Service`` (its ``analyzer``, ``pool`` and
    ``prepare``/``analyze``). It may return a Starlette ``Response`` or any object
    msgspec can encode, which is then sent as JSON or MessagePack as the client asked.
    ``request`` and ``response`` are msgspec types for the OpenAPI document. A path
    already served (by the service or an earlier plugin) is reported as this plugin's
    error and not registered.
    """


__all__: list[Any] = ["register_routes"]
