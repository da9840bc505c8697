"""An SAE as a kernel artifact (kind ``sae``): safetensors + JSON, never pickle.

Config: the architecture (``d_in``, ``d_sae``, ``k``, ``apply_b_dec_to_input``), the hook
point, its SAELens hook name, the normalisation (``constant_scale``: activations are
multiplied by ``scale`` before encoding; the reconstruction is divided by it) and the
training config and loss history. Tensors: ``W_enc, b_enc, W_dec, b_dec, scale`` and
``threshold`` for BatchTopK / JumpReLU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmlens import Artifact
from lmlens_sae.activations import saelens_hook_name
from lmlens_sae.errors import InvalidSAEError
from lmlens_sae.model import SAEConfig, SparseAutoencoder

KIND = "sae"


@dataclass
class SAERecord:
    name: str
    sae: SparseAutoencoder
    point: str
    model: str  # fingerprint
    model_name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # train config, history, origin
    provenance: dict[str, Any] = field(default_factory=dict)
    content_hash: str | None = None
    density: np.ndarray | None = None  # [d_sae]: share of held-out tokens each feature fires on

    @property
    def sae_density(self) -> np.ndarray | None:
        return self.density

    def to_artifact(self, *, dtype: Any = np.float32) -> Artifact:
        cfg = self.sae.cfg
        tensors = {name: t.numpy(force=True).astype(dtype) for name, t in self.sae.tensors().items()}
        tensors["scale"] = tensors["scale"].astype(np.float32)  # one number: keep it exact
        if self.density is not None:
            tensors["feature_density"] = np.asarray(self.density, dtype=np.float32)
        config = {
            **cfg.to_dict(),
            "point": self.point,
            "hook_name": saelens_hook_name(self.point),
            "normalization": {"kind": "constant_scale", "scale": float(self.sae.scale)},
            **self.extra,
        }
        return Artifact(kind=KIND, name=self.name, model=self.model, model_name=self.model_name,
                        points=[self.point], config=config, tensors=tensors, metrics=dict(self.metrics),
                        provenance=dict(self.provenance))

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> SAERecord:
        config = dict(artifact.config)
        try:
            cfg = SAEConfig(d_in=int(config["d_in"]), d_sae=int(config["d_sae"]),
                            architecture=str(config["architecture"]), k=config.get("k"),
                            apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)))
        except KeyError as exc:
            raise InvalidSAEError(f"SAE artifact {artifact.name!r} lacks config field {exc}", field="sae") from exc
        tensors = {name: np.asarray(value, dtype=np.float32) for name, value in artifact.tensors.items()}
        sae = SparseAutoencoder.from_tensors(cfg, tensors)
        sae.eval()
        for p in sae.parameters():
            p.requires_grad_(False)
        point = str(config.get("point") or artifact.points[0])
        extra = {k: v for k, v in config.items()
                 if k not in ("d_in", "d_sae", "architecture", "k", "apply_b_dec_to_input", "point", "hook_name",
                              "normalization")}
        return cls(name=artifact.name, sae=sae, point=point, model=artifact.model, model_name=artifact.model_name,
                   metrics=dict(artifact.metrics), extra=extra, provenance=dict(artifact.provenance),
                   content_hash=getattr(artifact, "content_hash", None) or None,
                   density=tensors.get("feature_density"))
