"""Property-based fuzz of the OpenAPI document (schemathesis): no request gets a 5xx.

The document is the running server's own, so every installed method and its params
Struct is fuzzed; examples are bounded to keep the suite short.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis.checks import not_a_server_error

from lmlens.plugins import PluginHost
from lmlens_http import create_app
from lmlens_http.testing import Server, running, tiny_config


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: object, value: object) -> bytes:
    try:
        return msgspec.msgpack.encode(value)
    except OverflowError:  # MessagePack cannot carry the integer: no such request exists
        reject()


APP = create_app(tiny_config(max_batch_size=4), host=PluginHost(load=["attention", "http"]))
schema = schemathesis.openapi.from_dict(json.loads(APP.state.openapi_bytes))


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[Server]:
    with running(APP) as server:
        yield server


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, fuzz_server: Server) -> None:
    case.call_and_validate(base_url=fuzz_server.url, checks=[not_a_server_error])
