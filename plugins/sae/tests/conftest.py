"""A tiny-llama analyzer with its own artifact store, and one small TopK SAE trained on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmlens import Analyzer
from lmlens.models import LoadedModel
from lmlens.plugins import PluginHost
from lmlens.settings import Settings

TEXTS = [
    f"Sentence {i}: the {animal} walked to the {place} and saw {n} birds near the river. "
    f"It was {mood}, so it sat down and waited until evening came."
    for i, (animal, place, n, mood) in enumerate(
        (a, p, n, m)
        for a in ("cat", "dog", "fox", "horse", "owl")
        for p in ("market", "forest", "station", "garden")
        for n in (2, 7, 11)
        for m in ("sunny", "cold")
    )
]


def small_params(**changes: Any) -> Any:
    from lmlens_sae.service import TrainSAEParams

    base = {"texts": TEXTS, "point": "blocks.1.resid_post", "architecture": "topk",
            "k": 8, "d_sae": 128, "tokens": 8000, "batch_size": 256, "lr": 3e-3, "buffer_mb": 1.0,
            "checkpoint_every": 5, "evaluate_ce": False, "dead_after_tokens": 4000, "seed": 0}
    return TrainSAEParams(**{**base, **changes})


@pytest.fixture(scope="module")
def sae_analyzer(tiny_models: dict[str, LoadedModel], plugin_host: PluginHost,
                 tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Analyzer]:
    root = tmp_path_factory.mktemp("sae-cache")
    made: dict[str, Analyzer] = {}

    def make(family: str = "llama") -> Analyzer:
        if family not in made:
            settings = Settings(cache_dir=str(root), default_model=f"tiny-{family}")
            made[family] = Analyzer(tiny_models[family], settings=settings, plugins=plugin_host)
        return made[family]

    return make


@pytest.fixture(scope="module")
def trained(sae_analyzer: Callable[[str], Analyzer]) -> dict[str, Any]:
    """One TopK SAE on tiny-llama (with CE evaluation), shared by the module's tests."""
    from lmlens_sae.service import run_training

    return run_training(sae_analyzer("llama"), small_params(name="tiny-topk", evaluate_ce=True))


@pytest.fixture
def artifact_dir(sae_analyzer: Callable[[str], Analyzer]) -> Path:
    return Path(sae_analyzer("llama").artifact_store.root)  # type: ignore[attr-defined]
