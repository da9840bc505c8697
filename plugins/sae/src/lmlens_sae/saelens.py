"""SAELens format: ``cfg.json`` + ``sae_weights.safetensors``.

Tensors: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``
and ``threshold [d_sae]`` for JumpReLU. The cfg carries ``architecture`` (``standard``,
``topk``, ``jumprelu``), ``d_in``, ``d_sae``, ``hook_name`` (TransformerLens naming, e.g.
``blocks.15.hook_resid_post``; SAELens 6 also nests it under ``metadata``),
``apply_b_dec_to_input``, ``normalize_activations`` and ``k`` for TopK.

Export folds lmlens's constant input scale into the weights, so the written SAE takes raw
activations (``normalize_activations: "none"``):
``pre = (s x - b) W + c = (x - b/s)(s W) + c`` and ``x_hat = (f D + b)/s = f (D/s) + b/s``.
A BatchTopK SAE is exported as a JumpReLU with its global threshold on every latent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from lmlens_sae.errors import InvalidSAEError
from lmlens_sae.model import SAEConfig, SparseAutoencoder

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
_TO_SAELENS = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


def folded_tensors(sae: SparseAutoencoder) -> dict[str, np.ndarray]:
    """The SAE's weights with the input scale folded in (they take raw activations)."""
    s = float(sae.scale)
    t = {name: value.numpy(force=True).astype(np.float32) for name, value in sae.tensors().items()}
    out = {
        "W_enc": t["W_enc"] * s,
        "b_enc": t["b_enc"],
        "W_dec": t["W_dec"] / s,
        "b_dec": t["b_dec"] / s,
    }
    if sae.cfg.architecture in ("batchtopk", "jumprelu"):
        out["threshold"] = np.maximum(sae.threshold.numpy(force=True).astype(np.float32), 0.0)
    return out


def export_saelens(
    sae: SparseAutoencoder,
    directory: str | Path,
    *,
    hook_name: str,
    model_name: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    arch = _TO_SAELENS[cfg.architecture]
    layer = int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else 0
    metadata = {
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_head_index": None,
        "prepend_bos": False,
        "context_size": None,
        "dataset_path": None,
        "sae_lens_training_version": None,
    }
    body: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "hook_name": hook_name,
        "hook_layer": layer,
        "hook_head_index": None,
        "model_name": model_name,
        "prepend_bos": False,
        "activation_fn_str": "topk" if arch == "topk" else "relu",
        "activation_fn_kwargs": {"k": cfg.k} if arch == "topk" else {},
        "metadata": metadata,
    }
    if arch == "topk":
        body["k"] = int(cfg.k or 0)
    if extra:
        body["lmlens"] = extra
    (directory / CFG).write_text(json.dumps(body, indent=2))
    save_file({k: np.ascontiguousarray(v) for k, v in folded_tensors(sae).items()}, str(directory / WEIGHTS))
    return directory


def _field(cfg: dict[str, Any], name: str) -> Any:
    if name in cfg:
        return cfg[name]
    metadata = cfg.get("metadata")
    if isinstance(metadata, dict) and name in metadata:
        return metadata[name]
    return None


def import_saelens(directory: str | Path) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Read an SAELens SAE; returns the SAE (scale 1) and the cfg. Raises ``invalid_sae``."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CFG, directory / WEIGHTS
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise InvalidSAEError(f"{directory} has no {path.name} (an SAELens SAE is {CFG} + {WEIGHTS})",
                                  field="path")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidSAEError(f"{cfg_path} is not valid JSON: {exc}", field="cfg") from exc
    if not isinstance(cfg, dict):
        raise InvalidSAEError(f"{cfg_path} must hold a JSON object", field="cfg")
    architecture = _field(cfg, "architecture")
    if architecture is None and _field(cfg, "activation_fn_str") in ("relu", "topk"):
        architecture = "topk" if _field(cfg, "activation_fn_str") == "topk" else "standard"
    required = {"architecture": architecture, "d_in": _field(cfg, "d_in"), "d_sae": _field(cfg, "d_sae"),
                "hook_name": _field(cfg, "hook_name")}
    missing = [name for name, value in required.items() if value is None]
    if missing:
        raise InvalidSAEError(f"{cfg_path} lacks {', '.join(missing)}", field="cfg")
    if architecture not in _FROM_SAELENS:
        raise InvalidSAEError(
            f"architecture {architecture!r} is not supported; one of {', '.join(sorted(_FROM_SAELENS))}",
            field="architecture",
        )
    arch = _FROM_SAELENS[architecture]
    k = _field(cfg, "k")
    if k is None and isinstance(_field(cfg, "activation_fn_kwargs"), dict):
        k = _field(cfg, "activation_fn_kwargs").get("k")
    if arch == "topk" and k is None:
        raise InvalidSAEError(f"{cfg_path} is a TopK SAE but lacks k", field="k")
    try:
        d_in, d_sae = int(required["d_in"]), int(required["d_sae"])
    except (TypeError, ValueError) as exc:
        raise InvalidSAEError("d_in and d_sae must be integers", field="cfg") from exc
    if arch == "topk" and not 0 < int(k) < d_sae:
        raise InvalidSAEError(f"k={k} must be in 1..d_sae-1 ({d_sae - 1})", field="k")
    normalize = _field(cfg, "normalize_activations") or "none"
    if normalize != "none":
        raise InvalidSAEError(
            f"normalize_activations={normalize!r} needs a dataset-dependent factor that the files do not "
            "carry; fold it into the weights and export with 'none'",
            field="normalize_activations",
        )
    tensors = load_file(str(weights_path))
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    for name, shape in shapes.items():
        if name not in tensors:
            raise InvalidSAEError(f"{weights_path.name} lacks {name}", field=name)
        if tuple(tensors[name].shape) != shape:
            raise InvalidSAEError(
                f"{name} has shape {list(tensors[name].shape)}; d_in={d_in}, d_sae={d_sae} need {list(shape)}",
                field=name,
            )
    apply = _field(cfg, "apply_b_dec_to_input")
    sae_cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=int(k) if arch == "topk" else None,
                        apply_b_dec_to_input=True if apply is None else bool(apply))
    sae = SparseAutoencoder.from_tensors(sae_cfg, {n: tensors[n].astype(np.float32) for n in shapes})
    return sae, cfg
