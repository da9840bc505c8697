"""Response sizes and behaviour under overload, on a real model, measured in one run.

1. Response size of ``POST /analyze`` with ``attention`` at 128 and 512 tokens:
   the HTTP default (summaries), with gzip, as MessagePack; full patterns at 128 tokens
   and one layer/head at 512 (full maps at 512 tokens are ~950 MB of JSON).
2. 50 concurrent clients, each sending one distinct (uncached) analysis: how many were
   admitted, refused (503 overloaded) or timed out (504); p50/p95 latency of the admitted;
   the Retry-After the refused got against the wait an admitted request measured, and
   whether a retry after Retry-After was admitted.

    python adapters/http/bench/bench_hardening.py [--model smollm2-135m] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import time

import httpx

from lmlens.plugins import PluginHost
from lmlens_http import ServiceConfig, create_app
from lmlens_http.testing import running


def text_of(tokens: int, analyzer) -> str:
    words = ("the quick brown fox jumps over the lazy dog while a careful reader counts every word " * 200).split()
    loaded = analyzer.load_model()
    lo, hi = 1, len(words)
    while lo < hi:  # the longest prefix of words with at most `tokens` tokens (special tokens included)
        mid = (lo + hi + 1) // 2
        n = len(loaded.tokenizer(" ".join(words[:mid]))["input_ids"])
        lo, hi = (mid, hi) if n <= tokens else (lo, mid - 1)
    return " ".join(words[:lo])


def sizes(url: str, analyzer) -> list[tuple[str, int, int, int, int]]:
    rows = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for tokens in (128, 512):
            text = text_of(tokens, analyzer)
            cases = [("summaries (default)", {})]
            if tokens == 128:
                cases.append(("full patterns", {"patterns": True}))
            cases.append(("patterns, layer 0, head 0", {"patterns": True, "layers": [0], "heads": [0]}))
            for name, params in cases:
                body = {"text": text, "methods": ["attention"], "params": {"attention": params}}
                plain = client.post("/analyze", json=body, headers={"Accept-Encoding": "identity"})
                plain.raise_for_status()
                n_tokens = len(plain.json()["tokens"])
                zipped = len(gzip.compress(plain.content, compresslevel=9)) if len(plain.content) < 2**28 else -1
                served = client.post("/analyze", json=body, headers={"Accept-Encoding": "gzip"})
                on_wire = int(served.headers.get("content-length") or len(served.content))
                packed = client.post("/analyze", json=body, headers={"Accept": "application/msgpack",
                                                                     "Accept-Encoding": "identity"})
                rows.append((f"{n_tokens} tokens, {name}", len(plain.content), on_wire, len(packed.content), zipped))
    return rows


async def overload(url: str, clients: int, analyzer, warmup: int = 4) -> dict[str, object]:
    base = text_of(48, analyzer)
    results: list[tuple[int, float, int | None, float | None]] = []

    async def one(i: int, client: httpx.AsyncClient) -> None:
        body = {"text": f"{i}: {base}", "methods": ["attention"]}
        started = time.perf_counter()
        answer = await client.post("/analyze", json=body)
        elapsed = time.perf_counter() - started
        retry_after = int(answer.headers["retry-after"]) if answer.status_code == 503 else None
        retried_ok = None
        if retry_after is not None:
            await asyncio.sleep(retry_after)
            again = time.perf_counter()
            second = await client.post("/analyze", json=body)
            retried_ok = time.perf_counter() - again if second.status_code == 200 else -second.status_code
        results.append((answer.status_code, elapsed, retry_after, retried_ok))

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for i in range(warmup):  # the recent service time Retry-After is derived from
            (await client.post("/analyze", json={"text": f"warm-up {i}: {base}", "methods": ["attention"]})
             ).raise_for_status()
        await asyncio.gather(*(one(i, client) for i in range(clients)))
    admitted = sorted(e for s, e, _, _ in results if s == 200)
    refused = [(r, ok) for s, _, r, ok in results if s == 503]
    q = statistics.quantiles(admitted, n=20) if len(admitted) >= 2 else [float("nan")] * 19
    return {
        "clients": clients,
        "warmup": warmup,
        "admitted": len(admitted),
        "503": len(refused),
        "504": sum(1 for s, *_ in results if s == 504),
        "other": sorted({s for s, *_ in results if s not in (200, 503, 504)}),
        "p50_s": round(statistics.median(admitted), 2) if admitted else None,
        "p95_s": round(q[18], 2),
        "max_s": round(admitted[-1], 2) if admitted else None,
        "retry_after_s": sorted({r for r, _ in refused}),
        "retries_admitted": sum(1 for _, ok in refused if ok is not None and ok >= 0),
        "retry_latency_p50_s": round(statistics.median([ok for _, ok in refused if ok and ok >= 0]), 2)
        if any(ok and ok >= 0 for _, ok in refused) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--skip-sizes", action="store_true")
    parser.add_argument("--warmup", type=int, default=4, help="analyses before the burst (0: a cold pool)")
    args = parser.parse_args()
    config = ServiceConfig(models=[args.model], default_model=args.model, preload=[args.model], rate_limit=0,
                           max_body_bytes=2**20, request_timeout_s=120, response_memo_mb=0)
    app = create_app(config, host=PluginHost(load=["attention", "http"]))
    with running(app, timeout=600) as server:
        analyzer = server.service.analyzer
        if not args.skip_sizes:
            print("| response | JSON | JSON on the wire (Accept-Encoding: gzip) | MessagePack | JSON, gzip -9 |")
            print("|---|---|---|---|---|")
            for name, plain, wire_size, packed, zipped in sizes(server.url, analyzer):
                print(f"| {name} | {plain / 1e6:.3f} MB | {wire_size / 1e6:.3f} MB | {packed / 1e6:.3f} MB | "
                      f"{zipped / 1e6:.3f} MB |")
        stats = server.service.pool.stats()
        print(f"\npool: {stats.workers} workers, queue {stats.queue_size}")
        print(asyncio.run(overload(server.url, args.clients, analyzer, args.warmup)))


if __name__ == "__main__":
    main()
