"""Run the service with uvicorn, one process or several."""

from __future__ import annotations

import os
from typing import Any

from lmlens.plugins import PluginHost
from lmlens_http.config import ENVIRONMENT, load_config


def run(config_file: str | None = None, *, plugins: PluginHost | None = None, **flags: Any) -> None:
    """``plugins``: a loaded plugin host to serve with (one process only; workers load their own)."""
    import uvicorn

    config = load_config(config_file, **flags)
    if config.workers == 1:
        from lmlens_http.app import create_app

        uvicorn.run(create_app(config, host=plugins), host=config.host, port=config.port, ws="websockets-sansio",
                    log_level="info", access_log=config.access_log)
        return
    # Worker processes rebuild the app from the environment: hand them the merged settings.
    if config_file:
        os.environ["LMLENS_CONFIG"] = str(config_file)
    for env_name, field in ENVIRONMENT.items():
        if field in flags and flags[field] is not None:
            os.environ[env_name] = str(flags[field])
    uvicorn.run("lmlens_http.app:app_from_env", factory=True, host=config.host, port=config.port,
                workers=config.workers, ws="websockets-sansio", log_level="info",
                access_log=config.access_log)
