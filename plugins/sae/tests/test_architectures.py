"""The three trainable architectures, the sparse TopK gradient, schedules and divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lmlens_sae.errors import TrainingDivergedError
from lmlens_sae.model import SAEConfig, SparseAutoencoder, geometric_median
from lmlens_sae.train import TrainConfig, Trainer

D_IN, D_SAE = 16, 64


def synthetic(n: int, seed: int) -> torch.Tensor:
    """Sparse combinations of 48 fixed unit directions plus an offset: what an SAE should find."""
    g = torch.Generator().manual_seed(1234)
    dirs = torch.randn(48, D_IN, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    g2 = torch.Generator().manual_seed(seed)
    codes = (torch.rand(n, 48, generator=g2) < 0.06).float() * (1 + torch.rand(n, 48, generator=g2) * 2)
    return codes @ dirs + 0.3


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk"])
def test_each_architecture_trains_and_reduces_loss(arch: str) -> None:
    cfg = TrainConfig(architecture=arch, d_sae=D_SAE, k=6, lr=4e-3, batch_size=256, total_tokens=256 * 120,
                      l1_coeff=0.5, dead_after_tokens=4000, seed=0)
    trainer = Trainer(cfg, D_IN)
    stats = trainer.train(synthetic(256, seed) for seed in range(10**6))
    assert len(stats) == 120
    first = np.mean([s.mse for s in stats[:5]])
    last = np.mean([s.mse for s in stats[-5:]])
    assert last < 0.5 * first, (arch, first, last)
    assert stats[-1].explained_variance > 0.5
    if arch == "topk":
        assert all(s.l0 <= 6 for s in stats)
    if arch in ("topk", "batchtopk"):  # unit-norm decoder rows are kept
        norms = trainer.sae.W_dec.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    if arch == "batchtopk":  # inference uses the learnt threshold: close to k per token on average
        assert float(trainer.sae.threshold[0]) > 0
        f = trainer.sae.encode(synthetic(2048, 99))
        assert 2 <= float((f > 0).float().sum(1).mean()) <= 18


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_gradients_equal_the_dense_ones(arch: str) -> None:
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=5, apply_b_dec_to_input=True)
    x = synthetic(64, 3)
    b_dec, b_enc = torch.randn(D_IN) * 0.1, torch.randn(D_SAE) * 0.1
    grads = {}
    for sparse in (True, False):
        sae = SparseAutoencoder(cfg, seed=1)
        with torch.no_grad():
            sae.b_dec.copy_(b_dec)
            sae.b_enc.copy_(b_enc)
        sae.sparse_decode = sparse
        out = sae.train_forward(x)
        if arch == "batchtopk":  # BatchTopK: variable counts per row, k * N in all
            active = out["values"] > 0 if sparse else out["acts"] > 0
            assert int(active.sum()) == 5 * x.shape[0]
        (x - out["recon"]).pow(2).sum().backward()
        grads[sparse] = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for name in grads[True]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-5, msg=name)


def test_decoder_starts_as_encoder_transpose_and_relu_decoder_norm() -> None:
    relu = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="relu"))
    torch.testing.assert_close(relu.W_enc, relu.W_dec.T)
    torch.testing.assert_close(relu.W_dec.norm(dim=1), torch.full((D_SAE,), 0.1))
    topk = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=4))
    torch.testing.assert_close(topk.W_dec.norm(dim=1), torch.ones(D_SAE))


def test_geometric_median_satisfies_the_optimality_condition() -> None:
    # at the geometric median m, sum_i (x_i - m) / ||x_i - m|| = 0 (float64 numpy, independent of torch)
    points = torch.randn(200, 3, dtype=torch.float64) ** 3
    m = geometric_median(points, iters=2000, tol=1e-14).numpy()
    diff = points.numpy() - m
    residual = (diff / np.linalg.norm(diff, axis=1, keepdims=True)).sum(0)
    assert np.linalg.norm(residual) < 1e-4
    assert np.linalg.norm(points.mean(0).numpy() - m) > 1e-2  # and it is not the mean


def test_schedules_warm_up_l1_and_decay_lr() -> None:
    cfg = TrainConfig(architecture="relu", d_sae=D_SAE, batch_size=10, total_tokens=1000, lr=1.0, l1_coeff=2.0,
                      l1_warmup_frac=0.1, lr_warmup_frac=0.0, lr_decay_frac=0.2)
    trainer = Trainer(cfg, D_IN)
    lrs, l1s = zip(*(trainer.schedules(s) for s in range(100)), strict=True)
    assert l1s[0] == pytest.approx(0.2) and l1s[9] == pytest.approx(2.0) and l1s[50] == 2.0
    assert lrs[0] == 1.0 and lrs[79] == 1.0 and lrs[90] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.05)


def test_k_at_or_above_d_sae_is_refused() -> None:
    with pytest.raises(ValueError, match="below d_sae"):
        Trainer(TrainConfig(architecture="topk", d_sae=8, k=8), D_IN)


def test_aux_loss_revives_dead_latents() -> None:
    revived = {}
    for coeff in (1 / 32, 0.0):
        cfg = TrainConfig(architecture="topk", d_sae=D_SAE, k=4, lr=4e-3, batch_size=256, total_tokens=256 * 60,
                          dead_after_tokens=512, aux_coeff=coeff, seed=0)
        trainer = Trainer(cfg, D_IN)
        trainer.initialize(synthetic(2048, 0))
        with torch.no_grad():  # kill half the latents: only AuxK gives them a gradient
            trainer.sae.b_enc[: D_SAE // 2] = -4.0
        stats = trainer.train(synthetic(256, s) for s in range(10**6))
        if coeff > 0:
            assert any(s.aux_loss > 0 for s in stats)
        with torch.no_grad():
            pre = trainer.sae.pre_acts(synthetic(4096, 7) * trainer.sae.scale)
        revived[coeff] = float(pre[:, : D_SAE // 2].max(0).values.mean())
    assert revived[1 / 32] > revived[0.0] + 0.5, revived


def test_nan_loss_raises_with_the_step() -> None:
    trainer = Trainer(TrainConfig(architecture="topk", d_sae=D_SAE, k=4, batch_size=32, total_tokens=10_000), D_IN)
    trainer.step(synthetic(32, 0))
    trainer.step(synthetic(32, 1))
    bad = synthetic(32, 2)
    bad[3, 2] = float("nan")
    before = trainer.sae.W_dec.detach().clone()
    with pytest.raises(TrainingDivergedError) as info:
        trainer.step(bad)
    assert info.value.step == 2 and info.value.code == "training_diverged"
    torch.testing.assert_close(trainer.sae.W_dec.detach(), before)  # no update from the bad batch


def test_state_round_trip_continues_identically() -> None:
    cfg = TrainConfig(architecture="topk", d_sae=D_SAE, k=4, lr=3e-3, batch_size=64, total_tokens=64 * 20)
    a = Trainer(cfg, D_IN)
    for s in range(10):
        a.step(synthetic(64, s))
    b = Trainer(cfg, D_IN)
    b.load_state(a.state_config(), a.state_tensors())
    for s in range(10, 15):
        sa, sb = a.step(synthetic(64, s)), b.step(synthetic(64, s))
        assert sa.loss == pytest.approx(sb.loss, rel=1e-5)
    torch.testing.assert_close(a.sae.W_enc, b.sae.W_enc)
