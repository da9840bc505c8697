"""Property-based fuzz of the OpenAPI document (schemathesis), with ``--checks all``.

The document is the running server's own, with a real redis-server behind it, so the job
routes are served and fuzzed too, and every installed method's params Struct is fuzzed.
The checks: no 5xx, status codes, content types, headers and bodies as documented,
schema-violating requests refused, auth not ignored (schema-valid requests accepted is
left to the long run: see the test).
Examples are bounded to keep the suite short; ``bench/fuzz_service.py`` is the long run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from lmlens.plugins import PluginHost
from lmlens_http import create_app
from lmlens_http.testing import Server, free_port, running, tiny_config
from lmlens_redis.testing import RedisServer

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


PORT = free_port()
REDIS_URL = f"redis://127.0.0.1:{PORT}/0"


def _app() -> Any:
    """Built at import (schemathesis needs the document then), with REDIS_URL set only
    while the app is created, so the job routes are served; the fixture starts that Redis."""
    previous = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = REDIS_URL
    try:
        return create_app(tiny_config(max_batch_size=4, max_job_texts=20, redis_url=REDIS_URL),
                          host=PluginHost(load=["attention", "http", "worker"]))
    finally:
        if previous is None:
            del os.environ["REDIS_URL"]
        else:
            os.environ["REDIS_URL"] = previous


APP = _app()
schema = schemathesis.openapi.from_dict(json.loads(APP.state.openapi_bytes),
                                        config=SchemathesisConfig.from_path(CONFIG))


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[Server]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("the job routes need a redis-server binary to fuzz against")
    redis = RedisServer(binary, port=PORT)
    redis.start()
    patch = pytest.MonkeyPatch()
    patch.setenv("REDIS_URL", REDIS_URL)
    patch.setenv("LMLENS_JOB_REDIS_TIMEOUT", "1")
    try:
        with running(APP) as server:
            yield server
    finally:
        patch.undo()
        redis.stop()


@schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_check_passes(case, fuzz_server: Server) -> None:
    # Every check but positive_data_acceptance: a schema-valid request can still be refused
    # by a range the plugin checks in code (head_importance.batch_size, head_patterns.window,
    # and layers/heads, which depend on the model), until the plugins' params Structs carry
    # msgspec.Meta bounds that the document can show. bench/fuzz_service.py counts them.
    case.call_and_validate(base_url=fuzz_server.url, excluded_checks=[positive_data_acceptance])
