"""head_importance against one-head-at-a-time ablations done on a copy of the weights.

The reference never hooks anything: zero ablation zeroes the head's columns of the
output projection; mean ablation also moves the head's mean contribution into the
projection's bias. The loss is the model's own ``labels=`` loss.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lmlens import InvalidParamsError, LoadedModel
from lmlens_attention import HeadImportanceResult

TEXT = "Heads that matter change the loss when they are gone."
PROJ = {"gpt2": "attn.c_proj", "llama": "self_attn.o_proj", "bert": "attention.output.dense"}


def head_columns(proj: nn.Module, head: int, d_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [d_model, d_head], input slice) of one head, for Linear and GPT-2's Conv1D."""
    cols = slice(head * d_head, (head + 1) * d_head)
    if isinstance(proj, nn.Linear):
        return proj.weight[:, cols], proj.weight
    return proj.weight[cols, :].T, proj.weight  # Conv1D: weight is [in, out]


def ablate_copy(loaded: LoadedModel, layer: int, head: int, mean_input: torch.Tensor | None) -> nn.Module:
    model = copy.deepcopy(loaded.model)
    blocks = model.get_submodule(loaded.modules.prefix + loaded.arch.blocks)
    proj = blocks[layer].get_submodule(PROJ[loaded.info.family])
    d = loaded.info.d_head
    cols = slice(head * d, (head + 1) * d)
    with torch.no_grad():
        w_head, _ = head_columns(proj, head, d)
        shift = w_head @ mean_input[cols] if mean_input is not None else None  # [d_model]
        if isinstance(proj, nn.Linear):
            proj.weight[:, cols] = 0
        else:
            proj.weight[cols, :] = 0
        if shift is not None:
            if proj.bias is None:
                proj.bias = nn.Parameter(torch.zeros(proj.weight.shape[0]))
            proj.bias += shift
    return model


def mean_inputs(loaded: LoadedModel, ids: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's projection input, averaged over positions, recorded with plain hooks."""
    got: list[torch.Tensor] = []
    handles = [
        blk.get_submodule(PROJ[loaded.info.family]).register_forward_pre_hook(
            lambda m, args: got.append(args[0][0].mean(0))
        )
        for blk in loaded.modules.blocks
    ]
    try:
        with torch.no_grad():
            loaded.model(ids)
    finally:
        for h in handles:
            h.remove()
    return got


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_ablation_equals_weight_surgery(tiny_analyzer, tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    params = {"head_importance": {"batch_size": 3}}
    hi = tiny_analyzer(family).analyze(TEXT, methods=["head_importance"], params=params).methods["head_importance"]
    assert isinstance(hi, HeadImportanceResult) and hi.metric == "next_token_loss"
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        clean = loaded.model(ids, labels=ids).loss.item()
    assert hi.clean == pytest.approx(clean, abs=1e-5)
    means = mean_inputs(loaded, ids)
    for layer in range(2):
        for head in range(4):
            with torch.no_grad():
                zero = ablate_copy(loaded, layer, head, None)(ids, labels=ids).loss.item()
                mean = ablate_copy(loaded, layer, head, means[layer])(ids, labels=ids).loss.item()
            assert hi.zero[layer, head] == pytest.approx(zero - clean, abs=2e-5)
            assert hi.mean[layer, head] == pytest.approx(mean - clean, abs=2e-5)
    assert hi.n_passes == 1 + -(-16 // 3)  # 2 kinds x 8 heads in batches of 3, plus the clean pass
    assert np.abs(hi.zero).max() > 1e-3  # ablations do something on a random model


def test_encoder_uses_final_state_change(tiny_analyzer, tiny_models) -> None:
    loaded = tiny_models["bert"]
    params = {"head_importance": {"ablations": ["zero"], "layers": [1]}}  # widens at block 1
    hi = tiny_analyzer("bert").analyze(TEXT, methods=["head_importance"], params=params).methods["head_importance"]
    assert hi.metric == "final_state_change" and hi.mean is None and hi.zero.shape == (1, 4)
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        clean = loaded.model(ids).last_hidden_state[0].double()
        for head in range(4):
            out = ablate_copy(loaded, 1, head, None)(ids).last_hidden_state[0].double()
            ref = ((out - clean).norm(dim=-1) / clean.norm(dim=-1)).mean().item()
            assert hi.zero[0, head] == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_batch_size_does_not_change_the_answer(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("llama")
    one = analyzer.analyze(TEXT, methods=["head_importance"], params={"head_importance": {"batch_size": 1}})
    many = analyzer.analyze(TEXT, methods=["head_importance"], params={"head_importance": {"batch_size": 16}})
    a, b = one.methods["head_importance"], many.methods["head_importance"]
    np.testing.assert_allclose(a.zero, b.zero, atol=2e-5)
    np.testing.assert_allclose(a.mean, b.mean, atol=2e-5)
    assert (a.n_passes, b.n_passes) == (17, 2)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"ablations": []}, "params.head_importance.ablations"),
        ({"batch_size": -1}, "params.head_importance.batch_size"),
    ],
)
def test_bad_params_are_typed_errors(tiny_analyzer, params: dict, field: str) -> None:
    with pytest.raises(InvalidParamsError) as info:
        tiny_analyzer("gpt2").analyze(TEXT, methods=["head_importance"], params={"head_importance": params})
    assert info.value.field == field


