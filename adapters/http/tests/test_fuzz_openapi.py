"""Property-based fuzz of the OpenAPI document (schemathesis), with ``--checks all``.

The document is the running server's own, with a real redis-server behind it, so the job
routes are served and fuzzed too, and every installed method's params Struct is fuzzed.
Every check runs: no 5xx, status codes, content types, headers and bodies as documented,
schema-violating requests refused, schema-valid requests accepted, auth not ignored.
Examples are bounded to keep the suite short; ``bench/fuzz_service.py`` is the long run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis.config import SchemathesisConfig

from lmlens.plugins import PluginHost
from lmlens_http import create_app
from lmlens_http.testing import Server, running, tiny_config
from lmlens_redis.testing import start_redis_server

CONFIG = Path(__file__).resolve().parents[1] / "bench" / "schemathesis.toml"


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: object, value: object) -> bytes:
    try:
        return msgspec.msgpack.encode(value)
    except OverflowError:  # MessagePack cannot carry the integer: no such request exists
        reject()


@schemathesis.deserializer("application/msgpack")
def _from_msgpack(ctx: object, response: object) -> object:
    return msgspec.msgpack.decode(response.content)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[Server]:
    redis = start_redis_server()
    patch = pytest.MonkeyPatch()
    patch.setenv("REDIS_URL", redis.url)
    patch.setenv("LMLENS_JOB_REDIS_TIMEOUT", "1")
    try:
        app = create_app(tiny_config(max_batch_size=4, max_job_texts=20, redis_url=redis.url),
                         host=PluginHost(load=["attention", "http", "worker"]))
        with running(app) as server:
            yield server
    finally:
        patch.undo()
        redis.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server: Server):
    config = SchemathesisConfig.from_path(CONFIG)
    return schemathesis.openapi.from_dict(json.loads(fuzz_server.app.state.openapi_bytes), config=config)


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_check_passes(case, fuzz_server: Server) -> None:
    case.call_and_validate(base_url=fuzz_server.url)
