"""Training through the job, resume, bad input, and the two methods against independent math."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from lmlens_sae.errors import CorpusTooSmallError, TrainingDivergedError, UnknownHookPointError
from lmlens_sae.service import run_training

from lmlens import Analyzer, ArtifactModelMismatchError, InvalidParamsError, Need, run_forward

from .conftest import TEXTS, small_params


class Context:
    """What the worker hands a job: the analyzer and a progress callback."""

    def __init__(self, analyzer: Analyzer, fail_at: float | None = None) -> None:
        self.analyzer = analyzer
        self.fail_at = fail_at
        self.messages: list[tuple[float, str]] = []

    def progress(self, fraction: float, message: str) -> None:
        self.messages.append((fraction, message))
        if self.fail_at is not None and fraction >= self.fail_at:
            raise RuntimeError("worker killed (test)")


def test_trained_sae_has_metrics_and_is_listed(trained: dict[str, Any], sae_analyzer: Callable[..., Any]) -> None:
    m = trained["metrics"]
    assert m["train_tokens"] >= 8000 and m["eval_l0"] <= 8
    assert 0.3 < m["eval_explained_variance"] <= 1.0
    assert {"eval_ce_loss_recovered", "eval_kl_div", "eval_ce_zero_ablation", "eval_dead_fraction"} <= m.keys()
    listed = {i.name: i for i in sae_analyzer("llama").artifacts("sae")}
    assert listed["tiny-topk"].metrics["eval_l0"] == m["eval_l0"]


def test_job_killed_mid_run_resumes_from_its_checkpoint(sae_analyzer: Callable[..., Any],
                                                        trained: dict[str, Any]) -> None:
    analyzer = sae_analyzer("llama")
    job = analyzer.plugins.job("sae.train")
    params = small_params(name="resumed", evaluate_ce=True)
    context = Context(analyzer, fail_at=0.5)
    with pytest.raises(RuntimeError, match="killed"):
        job.run(params, context)
    checkpoint = analyzer.artifact_store.load_checkpoint("sae", "resumed")
    assert checkpoint is not None
    saved_step = checkpoint.config["checkpoint"]["trainer"]["step"]
    assert saved_step > 0 and saved_step % 5 == 0
    assert analyzer.artifact_store.list(kind="sae") and "resumed" not in {i.name for i in analyzer.artifacts("sae")}
    retry = Context(analyzer)
    summary = job.run(params, retry)
    assert summary["resumed_from_step"] == saved_step
    assert analyzer.artifact_store.load_checkpoint("sae", "resumed") is None  # dropped once saved
    # the same params uninterrupted ("tiny-topk" differs only by name): the same metrics within tolerance
    reference, found = trained["metrics"], summary["metrics"]
    assert found["train_tokens"] == pytest.approx(reference["train_tokens"], rel=0.05)
    assert found["eval_explained_variance"] == pytest.approx(reference["eval_explained_variance"], abs=0.05)
    assert found["eval_l0"] == pytest.approx(reference["eval_l0"], abs=0.5)
    assert found["eval_ce_loss_recovered"] == pytest.approx(reference["eval_ce_loss_recovered"], abs=0.1)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(sae_analyzer: Callable[..., Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import lmlens_sae.fit as fit_module

    real = fit_module.stream_activations

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        for i, (position, acts) in enumerate(real(*args, **kwargs)):
            if i >= 4:
                acts = acts.clone()
                acts[0, 0] = float("nan")
            yield position, acts

    monkeypatch.setattr(fit_module, "stream_activations", poisoned)
    analyzer = sae_analyzer("llama")
    with pytest.raises(TrainingDivergedError) as info:
        run_training(analyzer, small_params(name="diverges", checkpoint_every=1, batch_size=64, buffer_mb=0.05))
    assert info.value.code == "training_diverged" and info.value.step >= 1
    assert f"step {info.value.step}" in str(info.value)
    checkpoint = analyzer.artifact_store.load_checkpoint("sae", "diverges")
    assert checkpoint is not None
    assert checkpoint.config["checkpoint"]["trainer"]["step"] == info.value.step
    assert all(np.isfinite(v).all() for v in checkpoint.tensors.values())
    assert "diverges" not in {i.name for i in analyzer.artifacts("sae")}


def test_bad_input_gets_typed_errors(sae_analyzer: Callable[..., Any]) -> None:
    analyzer = sae_analyzer("llama")
    with pytest.raises(UnknownHookPointError) as info:
        run_training(analyzer, small_params(point="blocks.7.resid_post"))
    assert info.value.code == "unknown_hook_point" and "blocks.1.resid_post" in str(info.value)
    assert "blocks.0.mlp.out" in str(info.value)
    with pytest.raises(InvalidParamsError, match="k=128 must be below d_sae=128") as k_info:
        run_training(analyzer, small_params(k=128))
    assert k_info.value.field == "k"
    with pytest.raises(CorpusTooSmallError) as small:
        run_training(analyzer, small_params(tokens=10**7))
    assert small.value.code == "corpus_too_small" and "usable tokens" in str(small.value)
    with pytest.raises(InvalidParamsError, match="texts"):
        run_training(analyzer, small_params(texts=None))


def test_sae_for_another_model_is_refused(trained: dict[str, Any], sae_analyzer: Callable[..., Any]) -> None:
    gpt2 = sae_analyzer("gpt2")
    with pytest.raises(ArtifactModelMismatchError) as info:
        gpt2.analyze("hello there", methods=["sae_features"], params={"sae_features": {"sae": "tiny-topk"}})
    assert info.value.code == "artifact_model_mismatch"


def test_seed_verb_train_sae(sae_analyzer: Callable[..., Any]) -> None:
    analyzer = sae_analyzer("llama")
    summary = analyzer.train_sae(training_texts=TEXTS[:40], layer=-1, n_epochs=1, hidden_size=96, k=4,
                                 batch_size=128, evaluate_ce=False, name="seed-verb")
    assert summary["point"] == "blocks.1.resid_post" and summary["metrics"]["train_tokens"] > 0
    record = analyzer.load_artifact("sae", "seed-verb")
    assert record.config["d_sae"] == 96


def _independent(analyzer: Analyzer, text: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes and reconstruction from the artifact's tensors with float64 numpy."""
    artifact = analyzer.load_artifact("sae", name)
    t = {k: v.astype(np.float64) for k, v in artifact.tensors.items()}
    loaded = analyzer.load_model()
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    x = run_forward(loaded, [Need(artifact.points[0])], input_ids=ids)[artifact.points[0]][0].double().numpy()
    s = float(t["scale"][0])
    pre = (x * s - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    k = artifact.config["k"]
    f = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=1)[:, :k]
    rows = np.arange(len(pre))[:, None]
    f[rows, idx] = np.maximum(pre[rows, idx], 0)
    recon = (f @ t["W_dec"] + t["b_dec"]) / s
    return x, f, recon


