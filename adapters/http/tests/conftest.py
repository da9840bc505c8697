"""A real uvicorn server on a free port, in a thread, for each app a test builds.

The plugin host loads only the attention plugin (plus this adapter and the kernel's
own plugins), so other plugins installed in the environment cannot change what these
tests see. ``test_plugin`` adds methods whose timing the tests control.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from lmlens import Method, Need, Result, hookimpl
from lmlens.plugins import PluginHost
from lmlens_http import ServiceConfig, create_app
from lmlens_http.testing import Server, running, tiny_config
from lmlens_redis.testing import redis_server  # noqa: F401


def config(**overrides: Any) -> ServiceConfig:
    return tiny_config(**overrides)


# --- a test plugin: methods whose timing the tests control -----------------------------------


class SleepyParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    seconds: float = 0.0


class SleepyResult(Result, frozen=True, kw_only=True, tag="sleepy"):
    slept: float


class RecordResult(Result, frozen=True, kw_only=True, tag="recorder"):
    n_tokens: int


class NoParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class EchoBody(msgspec.Struct, frozen=True, kw_only=True):
    word: str


class ControlledPlugin:
    """Records which texts each method ran on."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []

    def _sleepy(self, trace: Any, params: SleepyParams) -> SleepyResult:
        self.runs.append(("sleepy", trace.text))
        time.sleep(params.seconds)
        return SleepyResult(slept=params.seconds)

    def _record(self, trace: Any, params: NoParams) -> RecordResult:
        self.runs.append(("recorder", trace.text))
        return RecordResult(n_tokens=len(trace.tokens))

    def ran(self, method: str, text: str) -> int:
        return self.runs.count((method, text))

    @hookimpl
    def register_methods(self, register: Callable[[Method], None]) -> None:
        register(Method(name="sleepy", description="sleeps", params=SleepyParams, result=SleepyResult,
                        needs=lambda info, p: [Need("blocks.0.resid_post")], run=self._sleepy))
        register(Method(name="recorder", description="records", params=NoParams, result=RecordResult,
                        needs=lambda info, p: [], run=self._record))

    @hookimpl
    def register_routes(self, register: Callable[..., None]) -> None:
        async def upper(request: Any) -> EchoBody:
            body = msgspec.json.decode(await request.body(), type=EchoBody)
            return EchoBody(word=body.word.upper())

        register("/echo/upper", upper, methods=["POST"], request=EchoBody, response=EchoBody,
                 summary="a plugin's own route")

        async def repeat(request: Any) -> EchoBody:
            return EchoBody(word=request.path_params["word"] * request.path_params["times"])

        register("/echo/{word}/{times:int}", repeat, methods=["GET"], response=EchoBody)


class GreedyPlugin:
    """Asks for a path the service already serves: reported, not fatal."""

    @hookimpl
    def register_routes(self, register: Callable[..., None]) -> None:
        register("/analyze", lambda request: None)


@pytest.fixture(scope="session")
def plain_host() -> PluginHost:
    return PluginHost(load=["attention", "http"])


@pytest.fixture
def test_plugin() -> ControlledPlugin:
    return ControlledPlugin()


@pytest.fixture
def test_host(test_plugin: ControlledPlugin) -> PluginHost:
    host = PluginHost(load=["attention", "http"])
    host.register(test_plugin, name="test-plugin", version="1.0")
    return host


@pytest.fixture
def server(plain_host: PluginHost) -> Iterator[Server]:
    with running(create_app(config(), host=plain_host)) as srv:
        yield srv


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    """Start more servers in one test (other settings, other hosts); all stop at the end."""
    stack: list[Any] = []

    def make(host: PluginHost, **overrides: Any) -> Server:
        manager = running(create_app(config(**overrides), host=host))
        stack.append(manager)
        return manager.__enter__()

    yield make
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


@pytest.fixture
def greedy_host() -> PluginHost:
    host = PluginHost(load=["attention", "http"])
    host.register(GreedyPlugin(), name="greedy")
    return host
