"""The long fuzz run: schemathesis ``--checks all`` on the whole OpenAPI document and the
hand-written hostile corpus (``lmlens_http.hostile``) on /analyze, /analyze/batch, /jobs
and the WebSocket, against a real server with a real redis-server behind the job routes.

Prints, per route, how many inputs were sent, the statuses seen and the 5xx found; then
schemathesis' own summary (per check).

    python adapters/http/bench/fuzz_service.py [--examples 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import msgspec
from websockets.sync.client import connect

from lmlens.plugins import PluginHost
from lmlens_http import create_app
from lmlens_http.hostile import bodies, wrong_content_types, ws_frames
from lmlens_http.testing import running, tiny_config
from lmlens_redis.testing import RedisServer

HERE = Path(__file__).resolve().parent


def post(conn: http.client.HTTPConnection, path: str, body: bytes, content_type: str | None) -> int:
    headers = {"Content-Type": content_type} if content_type else {}
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def corpus(url: str, port: int) -> dict[str, Counter[int]]:
    seen: dict[str, Counter[int]] = {}
    routes = {"/analyze": list(bodies("text")), "/analyze/batch": list(bodies("texts")),
              "/jobs": list(bodies("texts", wrap_job=True))}
    for route, cases in routes.items():
        cases = cases + [(n, t, b) for n, t, b in wrong_content_types(cases[-1][2])]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        counter: Counter[int] = Counter()
        for name, content_type, body in cases:
            try:
                status = post(conn, route, body, content_type)
            except (http.client.HTTPException, OSError) as exc:  # a dropped connection counts as a failure
                print(f"  {route} {name}: connection failed: {exc}")
                counter[599] += 1
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            counter[status] += 1
            if status >= 500:
                print(f"  5xx on {route}: {name} -> {status}")
        for job_id in ("x:result", "0" * 31 + "g", "../../etc", "A" * 32):
            for method in ("GET", "DELETE"):
                if route == "/jobs":
                    conn.request(method, f"/jobs/{job_id}")
                    response = conn.getresponse()
                    response.read()
                    counter[response.status] += 1
        seen[route] = counter
        conn.close()
    counter = Counter()
    with connect(url.replace("http", "ws") + "/ws", max_size=None) as ws:
        for name, frame in ws_frames():
            ws.send(frame)
            while True:
                raw = ws.recv(timeout=120)
                message = msgspec.msgpack.decode(raw) if isinstance(raw, bytes) else json.loads(raw)
                if message["type"] in ("complete", "error"):
                    break
            code = message["data"].get("code") if message["type"] == "error" else "complete"
            counter[code] += 1
            if code == "internal_error":
                print(f"  internal_error on the WebSocket: {name}")
    seen["WS /ws"] = counter
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=100, help="schemathesis examples per operation")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("needs the redis-server binary")
    redis = RedisServer(binary)
    redis.start()
    os.environ["REDIS_URL"] = redis.url
    os.environ["LMLENS_JOB_REDIS_TIMEOUT"] = "1"
    try:
        app = create_app(tiny_config(max_batch_size=4, max_job_texts=20, redis_url=redis.url),
                         host=PluginHost(load=["attention", "http", "worker"]))
        with running(app, timeout=600) as server:
            print("hand-written corpus (status: count; WS: error code or complete: count)")
            total_5xx = 0
            for route, counter in corpus(server.url, server.port).items():
                fives = sum(n for s, n in counter.items() if isinstance(s, int) and s >= 500)
                total_5xx += fives
                print(f"  {route}: {sum(counter.values())} inputs, {dict(sorted(counter.items(), key=str))}, "
                      f"5xx: {fives}")
            print(f"  5xx in all: {total_5xx}")
            st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
            command = [st, "--config-file", str(HERE / "schemathesis.toml"), "run",
                       f"{server.url}/openapi.json", "--checks", "all",
                       "--max-examples", str(args.examples), "--phases", "examples,coverage,fuzzing",
                       "--suppress-health-check", "all", "--generation-deterministic", "--no-color"]
            print("\n$ " + " ".join(command[1:]), flush=True)
            subprocess.run(command, check=False)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
