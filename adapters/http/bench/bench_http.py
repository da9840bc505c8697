"""HTTP service benchmark, measured side by side in one run.

1. cold /analyze (a cache miss, model already loaded) against the same analysis in
   process: medians and the HTTP overhead ratio;
2. a cache hit over HTTP: p50 and p99 (target: p50 under 10 ms);
3. throughput of cached requests at 50 concurrent clients.

The server runs as ``lmlens serve`` in a subprocess (as deployed), once with the
in-process cache and once with a real redis-server. Client and server share this
machine's cores, so throughput is a floor.

    python adapters/http/bench/bench_http.py [--model smollm2-135m] [--cold 8] [--hits 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec

from lmlens import Analyzer
from lmlens.plugins import PluginHost
from lmlens_http.testing import free_port
from lmlens_redis.testing import RedisServer

METHODS = ["attention"]
TEXTS = [f"Sample sentence number {i}: the quick brown fox jumps over the lazy dog." for i in range(64)]


def start_server(model: str, env_extra: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    lmlens = shutil.which("lmlens", path=str(Path(sys.executable).parent)) or "lmlens"
    env = {**os.environ, "API_PORT": str(port), "LMLENS_DEFAULT_MODEL": model, "LMLENS_MODELS": model,
           "LMLENS_PRELOAD": model, "API_RATE_LIMIT": "0", "LMLENS_LOAD_PLUGINS": "attention,http",
           **env_extra}
    env.pop("REDIS_URL", None) if "REDIS_URL" not in env_extra else None
    with log.open("wb") as out:
        process = subprocess.Popen([lmlens, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


def ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def cold_pairs(url: str, model: str, texts: list[str]) -> tuple[list[float], list[float]]:
    """Each text once over HTTP and (a variant, so neither is a cache hit) once in process,
    interleaved, so that load from elsewhere on the machine hits both sides alike."""
    analyzer = Analyzer(model, plugins=PluginHost(load=["attention"]))
    analyzer.load_model()
    analyzer.analyze("warm up", methods=METHODS, use_cache=False)
    http, local = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post("/analyze", json={"text": "warm up", "methods": METHODS})
        for text in texts:
            started = time.perf_counter()
            response = client.post("/analyze", json={"text": text, "methods": METHODS})
            http.append(time.perf_counter() - started)
            assert response.status_code == 200 and response.json()["cached"] is False, response.text[:200]
            started = time.perf_counter()
            analyzer.analyze(text + " (in process)", methods=METHODS, use_cache=False)
            local.append(time.perf_counter() - started)
    return http, local


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx costs more CPU per request than the server's cache-hit path, and client and
    server share two cores here, so the load generator must be as light as possible.
    """

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readuntil(b"\r\n")
        headers = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def request_body() -> bytes:
    return msgspec.json.encode({"text": TEXTS[0], "methods": METHODS})


async def cache_hits(url: str, n: int) -> tuple[list[float], int]:
    client = RawClient(url)
    await client.connect()
    body = request_body()
    await client.post("/analyze", body)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        status, payload = await client.post("/analyze", body)
        times.append(time.perf_counter() - started)
        assert status == 200
    assert msgspec.json.decode(payload)["cached"] is True
    client.close()
    return times, len(payload)


async def throughput(url: str, clients: int, per_client: int) -> tuple[float, int]:
    body = request_body()
    connections = [RawClient(url) for _ in range(clients)]
    for connection in connections:
        await connection.connect()
    await connections[0].post("/analyze", body)
    errors = 0

    async def one_client(connection: RawClient) -> None:
        nonlocal errors
        for _ in range(per_client):
            status, _ = await connection.post("/analyze", body)
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return clients * per_client / elapsed, errors


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cold", type=int, default=8, help="distinct texts for the cold comparison")
    parser.add_argument("--hits", type=int, default=400)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--backends", default="memory,redis,redis-nomemo")
    args = parser.parse_args()
    os.environ.setdefault("LMLENS_CACHE_DIR", "/tmp/lmcache")
    work = Path(tempfile.mkdtemp(prefix="lmlens-bench-"))
    print(f"model {args.model}, methods {METHODS}, {os.cpu_count()} CPUs")

    redis = RedisServer(shutil.which("redis-server"))
    redis.start()
    try:
        backends = (
            ("memory", {}),
            ("redis", {"REDIS_URL": redis.url}),
            # every hit read from Redis, decoded and encoded again: the memo's worth
            ("redis-nomemo", {"REDIS_URL": redis.url, "API_RESPONSE_MEMO_MB": "0"}),
        )
        for backend, extra in backends:
            if backend not in args.backends.split(","):
                continue
            process, url = start_server(args.model, extra, work / f"{backend}.log")
            try:
                if backend == "memory":
                    texts = TEXTS[1 : 1 + args.cold]
                    http_s, local_s = cold_pairs(url, args.model, texts)
                    http, local = ms(http_s), ms(local_s)
                    ratio = statistics.median(http) / statistics.median(local)
                    print(f"cold /analyze          median {statistics.median(http):8.1f} ms  "
                          f"(min {min(http):.1f}, max {max(http):.1f})")
                    print(f"same, in process       median {statistics.median(local):8.1f} ms  "
                          f"(min {min(local):.1f}, max {max(local):.1f})")
                    extra = statistics.median(http) - statistics.median(local)
                    print(f"HTTP overhead ratio    {ratio:8.2f}x  ({extra:+.1f} ms)")
                seconds, size = asyncio.run(cache_hits(url, args.hits))
                hits = ms(seconds)
                p50, p99 = percentile(hits, 50), percentile(hits, 99)
                print(f"[{backend:12}] cache hit  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                      f"(n={len(hits)}, {size / 1e3:.0f} kB JSON each, target p50 < 10 ms)")
                rate, errors = asyncio.run(throughput(url, args.clients, args.per_client))
                print(f"[{backend:12}] cached throughput at {args.clients} clients: {rate:7.0f} req/s "
                      f"({args.clients * args.per_client} requests, {errors} errors)")
            finally:
                stop(process)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
