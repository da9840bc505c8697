from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from lmlens import Analyzer
from lmlens.settings import Settings
from lmlens_anomaly.corpus import HERE


def _sentences() -> list[str]:
    paragraphs = (HERE / "written.txt").read_text(encoding="utf-8").split("\n\n")
    out = [s.strip() for p in paragraphs for s in re.split(r"(?<=[.!?])\s+", p) if len(s.strip()) > 20]
    return [s[:90] for s in out]  # short texts keep the tiny-model passes fast


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return _sentences()


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("anomaly-cache")


@pytest.fixture(scope="session")
def make_analyzer(tiny_models, plugin_host, artifact_root) -> Callable[[str], Analyzer]:  # type: ignore[no-untyped-def]
    """Analyzers over the tiny models that share one artifact directory."""
    made: dict[str, Analyzer] = {}

    def make(family: str = "gpt2") -> Analyzer:
        if family not in made:
            settings = Settings(cache_dir=str(artifact_root), default_model=f"tiny-{family}")
            made[family] = Analyzer(tiny_models[family], settings=settings, plugins=plugin_host)
        return made[family]

    return make


@pytest.fixture(scope="session")
def fitted(make_analyzer, sentences):  # type: ignore[no-untyped-def]
    """One detector fitted on tiny-gpt2 for the whole session (name ``t-gpt2``)."""
    analyzer = make_analyzer("gpt2")
    progress: list[tuple[float, str]] = []
    info = analyzer.fit_anomaly_detector(
        sentences[:44], name="t-gpt2", target_fpr=0.05, progress=lambda f, m: progress.append((f, m))
    )
    return analyzer, info, progress