def test_automatic_batch_size_fits_the_text(tiny_analyzer) -> None:
    from lmlens_attention.importance import auto_batch_size

    assert (auto_batch_size(15), auto_batch_size(512), auto_batch_size(5000)) == (64, 4, 1)
    hi = tiny_analyzer("gpt2").analyze(TEXT, methods=["head_importance"]).methods["head_importance"]
    assert hi.n_passes == 2  # 16 ablations of a short text: one pass beside the clean one


@pytest.fixture(scope="module")
def float64_models() -> dict[str, LoadedModel]:
    """Tiny models in float64 throughout, so central differences can be tight. transformers'
    LlamaRMSNorm computes in float32 whatever the model dtype: torch's RMSNorm (same formula)
    stands in for it."""
    from lmlens.testing import load_tiny

    models = {}
    for family in ("gpt2", "llama"):
        loaded = load_tiny(family)
        loaded.model.double()
        for name, module in list(loaded.model.named_modules()):
            if type(module).__name__ == "LlamaRMSNorm":
                norm = nn.RMSNorm(module.weight.shape[0], eps=module.variance_epsilon, dtype=torch.float64)
                with torch.no_grad():
                    norm.weight.copy_(module.weight)
                norm.weight.requires_grad_(False)
                parent, _, child = name.rpartition(".")
                setattr(loaded.model.get_submodule(parent) if parent else loaded.model, child, norm)
        models[family] = loaded
    return models


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_attribution_is_the_derivative_of_a_partial_ablation(float64_models, family: str) -> None:
    """mode "attribution" against central finite differences of the exact path: replacing a
    head's output h by h + eps * (h' - h) changes the loss by eps * estimate + O(eps^2)."""
    from lmlens import Need, Patch, run_forward
    from lmlens_attention.importance import head_attribution, next_token_loss

    loaded = float64_models[family]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    layers = [0, 1]
    est = head_attribution(loaded, ids, layers, ["zero", "mean"])
    assert est.metric == "next_token_loss" and est.n_passes == 1
    heads_out = run_forward(
        loaded, [Need(f"blocks.{layer}.attn.heads", name=str(layer)) for layer in layers], input_ids=ids
    )
    clean = float(next_token_loss(run_forward(loaded, [Need("logits")], input_ids=ids)["logits"], ids)[0])
    assert est.clean == pytest.approx(clean, rel=1e-10)

    def loss_with(layer: int, head: int, kind: str, eps: float) -> float:
        h = heads_out[str(layer)][0, :, head]  # [pos, d_head]
        target = torch.zeros_like(h) if kind == "zero" else h.mean(0, keepdim=True).expand_as(h)

        def partial(x: torch.Tensor, context: object) -> torch.Tensor:
            x = x.clone()
            x[0, :, head] = h + eps * (target - h)
            return x

        logits = run_forward(
            loaded, [Need("logits")], input_ids=ids, patches=[Patch(f"blocks.{layer}.attn.heads", partial)]
        )["logits"]
        logp = logits[0, :-1].double().log_softmax(-1)  # float64: next_token_loss rounds to float32
        return float(-logp.gather(-1, ids[0, 1:, None]).mean())

    eps = 1e-5
    for kind in ("zero", "mean"):
        for layer in layers:
            for head in range(loaded.info.n_heads):
                slope = (loss_with(layer, head, kind, eps) - loss_with(layer, head, kind, -eps)) / (2 * eps)
                assert est.effects[kind][layer, head] == pytest.approx(slope, rel=1e-4, abs=1e-7)
    assert np.abs(est.effects["zero"]).max() > 1e-4  # the estimates are not all zero


