"""Throughput of ``analyze_batch`` (issue 13, "Scale"): texts/s for short texts on SmolLM2,
unbatched and in padded batches, through 1 and 2 worker processes, side by side in one run.

    LMLENS_CACHE_DIR=... python benchmarks/bench_throughput.py [--texts 200] [--jobs 4]
        [--batch-sizes 8,16,32] [--workers 1,2[,1x1]] [--threads N] [--rounds 1] [--no-in-process]

Two method sets: ``default`` (what ``analyze(text)`` runs: attention with its full
patterns) and ``summaries`` (attention with ``patterns: false``, what a batch job should
ask for). Every configuration analyses the same texts.

- **workers**: starts its own redis-server and, for each process count, one ``lmlens
  worker --processes N`` (which gives each process cores / N torch threads), warms every
  process up (model load, first pass), then submits the texts as ``--jobs``
  ``analyze_batch`` jobs per configuration (``batch_size`` 1 = unbatched, one pass per
  text) and times until all are done. Configurations alternate round by round (the order
  is reversed every other round); the median of the rounds is reported.
- **in process**: one ``Analyzer`` in this process, ``analyze_batch`` with each batch size,
  alternating, with process CPU time beside wall time (steadier on a shared machine).

The load average (1 min) is printed beside every number: on a busy machine the wall
clock of every row drops, and only ratios measured in the same run mean something.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SENTENCES = [
    "The committee postponed the vote until the new figures arrived.",
    "A small dog chased the ball across the wet grass.",
    "Interpretability asks which parts of a network compute what.",
    "She bought three apples, two pears and a melon at the market.",
    "The bridge was closed for repairs after the storm.",
    "Rain again today.",
    "He said nothing, and the silence in the room grew heavier with every passing minute.",
]
METHOD_SETS: dict[str, dict[str, object]] = {
    "default": {"methods": []},  # the installed default methods: attention with full patterns
    "summaries": {"methods": ["attention"], "params": {"attention": {"patterns": False}}},
}


def texts(n: int) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(n)]


def load() -> float:
    return os.getloadavg()[0]


def alternate(configs: list[str], rounds: int, measure: Callable[[str], tuple[float, ...]]) -> dict[str, list]:
    """``measure(config)`` for every config, ``rounds`` times, the order reversed every other round."""
    found: dict[str, list] = {c: [] for c in configs}
    for r in range(rounds):
        for config in configs if r % 2 == 0 else configs[::-1]:
            found[config].append((*measure(config), load()))
    return found


def run_jobs(queue: Any, base: dict[str, Any], items: list[str], chunk: int, config: str) -> tuple[float]:
    """Seconds from submitting the texts as analyze_batch jobs until every one is done."""
    name, size = config.split("@")
    start = time.perf_counter()
    jobs = [queue.submit("analyze_batch", {**base, **METHOD_SETS[name], "batch_size": int(size),
                                           "texts": items[i:i + chunk]})
            for i in range(0, len(items), chunk)]
    for job in jobs:
        queue.result(job, timeout=1800)
    return (time.perf_counter() - start,)


def worker_rows(args: argparse.Namespace, sizes: list[int]) -> list[tuple[str, str, int, float, float]]:
    from lmlens_redis.testing import RedisServer
    from lmlens_worker.queue import RedisJobQueue
    from lmlens_worker.settings import WorkerSettings

    items = texts(args.texts)
    chunk = -(-len(items) // args.jobs)
    rows = []
    server = RedisServer(shutil.which("redis-server"))
    server.start()
    try:
        for spec in args.workers:
            processes, _, threads = spec.partition("x")
            env = {**os.environ, "REDIS_URL": server.url}
            env.pop("OMP_NUM_THREADS", None)  # lmlens worker splits the cores between its processes
            if threads:
                env["OMP_NUM_THREADS"] = threads
            worker = subprocess.Popen(
                [sys.executable, "-m", "lmlens", "worker", "--processes", str(processes)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                queue = RedisJobQueue(WorkerSettings(redis_url=server.url))
                warm = [queue.submit("analyze_batch", {"model": args.model, **METHOD_SETS[name],
                                                       "texts": ["warm up", "a b c"], "batch_size": 2})
                        for _ in range(int(processes) * 2) for name in METHOD_SETS]
                for job in warm:
                    queue.result(job, timeout=900)

                measure = functools.partial(run_jobs, queue, {"model": args.model}, items, chunk)
                configs = [f"{name}@{size}" for name in METHOD_SETS for size in [1, *sizes]]
                for config, runs in alternate(configs, args.rounds, measure).items():
                    name, size = config.split("@")
                    wall = statistics.median(r[0] for r in runs)
                    rows.append((name, spec, int(size), len(items) / wall, statistics.median(r[1] for r in runs)))
            finally:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(timeout=60)
    finally:
        server.stop()
    return rows


def in_process_rows(args: argparse.Namespace, sizes: list[int]) -> list[tuple[str, int, float, float, float]]:
    from lmlens import Analyzer

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    analyzer = Analyzer(args.model)
    items = texts(args.texts)
    for spec in METHOD_SETS.values():  # warm up: model load, first passes of every shape
        analyzer.analyze_batch(items[:4], spec["methods"] or None, spec.get("params"), batch_size=2,  # type: ignore[arg-type]
                               use_cache=False)

    def measure(config: str) -> tuple[float, float]:
        name, size = config.split("@")
        spec = METHOD_SETS[name]
        wall, cpu = time.perf_counter(), time.process_time()
        analyzer.analyze_batch(items, spec["methods"] or None, spec.get("params"),  # type: ignore[arg-type]
                               batch_size=int(size), use_cache=False)
        return time.perf_counter() - wall, time.process_time() - cpu

    configs = [f"{name}@{size}" for name in METHOD_SETS for size in [1, *sizes]]
    rows = []
    for config, runs in alternate(configs, args.rounds, measure).items():
        name, size = config.split("@")
        rows.append((name, int(size), len(items) / statistics.median(r[0] for r in runs),
                     len(items) / statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=4, help="analyze_batch jobs the texts are split into")
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--workers", default="1,2",
                        help="worker process counts; PxT pins T torch threads per process (default: cores / P)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the in-process rows (0: default)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--no-workers", action="store_true", help="skip the worker rows")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process rows")
    args = parser.parse_args()
    args.workers = args.workers.split(",")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    started = time.perf_counter()
    print(f"analyze_batch throughput: {args.texts} short texts on {args.model}, {os.cpu_count()} cores, "
          f"load average {load():.2f} at start; median of {args.rounds} round(s)")
    if not args.no_workers:
        rows = worker_rows(args, sizes)
        print(f"\nthrough lmlens worker ({args.jobs} jobs per run); batch 1 = unbatched, one pass per text")
        print(f"  {'methods':10} {'workers':>7} {'batch':>5} {'texts/s':>8} {'vs first, unbatched':>22} {'load':>6}")
        for name, processes, size, rate, load_avg in rows:
            base = next(r[3] for r in rows if r[0] == name and r[1] == args.workers[0] and r[2] == 1)
            print(f"  {name:10} {processes:>7} {size:>5} {rate:>8.2f} {rate / base:>21.2f}x {load_avg:>6.2f}")
    if not args.no_in_process:
        rows_in = in_process_rows(args, sizes)
        print(f"\nin this process (one Analyzer, {args.threads or 'default'} torch threads)")
        print(f"  {'methods':10} {'batch':>5} {'texts/s':>8} {'texts/cpu-s':>11} "
              f"{'vs unbatched (wall, cpu)':>25} {'load':>6}")
        for name, size, rate, cpu_rate, load_avg in rows_in:
            base = next(r for r in rows_in if r[0] == name and r[1] == 1)
            print(f"  {name:10} {size:>5} {rate:>8.2f} {cpu_rate:>11.2f} "
                  f"{rate / base[2]:>11.2f}x {cpu_rate / base[3]:>11.2f}x {load_avg:>6.2f}")
    print(f"\n(ran {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
