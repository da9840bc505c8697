"""Build the failure predictor shipped for the tiny random test model tiny-gpt2.

tiny-gpt2 is random (seeded), so this predictor means nothing about real failures; it exists
so that ``methods=["failure"]`` runs on the test model out of the box (the dashboard's tests
draw its gauge), as it does on SmolLM2-135M. It is fitted on fixed labelled pairs: sums
labelled as failures, short sentences as successes. Written into
``src/lmlens_failure/default/tiny-gpt2-default``. Seconds.

    python plugins/failure/scripts/build_tiny_default.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from lmlens_failure.api import SHIPPED, predictor_artifact
from lmlens_failure.data import data_from_pairs
from lmlens_failure.predictor import fit_predictor

from lmlens.artifacts import write_artifact
from lmlens.plugins import PluginHost
from lmlens.testing import load_tiny

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE.parent / "src" / "lmlens_failure" / "default"

TEXTS_FAIL = [f"{i * 7919 % 1000} + {i * 104729 % 100} = {i % 13}" for i in range(24)]
TEXTS_OK = [
    f"the {w} sat on the {v}"
    for w, v in zip(
        ["cat", "dog", "owl", "fox", "bee", "ant", "elk", "emu", "yak", "gnu", "cow", "pig"] * 2,
        ["mat", "rug", "bed", "box", "log", "hat", "cup", "map", "pen", "jar", "bag", "net"] * 2,
        strict=True,
    )
]


def main() -> None:
    torch.set_num_threads(1)
    loaded = load_tiny("gpt2", PluginHost())
    texts = TEXTS_FAIL + TEXTS_OK
    labels = [1] * len(TEXTS_FAIL) + [0] * len(TEXTS_OK)
    data = data_from_pairs(loaded, texts, labels)
    predictor = fit_predictor(data.signals, data.labels, seed=0)
    predictor.info["max_tokens"] = int(data.signals.n_tokens.max())
    name = SHIPPED[loaded.name]
    artifact = predictor_artifact(
        loaded, predictor, name=name, texts=texts,
        extra={"script": "plugins/failure/scripts/build_tiny_default.py",
               "note": "a random test model: the predictor means nothing about real failures"},
    )
    target = DEFAULT_DIR / name
    shutil.rmtree(target, ignore_errors=True)
    write_artifact(artifact, target)
    print(name, "written to", target)


if __name__ == "__main__":
    main()
