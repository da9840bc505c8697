"""Import an SAELens SAE into the artifact store, bound to a loaded model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmlens import ArtifactInfo, InvalidParamsError, data_provenance, model_fingerprint
from lmlens_sae.activations import point_width, resolve_point
from lmlens_sae.errors import InvalidSAEError
from lmlens_sae.record import SAERecord
from lmlens_sae.saelens import import_saelens


def import_into_store(analyzer: Any, directory: str | Path, *, model: str | None = None,
                      name: str | None = None) -> ArtifactInfo:
    """Read ``directory`` (SAELens format), check it fits the model, save it as kind ``sae``.

    The hook name must map onto one of the model's points and ``d_in`` must equal the
    model's width; the SAE is then bound to that model's fingerprint.
    """
    sae, cfg = import_saelens(directory)
    loaded = analyzer.load_model(model)
    hook_name = str(cfg.get("hook_name") or cfg.get("metadata", {}).get("hook_name"))
    point = resolve_point(loaded, hook_name)
    width = point_width(loaded, point)
    if sae.d_in != width:
        raise InvalidSAEError(f"d_in={sae.d_in} does not match the width {width} of {loaded.name} at {point}",
                              field="d_in")
    name = name or re.sub(r"[^A-Za-z0-9._-]", "_", f"{loaded.name}-{point}-imported-{Path(directory).name}")[:128]
    if not name[0].isalnum():
        raise InvalidParamsError(f"name {name!r} must start with a letter or digit", field="name")
    record = SAERecord(
        name=name, sae=sae, point=point, model=model_fingerprint(loaded), model_name=loaded.name,
        metrics=dict(cfg.get("lmlens", {}).get("metrics", {})) if isinstance(cfg.get("lmlens"), dict) else {},
        extra={"origin": {"format": "saelens", "path": str(Path(directory).resolve()),
                          "model_name": cfg.get("model_name") or cfg.get("metadata", {}).get("model_name")}},
        provenance=data_provenance([]),
    )
    return analyzer.artifact_store.save(record.to_artifact())
