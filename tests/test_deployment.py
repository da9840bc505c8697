"""compose.yaml and the Dockerfile name things that exist (Docker itself cannot run here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lmlens.cli import cli
from lmlens.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> set[str]:
    scripts: set[str] = set()
    for manifest in ROOT.glob("**/pyproject.toml"):
        if ".venv" in manifest.parts or ".tox" in manifest.parts:
            continue
        scripts |= set(tomllib.loads(manifest.read_text()).get("project", {}).get("scripts", {}))
    return scripts


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_has_the_services(compose: dict) -> None:
    assert {"redis", "api", "worker"} <= set(compose["services"])
    for name in ("api", "worker"):
        assert compose["services"][name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"


@pytest.mark.parametrize("service", ["api", "worker"])
def test_each_command_is_a_real_entry_point(compose: dict, service: str) -> None:
    command = compose["services"][service]["command"]
    assert command[0] in console_scripts()
    host = PluginHost()
    host.pm.hook.register_commands(cli=cli)
    result = CliRunner().invoke(cli, [*command[1:2], "--help"], obj={"host": host})
    assert result.exit_code == 0, result.output
    options = [word for word in command[2:] if word.startswith("--")]
    for option in options:
        assert option in result.output, f"{service}: {command[1]} has no option {option}"


def test_dockerfile_copies_paths_that_exist() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", text, flags=re.M):
        assert (ROOT / source).exists(), source
    assert "torch==2.13.0" in text