def test_sae_features_match_an_independent_encoding(trained: dict[str, Any],
                                                    sae_analyzer: Callable[..., Any]) -> None:
    analyzer = sae_analyzer("llama")
    text = "The owl walked to the garden and saw 7 birds."
    result = analyzer.analyze(text, methods=["sae_features", "sae"],
                              params={"sae_features": {"sae": "tiny-topk", "top": 8}, "sae": {"sae": "tiny-topk"}})
    found = result.methods["sae_features"]
    x, f, recon = _independent(analyzer, text, "tiny-topk")
    for p in range(len(x)):
        want = {int(j): f[p, j] for j in np.nonzero(f[p])[0]}
        got = {int(j): float(v) for j, v in zip(found.feature_ids[p], found.activations[p], strict=True) if j >= 0}
        assert got.keys() == want.keys()
        for j in want:
            assert got[j] == pytest.approx(want[j], rel=1e-3, abs=1e-4)
    err = ((x - recon) ** 2).sum(1) / (x**2).sum(1)
    np.testing.assert_allclose(found.reconstruction_error, err, rtol=1e-3, atol=1e-5)
    assert found.excluded[0] and not any(found.excluded[1:])
    np.testing.assert_array_equal(result.methods["sae"].feature_ids, found.feature_ids)  # the seed's alias


def test_sae_feature_card_is_consistent(trained: dict[str, Any], sae_analyzer: Callable[..., Any]) -> None:
    analyzer = sae_analyzer("llama")
    text = "The fox walked to the station and saw 11 birds."
    features = analyzer.analyze(text, methods=["sae_features"], params={"sae_features": {"sae": "tiny-topk"}})
    feature = features.methods["sae_features"].top_features[0].feature
    result = analyzer.analyze(text, methods=["sae_feature"], params={"sae_feature": {
        "sae": "tiny-topk", "feature": feature, "corpus": TEXTS[:30], "top_contexts": 5, "bins": 10}})
    card = result.methods["sae_feature"]
    acts = [c.activation for c in card.contexts]
    assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(card.max_activation)
    assert sum(card.histogram_counts) == round(card.density * card.n_tokens)
    assert 0 < card.density <= 1 and card.eval_density is not None
    # logit lens against an independent computation: W_U (gain * direction)
    loaded = analyzer.load_model()
    artifact = analyzer.load_artifact("sae", "tiny-topk")
    direction = artifact.tensors["W_dec"][feature].astype(np.float64) / float(artifact.tensors["scale"][0])
    gain = loaded.modules.resolve("final").module.weight.detach().double().numpy()
    scores = loaded.model.get_output_embeddings().weight.detach().double().numpy() @ (gain * direction)
    assert [t.id for t in card.promoted] == np.argsort(-scores)[: len(card.promoted)].tolist()
    assert [t.id for t in card.suppressed] == np.argsort(scores)[: len(card.suppressed)].tolist()
    with pytest.raises(InvalidParamsError, match="has 128 features"):
        analyzer.analyze(text, methods=["sae_feature"], params={"sae_feature": {"sae": "tiny-topk", "feature": 128}})


