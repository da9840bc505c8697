from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lmlens_redis.testing import RedisServer, redis_server  # noqa: F401

EXPLODE_PLUGIN = """
import msgspec
from lmlens import hookimpl
from lmlens.jobs import Job

class ExplodeParams(msgspec.Struct, frozen=True):
    message: str = "boom"

def explode(params, context):
    raise RuntimeError(params.message)

class NapParams(msgspec.Struct, frozen=True):
    seconds: float = 60.0

def nap(params, context):
    import time
    context.progress(0.0, "napping")
    end = time.monotonic() + params.seconds
    while time.monotonic() < end:  # short sleeps: Dramatiq's time limit interrupts between them
        time.sleep(0.05)
    return {"slept": params.seconds}

@hookimpl
def register_jobs(register):
    register(Job(kind="explode", description="always fails (tests)", params=ExplodeParams, run=explode))
    register(Job(kind="nap", description="sleeps (tests)", params=NapParams, run=nap))
"""


@pytest.fixture
def test_plugins(tmp_path: Path) -> Path:
    """A site folder with an outside plugin that offers the job ``explode``."""
    site = tmp_path / "site"
    info = site / "lmlens_test_jobs-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lmlens-test-jobs\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lmlens]\ntest-jobs = lmlens_test_jobs\n")
    (site / "lmlens_test_jobs.py").write_text(textwrap.dedent(EXPLODE_PLUGIN))
    return site


def worker_env(redis_url: str, site: Path | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "LMLENS_WORKER_HEARTBEAT_MS": "5000",
        "LMLENS_WORKER_MAINTENANCE_CHANCE": "1000000",  # look for dead workers on every broker call
        "LMLENS_JOB_MAX_RETRIES": "2",
        "LMLENS_JOB_MIN_BACKOFF_MS": "200",
        "LMLENS_JOB_MAX_BACKOFF_MS": "1000",
        "dramatiq_restart_delay": "500",
    }
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


class WorkerProcess:
    """``lmlens worker`` (Dramatiq master + worker processes) in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lmlens", "worker", "--processes", "1", "--threads", "1"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / "worker.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