def test_attribution_mode_through_analyze(tiny_analyzer) -> None:
    params = {"head_importance": {"mode": "attribution"}}
    hi = tiny_analyzer("llama").analyze(TEXT, methods=["head_importance"], params=params).methods["head_importance"]
    assert hi.mode == "attribution" and hi.n_passes == 1 and hi.zero.shape == hi.mean.shape == (2, 4)
    exact = tiny_analyzer("llama").analyze(TEXT, methods=["head_importance"]).methods["head_importance"]
    assert exact.mode == "exact" and hi.clean == pytest.approx(exact.clean, abs=1e-5)
    with pytest.raises(InvalidParamsError) as info:
        tiny_analyzer("bert").analyze(TEXT, methods=["head_importance"], params=params)
    assert info.value.field == "params.head_importance.mode"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_chunked_head_loss_equals_the_loss_of_the_model_logits(tiny_models, monkeypatch, family: str) -> None:
    """The loss from the final norm's output, a few rows of logits at a time, against
    next_token_loss on the model's own logits (the path before the chunking)."""
    from lmlens import Need, run_forward
    from lmlens_attention import importance

    loaded = tiny_models[family]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    batch = torch.cat([ids, ids.roll(1, dims=1), ids.flip(1)])  # three different rows
    got = run_forward(loaded, [Need("final"), Need("logits")], input_ids=batch)
    reference = importance.next_token_loss(got["logits"], batch)  # [3]
    # row 0's targets for every row: the loss scores each row against the text
    expected = importance.next_token_loss(got["logits"], ids.expand(3, -1))
    per_row = (ids.shape[1] - 1) * loaded.info.vocab_size
    for chunk_rows in (1, 2, 3):
        monkeypatch.setattr(importance, "LOSS_CHUNK_ELEMENTS", chunk_rows * per_row)
        loss = importance.head_loss(loaded, ids)(got["final"])
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert float((reference - expected).abs().max()) > 1e-3  # the rows differ, so the check can fail


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_exact_equals_one_pass_per_ablation_on_the_logits(tiny_models, family: str) -> None:
    """The batched, per-layer, chunked-loss path against the plainest one: a pass per ablation
    that patches one head and scores the model's full logits with next_token_loss."""
    from lmlens import Need, Patch, run_forward
    from lmlens_attention.importance import head_importance, next_token_loss

    loaded = tiny_models[family]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    layers = [0, 1]
    got = head_importance(loaded, ids, layers, ["zero", "mean"], batch_size=5)
    needs = [Need(f"blocks.{layer}.attn.heads", name=str(layer)) for layer in layers]
    heads = run_forward(loaded, needs, input_ids=ids)
    clean = float(next_token_loss(run_forward(loaded, [Need("logits")], input_ids=ids)["logits"], ids)[0])
    assert got.clean == pytest.approx(clean, abs=1e-6)
    for layer in layers:
        for head in range(loaded.info.n_heads):
            for kind in ("zero", "mean"):
                fill = heads[str(layer)][0, :, head].mean(0) if kind == "mean" else 0.0

                def ablate(x: torch.Tensor, context: object, head: int = head, fill: object = fill) -> torch.Tensor:
                    x = x.clone()
                    x[:, :, head] = fill
                    return x

                logits = run_forward(
                    loaded, [Need("logits")], input_ids=ids, patches=[Patch(f"blocks.{layer}.attn.heads", ablate)]
                )["logits"]
                effect = float(next_token_loss(logits, ids)[0]) - clean
                assert got.effects[kind][layer, head] == pytest.approx(effect, abs=2e-6)
    assert got.n_passes == 1 + 4  # 16 ablations in passes of 5


