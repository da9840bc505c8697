"""A real Chromium (Selenium) against real Bokeh servers and a real HTTP service, on tiny-gpt2.

One Bokeh server in a thread serves three pages:
  /          in process, plugins attention + surprisal (the template plugin)
  /attention in process, plugin attention only (LMLENS_LOAD_PLUGINS=attention)
  /api       a client of the HTTP service (uvicorn in a thread, tiny models, 64 tokens at most)
Screenshots go to out/screenshots/ at the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lmlens import Analyzer
from lmlens.plugins import PluginHost
from lmlens_dashboard.backend import ApiBackend, InProcessBackend
from lmlens_dashboard.server import Running, running
from lmlens_dashboard.testing import CHROMEDRIVER, CHROMIUM, chromium

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOTS = ROOT / "out" / "screenshots"
MODEL = "tiny-gpt2"


def pytest_collection_modifyitems(items: list[Any]) -> None:
    if Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists():
        return
    skip = pytest.mark.skip(reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
    for item in items:
        if "driver" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@contextmanager
def load_plugins(names: str) -> Iterator[None]:
    """LMLENS_LOAD_PLUGINS decides what a PluginHost made inside the block loads."""
    before = os.environ.get("LMLENS_LOAD_PLUGINS")
    os.environ["LMLENS_LOAD_PLUGINS"] = names
    try:
        yield
    finally:
        if before is None:
            del os.environ["LMLENS_LOAD_PLUGINS"]
        else:
            os.environ["LMLENS_LOAD_PLUGINS"] = before


@pytest.fixture(scope="session")
def full_host() -> PluginHost:
    with load_plugins("attention,surprisal"):
        return PluginHost()


@pytest.fixture(scope="session")
def attention_host() -> PluginHost:
    with load_plugins("attention"):
        return PluginHost()


@pytest.fixture(scope="session")
def reference(full_host: PluginHost) -> Analyzer:
    """An analyzer the page never sees: the numbers the browser must show."""
    return Analyzer(MODEL, plugins=full_host)


@pytest.fixture(scope="session")
def api_server(full_host: PluginHost) -> Iterator[Any]:
    from lmlens_http import create_app
    from lmlens_http.testing import running as running_api
    from lmlens_http.testing import tiny_config

    with load_plugins("attention,surprisal,http"):
        host = PluginHost()
    with running_api(create_app(tiny_config(max_sequence_length=64), host=host)) as server:
        yield server


@pytest.fixture(scope="session")
def dash(full_host: PluginHost, attention_host: PluginHost, api_server: Any) -> Iterator[Running]:
    backends: dict[str, Any] = {
        "/": InProcessBackend(Analyzer(MODEL, plugins=full_host), models=[MODEL, "tiny-llama"]),
        "/attention": InProcessBackend(Analyzer(MODEL, plugins=attention_host), models=[MODEL]),
        "/api": ApiBackend(api_server.url, host=full_host),
    }
    for backend in backends.values():
        getattr(backend, "warm", lambda: None)()  # model loading is not what the browser tests time
    with running(backends) as server:
        yield server
    backends["/api"].close()


@pytest.fixture(scope="session")
def driver() -> Iterator[Any]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        yield browser
