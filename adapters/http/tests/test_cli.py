"""``lmlens serve`` as a user runs it: a subprocess, settings from the environment and a file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lmlens_http.testing import free_port

LMLENS = shutil.which("lmlens", path=str(Path(sys.executable).parent)) or "lmlens"


def test_serve_is_a_subcommand() -> None:
    out = subprocess.run([LMLENS, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--host", "--port", "--workers", "--config"):
        assert flag in out


def test_serve_runs_the_service(tmp_path) -> None:
    port = free_port()
    (tmp_path / "config.yaml").write_text(f"port: {port}\nrate_limit: 0\nmodels: [tiny-bert]\n")
    env = {**os.environ, "LMLENS_DEFAULT_MODEL": "tiny-gpt2", "LMLENS_MODELS": "tiny-gpt2",
           "LMLENS_LOAD_PLUGINS": "attention,http", "LMLENS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("REDIS_URL", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([LMLENS, "serve", "--config", str(tmp_path / "config.yaml")],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert health["default_model"] == "tiny-gpt2"
        models = httpx.get(url + "/models").json()
        assert [m["name"] for m in models] == ["tiny-gpt2"]  # the environment beat the file
        response = httpx.post(url + "/analyze", json={"text": "from the command line"}, timeout=60)
        assert response.status_code == 200 and response.json()["model"]["name"] == "tiny-gpt2"
    finally:
        process.terminate()
        process.wait(timeout=15)
