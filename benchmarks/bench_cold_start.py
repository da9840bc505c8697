"""Service cold start: process start to the first 200 on /analyze, the converted model cached.

Starts ``lmlens serve`` on a free port, posts a short /analyze (attention, smollm2-135m) every
50 ms until one answers 200, and reports the time from spawning the process. The first
request loads the model (unless the config preloads it), so the figure includes the load.
Goal (issue 13): under 5 s with the converted SmolLM2 in LMLENS_CACHE_DIR.

    LMLENS_CACHE_DIR=/tmp/lmcache python benchmarks/bench_cold_start.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cold_start(model: str, timeout: float = 300.0) -> tuple[float, float]:
    """(seconds to the first 200 on /analyze, seconds to the first answer of any kind)."""
    port = free_port()
    lmlens = shutil.which("lmlens", path=os.path.dirname(sys.executable)) or "lmlens"
    body = json.dumps({"text": "The cat sat on the mat.", "methods": ["attention"], "model": model}).encode()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [lmlens, "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first_answer = None
    try:
        while time.perf_counter() - started < timeout:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/analyze", data=body, headers={"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    if response.status == 200:
                        return time.perf_counter() - started, first_answer or time.perf_counter() - started
            except urllib.error.HTTPError:
                first_answer = first_answer or time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise TimeoutError("no 200 from /analyze")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    times = []
    for r in range(args.repeats):
        total, _ = cold_start(args.model)
        times.append(total)
        print(f"run {r + 1}: first 200 on /analyze after {total:.2f} s", flush=True)
    one, five, _ = os.getloadavg()
    print(f"ROW cold start (process start -> first 200 on /analyze, {args.model} cached): median "
          f"{statistics.median(times):.2f} s (goal < 5 s); load average {one:.1f} / {five:.1f} on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
