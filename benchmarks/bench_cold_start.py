"""Service cold start: process start to the first 200 on /analyze, the converted model cached.

Each repeat runs two fresh processes, one after the other:

- the service: ``lmlens serve`` on a free port; a short /analyze (attention, smollm2-135m) is
  posted every 50 ms until one answers 200. The figure is the time from spawning the process,
  what a user sees, and the CPU seconds the server used up to that answer;
- the breakdown: the same steps in one plain process, each timed (wall and CPU): import
  (``lmlens`` and its plugins, the HTTP app built), load (the default model, from the cache),
  first analysis (the request the service answers). The service overlaps some of them (the
  default model loads in the background while the server starts), so its figure can be
  below their sum.

The machine may be shared: the load average is printed beside every figure, and CPU seconds
(steadier than wall time under load) beside wall seconds.
Goal (issue 13): under 5 s with the converted SmolLM2 in LMLENS_CACHE_DIR.

    LMLENS_CACHE_DIR=/tmp/lmcache python benchmarks/bench_cold_start.py [--repeats 3] [--before]
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
from collections.abc import Mapping

GOAL_S = 5.0
TEXT = "The cat sat on the mat."

# The breakdown: what `lmlens serve` does before its first answer, step by step, in one process.
BREAKDOWN = r"""
import json, sys, time
marks = []
def mark(name):
    marks.append((name, time.perf_counter(), time.process_time()))
mark("start")
from lmlens.cli import cli
from lmlens.plugins import PluginHost
host = PluginHost()
host.pm.hook.register_commands(cli=cli)
from lmlens_http.app import create_app
from lmlens_http.config import load_config
import uvicorn  # noqa: F401  (the server imports it before it listens)
app = create_app(load_config(), host=host)  # no lifespan here: nothing loads in the background
service = app.state.service
mark("import")
service.load(sys.argv[1])
mark("load")
prep = service.prepare(sys.argv[2], sys.argv[1], ["attention"], {})
service.compute(prep, lambda stage, method: None)
mark("first analysis")
print(json.dumps({name: [t - marks[i][1], c - marks[i][2]]
                  for i, (name, t, c) in enumerate(marks[1:])}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cold_start(model: str, env: Mapping[str, str] | None = None, timeout: float = 300.0) -> tuple[float, float]:
    """(seconds from spawning ``lmlens serve`` to the first 200 on /analyze, its CPU seconds by then)."""
    port = free_port()
    lmlens = shutil.which("lmlens", path=os.path.dirname(sys.executable)) or "lmlens"
    body = json.dumps({"text": TEXT, "methods": ["attention"], "model": model}).encode()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [lmlens, "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        while time.perf_counter() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"lmlens serve exited with {proc.returncode}")
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/analyze", data=body, headers={"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    if response.status == 200:
                        return time.perf_counter() - started, cpu_seconds(proc.pid)
            except urllib.error.HTTPError as exc:
                raise RuntimeError(f"/analyze answered {exc.code}: {exc.read()[:300]!r}") from None
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        raise TimeoutError("no 200 from /analyze")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def breakdown(model: str, env: Mapping[str, str] | None = None) -> dict[str, tuple[float, float]]:
    """{step: (wall s, CPU s)} for import, load and first analysis, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", BREAKDOWN, model, TEXT], capture_output=True, text=True, check=True,
        env={**os.environ, **(env or {})},
    ).stdout
    return {k: (v[0], v[1]) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} CPUs"


# ``--before``: the service as it was before issue 13's cold-start changes, in the same run:
# libgomp's own wait policy (threads spin; an empty value is ignored by libgomp and kept by
# lmlens, which otherwise sets PASSIVE) and no background load of the default model.
BEFORE = {"OMP_WAIT_POLICY": "", "LMLENS_WARM_DEFAULT": "false"}


def summary(steps: dict[str, list[tuple[float, float]]]) -> str:
    return ", ".join(
        f"{name} {statistics.median(w for w, _ in values):.2f} s ({statistics.median(c for _, c in values):.2f} CPU)"
        for name, values in steps.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--before", action="store_true",
                        help="also run the service as before the cold-start changes, alternating")
    args = parser.parse_args()
    variants = {"now": {}, "before": BEFORE} if args.before else {"now": {}}
    totals: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    steps: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in variants}
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            env = variants[name]
            total, cpu = cold_start(args.model, env)
            totals[name].append(total)
            cpus[name].append(cpu)
            parts = breakdown(args.model, env)
            for step, value in parts.items():
                steps[name].setdefault(step, []).append(value)
            detail = ", ".join(f"{step} {wall:.2f} s ({cpu_s:.2f} CPU)" for step, (wall, cpu_s) in parts.items())
            print(f"run {r + 1} {name}: first 200 on /analyze after {total:.2f} s ({cpu:.2f} CPU s in the server); "
                  f"breakdown: {detail}; {load_average()}", flush=True)
    for name in variants:
        median = statistics.median(totals[name])
        print(f"breakdown {name} (separate process, medians): {summary(steps[name])}")
        print(f"ROW cold start {name} (process start -> first 200 on /analyze, {args.model} cached): median "
              f"{median:.2f} s ({statistics.median(cpus[name]):.2f} CPU s) over {args.repeats}; goal < {GOAL_S:.0f} s: "
              f"{'met' if median < GOAL_S else 'not met'}; {load_average()}")
    if args.before:
        ratio = statistics.median(totals["before"]) / statistics.median(totals["now"])
        print(f"ROW cold start before/now: {ratio:.2f}x (medians, alternating runs); {load_average()}")


if __name__ == "__main__":
    main()