def test_cli_export_import_round_trip(trained: dict[str, Any], sae_analyzer: Callable[..., Any],
                                      tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import click
    from click.testing import CliRunner
    from lmlens_sae import register_commands

    main = click.Group()
    register_commands(cli=main)

    analyzer = sae_analyzer("llama")
    monkeypatch.setenv("LMLENS_ARTIFACT_DIR", str(analyzer.artifact_store.root))
    runner = CliRunner()
    out = runner.invoke(main, ["sae", "export", "tiny-topk", str(tmp_path / "exp"), "--model", "tiny-llama"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "exp" / "cfg.json").is_file()
    out = runner.invoke(main, ["sae", "import", str(tmp_path / "exp"), "--model", "tiny-llama", "--name", "back"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["sae", "list"])
    assert "tiny-topk" in out.output and "back" in out.output
    text = "A dog sat in the market."
    a = analyzer.analyze(text, methods=["sae_features"], params={"sae_features": {"sae": "tiny-topk"}})
    b = analyzer.analyze(text, methods=["sae_features"], params={"sae_features": {"sae": "back"}})
    np.testing.assert_array_equal(a.methods["sae_features"].feature_ids, b.methods["sae_features"].feature_ids)
    np.testing.assert_allclose(a.methods["sae_features"].activations, b.methods["sae_features"].activations,
                               rtol=1e-4, atol=1e-5)
    bad = runner.invoke(main, ["sae", "import", str(tmp_path), "--model", "tiny-llama"])
    assert bad.exit_code != 0 and "invalid_sae" in bad.output


def test_panels_render(trained: dict[str, Any], sae_analyzer: Callable[..., Any], tmp_path: Any) -> None:
    analyzer = sae_analyzer("llama")
    text = "The cat walked."
    result = analyzer.analyze(text, methods=["sae_features", "sae_feature"], params={
        "sae_features": {"sae": "tiny-topk"}, "sae_feature": {"sae": "tiny-topk", "feature": 3, "corpus": TEXTS[:5]}})
    panels = analyzer.plugins.panels
    panels["sae_features"](result, save_path=str(tmp_path / "strip.html"))
    panels["sae_feature"](result, save_path=str(tmp_path / "card.html"))
    assert "feature 3" in (tmp_path / "card.html").read_text()
    assert (tmp_path / "strip.html").stat().st_size > 1000
    torch.manual_seed(0)


def test_attention_heads_point_trains_splices_and_keeps_its_saelens_name(sae_analyzer: Callable[..., Any],
                                                                         tmp_path: Any) -> None:
    from lmlens_sae.saelens_store import import_into_store

    analyzer = sae_analyzer("llama")
    summary = run_training(analyzer, small_params(name="heads", point="blocks.0.attn.heads", tokens=3000,
                                                  evaluate_ce=True))
    assert summary["metrics"]["eval_ce_tokens"] > 0 and summary["metrics"]["eval_explained_variance"] > 0
    artifact = analyzer.load_artifact("sae", "heads")
    assert artifact.config["hook_name"] == "blocks.0.attn.hook_z" and artifact.config["d_in"] == 64
    result = analyzer.analyze("The dog waited.", methods=["sae_features"], params={"sae_features": {"sae": "heads"}})
    assert result.methods["sae_features"].point == "blocks.0.attn.heads"
    from lmlens_sae.record import SAERecord
    from lmlens_sae.saelens import export_saelens

    export_saelens(SAERecord.from_artifact(artifact).sae, tmp_path, hook_name="blocks.0.attn.hook_z", model_name="m")
    info = import_into_store(analyzer, tmp_path, name="heads-back")
    assert info.points == ["blocks.0.attn.heads"]


def test_the_default_sae_is_the_model_s_own(sae_analyzer: Callable[..., Any]) -> None:
    for family in ("llama", "gpt2"):
        result = sae_analyzer(family).analyze("The seed's example text.", methods=["sae"])
        assert result.methods["sae"].sae == f"tiny-{family}-res1-topk"
        assert result["sae"] is result.methods["sae"]  # the seed's mapping access
