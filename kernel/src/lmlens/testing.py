"""Fixtures for testing lmlens and its plugins, registered as a pytest plugin.

Any package that depends on lmlens gets them in its tests:

- ``tiny_models``: a session-wide ``{family: LoadedModel}`` for gpt2, llama and bert
- ``tiny_analyzer(family)``: an ``Analyzer`` over one tiny model, no files, no network
- ``lmlens_cache_dir``: a temporary ``LMLENS_CACHE_DIR`` for the session

and ``transformers_eager(loaded, ids)``, the model's output with transformers' own eager
attention (not the kernel's ``lmlens_eager``): an independent reference for maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lmlens.analyzer import Analyzer
from lmlens.models import LoadedModel, LoadOptions, load
from lmlens.plugins import PluginHost
from lmlens.settings import Settings
from lmlens.tiny import FAMILIES


def transformers_eager(loaded: LoadedModel, ids: torch.Tensor) -> Any:
    """``model(ids, output_attentions=True)`` with transformers' own eager attention, under the lock."""
    model: Any = loaded.model
    with loaded.lock:
        model.set_attn_implementation("eager")
        try:
            with torch.inference_mode():
                return model(ids, output_attentions=True)
        finally:
            loaded.set_eager_attention(False)


def load_tiny(family: str, host: PluginHost | None = None) -> LoadedModel:
    host = host or PluginHost()
    return load(f"tiny-{family}", LoadOptions(aliases=host.aliases, architectures=host.architectures))


@pytest.fixture(scope="session")
def lmlens_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lmlens-cache")


@pytest.fixture(scope="session")
def plugin_host() -> PluginHost:
    return PluginHost()


@pytest.fixture(scope="session")
def tiny_models(plugin_host: PluginHost) -> dict[str, LoadedModel]:
    return {family: load_tiny(family, plugin_host) for family in FAMILIES}


@pytest.fixture
def tiny_analyzer(
    tiny_models: dict[str, LoadedModel], plugin_host: PluginHost, lmlens_cache_dir: Path
) -> Iterator[Callable[[str], Analyzer]]:
    def make(family: str = "gpt2") -> Analyzer:
        settings = Settings(cache_dir=str(lmlens_cache_dir), default_model=f"tiny-{family}")
        return Analyzer(tiny_models[family], settings=settings, plugins=plugin_host)

    yield make


@pytest.fixture(scope="session")
def real_analyzer(plugin_host: PluginHost) -> Callable[[str], Analyzer]:
    """``real_analyzer("smollm2-135m")``: an Analyzer over an embedded real model.

    Uses the user's lmlens cache directory (``LMLENS_CACHE_DIR``), so the one-time GGUF
    conversion is shared with the demo and later runs. Skips, naming the install
    command, when the model's wheel is not installed.
    """
    made: dict[str, Analyzer] = {}

    def make(alias: str) -> Analyzer:
        if alias not in made:
            entry = plugin_host.aliases[alias]
            if entry.locate() is None:
                pytest.skip(f"{alias} is not installed: {entry.install_hint}")
            made[alias] = Analyzer(alias, plugins=plugin_host)
        return made[alias]

    return make
