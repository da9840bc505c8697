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


def cold_http(url: str, texts: list[str]) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for text in texts:
            started = time.perf_counter()
            response = client.post("/analyze", json={"text": text, "methods": METHODS})
            times.append(time.perf_counter() - started)
            assert response.status_code == 200 and response.json()["cached"] is False, response.text[:200]
    return times


def cold_in_process(model: str, texts: list[str]) -> list[float]:
    analyzer = Analyzer(model, plugins=PluginHost(load=["attention"]))
    analyzer.load_model()
    analyzer.analyze("warm up", methods=METHODS, use_cache=False)
    times = []
    for text in texts:
        started = time.perf_counter()
        analyzer.analyze(text, methods=METHODS, use_cache=False)
        times.append(time.perf_counter() - started)
    return times


def cache_hits(url: str, n: int) -> list[float]:
    body = {"text": TEXTS[0], "methods": METHODS}
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        client.post("/analyze", json=body)
        for _ in range(n):
            started = time.perf_counter()
            response = client.post("/analyze", json=body)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200
    assert response.json()["cached"] is True
    return times


async def throughput(url: str, clients: int, per_client: int) -> tuple[float, int]:
    body = {"text": TEXTS[0], "methods": METHODS}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await client.post("/analyze", json=body)
        errors = 0

        async def one_client() -> None:
            nonlocal errors
            for _ in range(per_client):
                response = await client.post("/analyze", json=body)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return clients * per_client / elapsed, errors


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cold", type=int, default=8, help="distinct texts for the cold comparison")
    parser.add_argument("--hits", type=int, default=400)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--backends", default="memory,redis")
    args = parser.parse_args()
    os.environ.setdefault("LMLENS_CACHE_DIR", "/tmp/lmcache")
    work = Path(tempfile.mkdtemp(prefix="lmlens-bench-"))
    print(f"model {args.model}, methods {METHODS}, {os.cpu_count()} CPUs")

    redis = RedisServer(shutil.which("redis-server"))
    redis.start()
    try:
        for backend, extra in (("memory", {}), ("redis", {"REDIS_URL": redis.url})):
            if backend not in args.backends.split(","):
                continue
            process, url = start_server(args.model, extra, work / f"{backend}.log")
            try:
                if backend == "memory":
                    texts = TEXTS[1 : 1 + args.cold]
                    http = ms(cold_http(url, texts))
                    local = ms(cold_in_process(args.model, [t + " (in process)" for t in texts]))
                    ratio = statistics.median(http) / statistics.median(local)
                    print(f"cold /analyze          median {statistics.median(http):8.1f} ms  "
                          f"(min {min(http):.1f}, max {max(http):.1f})")
                    print(f"same, in process       median {statistics.median(local):8.1f} ms  "
                          f"(min {min(local):.1f}, max {max(local):.1f})")
                    print(f"HTTP overhead ratio    {ratio:8.2f}x  (+{statistics.median(http) - statistics.median(local):.1f} ms)")
                hits = ms(cache_hits(url, args.hits))
                print(f"[{backend:6}] cache hit  p50 {percentile(hits, 50):6.2f} ms  p99 {percentile(hits, 99):6.2f} ms  "
                      f"(n={len(hits)}, target p50 < 10 ms)")
                rate, errors = asyncio.run(throughput(url, args.clients, args.per_client))
                print(f"[{backend:6}] cached throughput at {args.clients} clients: {rate:7.0f} req/s "
                      f"({args.clients * args.per_client} requests, {errors} errors)")
            finally:
                stop(process)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
