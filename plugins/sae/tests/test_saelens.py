"""SAELens format: export read back by an independent loader; import validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lmlens_sae.errors import InvalidSAEError
from lmlens_sae.model import SAEConfig, SparseAutoencoder
from lmlens_sae.saelens import export_saelens, import_saelens
from safetensors.numpy import load_file, save_file

D_IN, D_SAE = 12, 40


def independent_encode(directory: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SAELens's documented inference, in float64 numpy: (feature activations, reconstruction)."""
    cfg = json.loads((directory / "cfg.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(directory / "sae_weights.safetensors")).items()}
    assert cfg["normalize_activations"] == "none"
    h = x - w["b_dec"] if cfg["apply_b_dec_to_input"] else x
    pre = h @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        f = np.maximum(pre, 0)
    elif cfg["architecture"] == "topk":
        k = cfg["k"]
        f = np.zeros_like(pre)
        idx = np.argsort(-pre, axis=1)[:, :k]
        rows = np.arange(pre.shape[0])[:, None]
        f[rows, idx] = np.maximum(pre[rows, idx], 0)
    elif cfg["architecture"] == "jumprelu":
        f = pre * (pre > w["threshold"])
    else:
        raise AssertionError(cfg["architecture"])
    return f, f @ w["W_dec"] + w["b_dec"]


def make_sae(arch: str, *, scale: float = 3.7) -> SparseAutoencoder:
    k = 5 if arch in ("topk", "batchtopk") else None
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=k,
                                      apply_b_dec_to_input=arch != "relu"), seed=3)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.2)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g) * 0.5)
        sae.threshold.fill_(0.15)
        sae.scale.fill_(scale)  # a non-trivial normalisation that export must fold in
    return sae


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk"])
def test_export_read_back_by_an_independent_loader_gives_identical_encodings(arch: str, tmp_path: Path) -> None:
    sae = make_sae(arch)
    export_saelens(sae, tmp_path, hook_name="blocks.1.hook_resid_post", model_name="tiny-llama")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu"}[arch]
    assert (cfg["d_in"], cfg["d_sae"], cfg["hook_name"]) == (D_IN, D_SAE, "blocks.1.hook_resid_post")
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    x = np.random.default_rng(0).normal(size=(300, D_IN)) * 0.5
    f_ref, recon_ref = independent_encode(tmp_path, x)
    with torch.no_grad():
        f = sae.encode(torch.tensor(x, dtype=torch.float32)).double().numpy()
        recon = sae.decode(torch.tensor(f, dtype=torch.float32)).double().numpy()
    assert (f_ref > 0).sum() > 100  # the test exercises real activations
    np.testing.assert_array_equal(f > 0, f_ref > 0)
    np.testing.assert_allclose(f, f_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(recon, recon_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk"])
def test_import_of_an_export_encodes_the_same(arch: str, tmp_path: Path) -> None:
    sae = make_sae(arch)
    export_saelens(sae, tmp_path, hook_name="blocks.0.hook_resid_post", model_name="m")
    back, _ = import_saelens(tmp_path)
    x = torch.randn(200, D_IN) * 0.5
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(back(x), sae(x), rtol=1e-4, atol=1e-4)


def _exported(tmp_path: Path, arch: str = "topk") -> Path:
    export_saelens(make_sae(arch), tmp_path, hook_name="blocks.0.hook_resid_post", model_name="m")
    return tmp_path


@pytest.mark.parametrize("field", ["d_in", "d_sae", "architecture", "hook_name", "k"])
def test_import_rejects_a_cfg_missing_a_field(field: str, tmp_path: Path) -> None:
    directory = _exported(tmp_path)
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg.pop(field)
    cfg["metadata"].pop(field, None)
    if field == "k":
        cfg["activation_fn_kwargs"] = {}
    if field == "architecture":
        cfg.pop("activation_fn_str")
    (directory / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidSAEError) as info:
        import_saelens(directory)
    assert info.value.code == "invalid_sae" and field in str(info.value)


def test_import_rejects_shapes_that_disagree_with_the_cfg(tmp_path: Path) -> None:
    directory = _exported(tmp_path)
    weights = load_file(str(directory / "sae_weights.safetensors"))
    weights["W_dec"] = weights["W_dec"][:, :-1].copy()
    save_file(weights, str(directory / "sae_weights.safetensors"))
    with pytest.raises(InvalidSAEError, match=r"W_dec has shape \[40, 11\].*\[40, 12\]"):
        import_saelens(directory)


def test_import_rejects_missing_threshold_k_too_large_and_normalisation(tmp_path: Path) -> None:
    jump = _exported(tmp_path / "j", "batchtopk")
    weights = load_file(str(jump / "sae_weights.safetensors"))
    weights.pop("threshold")
    save_file(weights, str(jump / "sae_weights.safetensors"))
    with pytest.raises(InvalidSAEError, match="threshold"):
        import_saelens(jump)
    topk = _exported(tmp_path / "t")
    cfg = json.loads((topk / "cfg.json").read_text())
    for change, pattern in (({"k": D_SAE}, "k="), ({"normalize_activations": "expected_average_only_in"},
                                                    "normalize_activations")):
        (topk / "cfg.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(InvalidSAEError, match=pattern):
            import_saelens(topk)
    with pytest.raises(InvalidSAEError, match=r"cfg\.json"):
        import_saelens(tmp_path / "nowhere")
