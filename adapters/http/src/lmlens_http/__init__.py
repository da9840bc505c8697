"""lmlens-http: the HTTP + WebSocket service in front of a model.

It routes each request to whichever method plugins are installed and holds no
method logic: decode and validate with msgspec, run the kernel's ``Analyzer`` in a
bounded pool, encode the result as JSON or MessagePack.

``create_app(config)`` builds the Starlette app; ``lmlens serve`` runs it.
"""

__version__ = "0.1.0"  # before the imports: submodules read it

from lmlens_http.app import create_app
from lmlens_http.config import ServiceConfig, load_config

__all__ = ["ServiceConfig", "__version__", "create_app", "load_config"]
