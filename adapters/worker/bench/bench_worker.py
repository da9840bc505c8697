"""Batch throughput through 1 and 2 worker processes, in one run.

    python adapters/worker/bench/bench_worker.py [--texts 200] [--jobs 8] [--model smollm2-135m]

Starts its own redis-server, then for each process count: starts `lmlens worker`, warms
every process up (model load), submits the texts split into --jobs analyze_batch jobs,
and times until all are done. Prints texts per second and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from lmlens_redis.testing import RedisServer, free_port  # noqa: F401
from lmlens_worker.queue import RedisJobQueue
from lmlens_worker.settings import WorkerSettings

SENTENCES = [
    "The committee postponed the vote until the new figures arrived.",
    "A small dog chased the ball across the wet grass.",
    "Interpretability asks which parts of a network compute what.",
    "She bought three apples, two pears and a melon at the market.",
    "The bridge was closed for repairs after the storm.",
]


def run(processes: int, threads_per_process: str | None, args: argparse.Namespace, url: str) -> float:
    env = {**os.environ, "REDIS_URL": url}
    if threads_per_process:
        env["OMP_NUM_THREADS"] = threads_per_process
    worker = subprocess.Popen([sys.executable, "-m", "lmlens", "worker", "--processes", str(processes)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        queue = RedisJobQueue(WorkerSettings(redis_url=url))
        params = {"methods": ["attention"], "params": {"attention": {"patterns": False}}, "model": args.model}
        warm = [queue.submit("analyze_batch", {**params, "texts": ["warm up"]}) for _ in range(processes * 2)]
        for job in warm:
            queue.result(job, timeout=600)
        texts = [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(args.texts)]
        chunk = -(-len(texts) // args.jobs)
        start = time.perf_counter()
        jobs = [queue.submit("analyze_batch", {**params, "texts": texts[i:i + chunk]})
                for i in range(0, len(texts), chunk)]
        for job in jobs:
            queue.result(job, timeout=1800)
        return time.perf_counter() - start
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    import shutil

    server = RedisServer(shutil.which("redis-server"))
    server.start()
    try:
        rows = [("1 process (torch threads: default)", run(1, None, args, server.url)),
                ("2 processes (torch threads: default)", run(2, None, args, server.url)),
                ("2 processes x 1 torch thread", run(2, "1", args, server.url))]
    finally:
        server.stop()
    base = rows[0][1]
    print(f"{args.texts} texts in {args.jobs} analyze_batch jobs on {args.model} (attention summaries):")
    for name, seconds in rows:
        print(f"  {name:38} {seconds:6.1f} s  {args.texts / seconds:6.1f} texts/s  speed-up {base / seconds:.2f}x")


if __name__ == "__main__":
    main()