def test_hybrid_is_exact_on_the_top_heads_and_the_estimate_elsewhere(tiny_models) -> None:
    from lmlens_attention.importance import head_attribution, head_hybrid, head_importance

    loaded = tiny_models["llama"]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    layers, kinds = [0, 1], ["zero", "mean"]
    exact = head_importance(loaded, ids, layers, kinds, batch_size=0)
    estimate = head_attribution(loaded, ids, layers, kinds)
    hybrid = head_hybrid(loaded, ids, layers, kinds, batch_size=0, top=3)
    assert hybrid.exact is not None and hybrid.clean == pytest.approx(exact.clean, abs=1e-6)
    for kind in kinds:
        mask = hybrid.exact[kind]
        assert mask.sum() == 3
        # the three largest estimates by size are the ablated ones
        assert np.abs(estimate.effects[kind])[mask].min() >= np.abs(estimate.effects[kind])[~mask].max()
        np.testing.assert_allclose(hybrid.effects[kind][mask], exact.effects[kind][mask], atol=2e-6)
        np.testing.assert_array_equal(hybrid.effects[kind][~mask], estimate.effects[kind][~mask])
        assert np.abs(exact.effects[kind] - estimate.effects[kind])[mask].max() > 1e-5  # exact != estimate there
    assert hybrid.n_passes == 1 + 1 + 1  # attribution; the clean pass; one pass for the 6 chosen ablations
    every = head_hybrid(loaded, ids, layers, kinds, batch_size=0, top=8)
    for kind in kinds:
        assert every.exact is not None and every.exact[kind].all()
        np.testing.assert_allclose(every.effects[kind], exact.effects[kind], atol=2e-6)


def test_the_loss_gives_the_lm_head_a_contiguous_input(tiny_models) -> None:
    from lmlens import Need, run_forward
    from lmlens_attention.importance import head_loss

    loaded = tiny_models["llama"]
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    final = run_forward(loaded, [Need("final")], input_ids=ids.expand(4, -1))["final"]
    head = loaded.model.get_submodule(loaded.arch.lm_head)
    seen: list[bool] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    try:
        head_loss(loaded, ids)(final)
    finally:
        handle.remove()
    assert seen and all(seen)


def test_hybrid_mode_through_analyze_marks_its_exact_heads(tiny_analyzer) -> None:
    from lmlens.wire import to_json

    analyzer = tiny_analyzer("llama")
    exact = analyzer.analyze(TEXT, methods=["head_importance"]).methods["head_importance"]
    params = {"head_importance": {"mode": "hybrid", "top": 3}}
    result = analyzer.analyze(TEXT, methods=["head_importance"], params=params)
    hi = result.methods["head_importance"]
    assert hi.mode == "hybrid" and exact.exact_zero is None
    for kind in ("zero", "mean"):
        mask = np.array(getattr(hi, f"exact_{kind}"))
        assert mask.shape == (2, 4) and mask.sum() == 3
        np.testing.assert_allclose(getattr(hi, kind)[mask], getattr(exact, kind)[mask], atol=1e-5)
    assert b'"exact_zero"' in to_json(result)  # the masks travel on the wire
    with pytest.raises(InvalidParamsError) as info:
        tiny_analyzer("bert").analyze(TEXT, methods=["head_importance"], params=params)
    assert info.value.field == "params.head_importance.mode"
