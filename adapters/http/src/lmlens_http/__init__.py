"""lmlens-http: the HTTP + WebSocket service in front of a model.

It routes each request to whichever method plugins are installed and holds no
method logic: decode and validate with msgspec, run the kernel's ``Analyzer`` in a
bounded pool, encode the result as JSON or MessagePack.

``create_app(config)`` builds the Starlette app; ``lmlens serve`` runs it.
"""

import importlib.metadata
from typing import Any

__version__ = importlib.metadata.version("lmlens-http")  # one source of truth: the package metadata

__all__ = ["ServiceConfig", "__version__", "create_app", "load_config"]


def __getattr__(name: str) -> Any:
    # Lazy: plugin discovery imports lmlens_http.plugin, and should not pay for Starlette.
    if name == "create_app":
        from lmlens_http.app import create_app

        return create_app
    if name in ("ServiceConfig", "load_config"):
        from lmlens_http import config

        return getattr(config, name)
    raise AttributeError(name)
