"""Shared fixtures: float64 copies of the tiny models and a Trace builder."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lmlens import Analyzer, LoadedModel, Trace
from lmlens.settings import Settings
from lmlens.testing import load_tiny


@pytest.fixture(scope="session")
def float64_models() -> dict[str, LoadedModel]:
    """Tiny models cast to float64, so finite differences can be tight."""
    models = {}
    for family in ("gpt2", "llama", "bert"):
        loaded = load_tiny(family)
        loaded.model.double()
        _float64_rms_norms(loaded.model)
        models[family] = loaded
    return models


def _float64_rms_norms(model: torch.nn.Module) -> None:
    """transformers' LlamaRMSNorm computes in float32 whatever the model dtype; swap in
    torch's RMSNorm (same formula) so the whole tiny Llama really runs in float64."""
    for name, module in list(model.named_modules()):
        if type(module).__name__ != "LlamaRMSNorm":
            continue
        weight = module.weight
        norm = torch.nn.RMSNorm(weight.shape[0], eps=module.variance_epsilon, dtype=torch.float64)
        with torch.no_grad():
            norm.weight.copy_(weight)
        norm.weight.requires_grad_(False)  # like every weight the kernel loads
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, norm)


@pytest.fixture(scope="session")
def make_trace(tmp_path_factory: pytest.TempPathFactory) -> Callable[[LoadedModel, str], Trace]:
    cache = str(tmp_path_factory.mktemp("importance-cache"))

    def make(loaded: LoadedModel, text: str) -> Trace:
        analyzer = Analyzer(loaded, settings=Settings(cache_dir=cache))
        ids, tokens = analyzer.tokenize(loaded, text)
        return Trace(model=loaded, text=text, tokens=tokens, input_ids=ids, activations={})

    return make
