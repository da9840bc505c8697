"""The README, read top to bottom, works as written.

Every ```python block is executed and every ``lmlens`` command in a ```bash block is run
(option names checked by click, and the commands that need no service run for real), on
the tiny models: ``LMLENS_DEFAULT_MODEL=tiny-gpt2`` and ``minilm-l6`` -> ``tiny-bert``, so
the test needs no download and no real model. ``curl`` runs against a real server. What
needs Redis, a worker or Docker (``lmlens serve``, ``worker``, ``jobs``, ``docker compose``)
is checked to exist and to parse here, and runs in adapters/http and adapters/worker's
end-to-end tests. Paths and make targets the README names must exist.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lmlens.cli import cli
from lmlens.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SUBSTITUTE = {"minilm-l6": "tiny-bert", "smollm2-135m": "tiny-llama"}
# lmlens subcommands that need a running service, Redis or workers: parsed here, run elsewhere
SERVICES = {"serve", "worker", "jobs", "dashboard"}  # long-running: their own tests start them


def commands() -> list[list[str]]:
    """Each shell command of the README's bash blocks, as argv (continuations joined)."""
    found = []
    for lang, code in BLOCKS:
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                found.append(argv)
    return found


def adapt(argv: list[str]) -> list[str]:
    return [SUBSTITUTE.get(a, a) for a in argv]


@pytest.fixture(scope="module")
def host() -> PluginHost:
    host = PluginHost()
    host.pm.hook.register_commands(cli=cli)  # what `lmlens` (lmlens.cli.main) does
    return host


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMLENS_DEFAULT_MODEL", "tiny-gpt2")
    (tmp_path / "book.txt").write_text("A book, one sentence after another. " * 30)
    return tmp_path


def test_the_readme_has_examples_of_every_way_in() -> None:
    argvs = commands()
    lmlens = {a[1] for a in argvs if a[0] == "lmlens" and len(a) > 1}
    assert {"analyze", "analyze-document", "estimate", "plugins", "models", "serve", "worker", "jobs"} <= lmlens
    assert any(a[0] == "curl" for a in argvs) and len(PYTHON) >= 3
    assert "docker compose up" in README and "WS /ws" in README


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_blocks_run(index: int, workdir: Path) -> None:
    code = PYTHON[index]
    for real, tiny in SUBSTITUTE.items():
        code = code.replace(f'"{real}"', f'"{tiny}"')
    namespace: dict[str, Any] = {}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "result" in namespace and "focused" in namespace:
        result = namespace["result"]
        assert result["attention"]["entropy"] is result.methods["attention"].entropy
        assert not result["importance"].unreliable and result["importance"].method_reason
        assert namespace["focused"]["attention"].heads == [3]
    if "doc" in namespace:
        assert namespace["doc"].notes and namespace["found"]["memory_estimate_gb"]["total_gb"] > 0
    for name in ("attention.html", "importance.png"):
        if name in code:
            assert (workdir / name).stat().st_size > 1000


@pytest.mark.parametrize("argv", [a for a in commands() if a[0] == "lmlens"], ids=lambda a: " ".join(a[:3]))
def test_lmlens_commands(argv: list[str], host: PluginHost, workdir: Path) -> None:
    args = adapt(argv[1:])
    runner = CliRunner()
    checked = runner.invoke(cli, [*args, "--help"], obj={"host": host})
    assert checked.exit_code == 0, f"{' '.join(argv)}: {checked.output}"  # the command and its options exist
    if args[0] in SERVICES:
        return
    ran = runner.invoke(cli, args, obj={"host": host})
    assert ran.exit_code == 0, f"{' '.join(argv)}: {ran.output}"
    for flag in ("-o", "--save"):
        if flag in args:
            assert (workdir / args[args.index(flag) + 1]).stat().st_size > 0
    if "--json" in args and "-o" not in args:
        json.loads(ran.stdout)


def test_curl_example_against_a_real_server(workdir: Path) -> None:
    from lmlens_http import create_app
    from lmlens_http.testing import running, tiny_config

    (curl,) = [a for a in commands() if a[0] == "curl"]
    with running(create_app(tiny_config())) as server:
        argv = [a.replace("localhost:8000", f"127.0.0.1:{server.port}") for a in curl]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    body = json.loads(out)
    assert body["methods"]["attention"]["kind"] == "attention" and body["model"]["name"] == "tiny-gpt2"


def test_other_commands_and_paths_exist() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    for argv in commands():
        if argv[0] == "make":
            assert argv[1] in targets, argv
        elif argv[0] == "tox":
            assert f"[testenv:{argv[2]}]" in (ROOT / "tox.ini").read_text(), argv
        else:
            assert argv[0] in {"lmlens", "curl", "export"}, f"unchecked command in the README: {argv}"
    for path in re.findall(r"`((?:adapters|plugins|examples|docs|tests|benchmarks)/[\w./-]+)`", README):
        assert (ROOT / path).exists(), path
    compose = (ROOT / "compose.yaml").read_text()
    assert all(f"\n  {service}:" in compose for service in ("redis", "api", "worker"))
