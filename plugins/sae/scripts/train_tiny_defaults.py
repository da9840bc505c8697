"""Train the default SAEs of the tiny random test models (tiny-gpt2, tiny-llama, tiny-bert).

The tiny models are random (seeded), so these SAEs mean nothing about language; they exist so
that the seed's ``methods=[..., "sae"]`` works on the test models out of the box, as it does on
SmolLM2-135M. TopK, k = 8, 256 latents (4x) at blocks.1.resid_post, trained on the stdlib's pydoc
topics, written into ``src/lmlens_sae/default/`` with their held-out metrics. Seconds per model.

    python plugins/sae/scripts/train_tiny_defaults.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from lmlens_sae.fit import fit
from lmlens_sae.methods import DEFAULTS
from lmlens_sae.record import SAERecord
from lmlens_sae.train import TrainConfig

from lmlens import data_provenance, model_fingerprint
from lmlens.artifacts import write_artifact
from lmlens.plugins import PluginHost
from lmlens.testing import load_tiny

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE.parent / "src" / "lmlens_sae" / "default"


def main() -> None:
    import pydoc_data.topics

    torch.set_num_threads(1)
    texts = [body for _, body in sorted(pydoc_data.topics.topics.items())][:24]
    host = PluginHost()
    for family in sys.argv[1:] or ["gpt2", "llama", "bert"]:
        loaded = load_tiny(family, host)
        cfg = TrainConfig(architecture="topk", d_sae=4 * loaded.info.d_model, k=8, lr=3e-3, batch_size=512,
                          total_tokens=60_000, dead_after_tokens=20_000, seed=0)
        result = fit(loaded, texts, cfg, point="blocks.1.resid_post", buffer_mb=16, held_out=0.1,
                     eval_tokens=2048)
        name = DEFAULTS[loaded.name]
        record = SAERecord(name=name, sae=result.sae, point=result.point, model=model_fingerprint(loaded),
                           model_name=loaded.name, metrics=result.metrics, density=result.density,
                           extra={"train": cfg.to_dict(), "corpus": "pydoc_data topics (first 24)",
                                  "note": "a random test model: the features mean nothing about language"},
                           provenance={**data_provenance(texts),
                                       "script": "plugins/sae/scripts/train_tiny_defaults.py"})
        target = DEFAULT_DIR / name
        shutil.rmtree(target, ignore_errors=True)
        write_artifact(record.to_artifact(dtype=np.float32), target)
        print(name, {k: v for k, v in result.metrics.items() if k.startswith("eval_")})


if __name__ == "__main__":
    main()
