"""The shipped default SAE: present, small, float16, quick to load, and its README numbers are its own."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from lmlens_sae import DEFAULT_DIR
from lmlens_sae.methods import DEFAULT_SAE
from lmlens_sae.record import SAERecord

from lmlens import ArtifactStore
from lmlens.plugins import PluginHost

PLUGIN = Path(__file__).resolve().parents[1]
README = PLUGIN / "README.md"
DIRECTORY = DEFAULT_DIR / DEFAULT_SAE

pytestmark = pytest.mark.skipif(not (DIRECTORY / "artifact.json").is_file(),
                                reason="the default SAE has not been built (plugins/sae/scripts/train_default.py)")

# README row label -> metric key (the README table is written from these by train_default.py)
ROWS = {
    "explained variance": "eval_explained_variance",
    "L0": "eval_l0",
    "dead fraction": "eval_dead_fraction",
    "CE loss recovered": "eval_ce_loss_recovered",
    "KL": "eval_kl_div",
}


def test_default_is_registered_small_float16_and_loads_fast(tmp_path: Path) -> None:
    host = PluginHost()
    assert DIRECTORY in [Path(p) for p in host.artifact_dirs]
    size = sum(p.stat().st_size for p in DIRECTORY.iterdir())
    assert size <= 12 * 1024 * 1024, size
    store = ArtifactStore(tmp_path, builtins=[DIRECTORY])
    started = time.perf_counter()
    record = SAERecord.from_artifact(store.load("sae", DEFAULT_SAE))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, elapsed
    raw = store.load("sae", DEFAULT_SAE)
    assert raw.tensors["W_enc"].dtype == np.float16 and raw.tensors["W_enc"].shape == (576, 4608)
    assert record.sae.cfg.architecture == "topk" and record.sae.cfg.k == 32
    assert record.point == "blocks.15.resid_post" and record.model_name == "smollm2-135m"
    info = next(i for i in store.list(kind="sae") if i.name == DEFAULT_SAE)
    assert info.builtin


def test_readme_quotes_the_stored_metrics() -> None:
    meta = json.loads((DIRECTORY / "artifact.json").read_text())
    metrics = meta["metrics"]
    text = README.read_text()
    for label, key in ROWS.items():
        row = re.search(rf"^\| {re.escape(label)} \| ([^|]+) \|", text, flags=re.M)
        assert row is not None, f"README has no row {label!r}"
        assert row.group(1).strip() == f"{metrics[key]:.3f}", (label, row.group(1), metrics[key])
    stored = json.loads((PLUGIN / "scripts" / "default_metrics.json").read_text())["metrics"]
    assert stored == metrics
