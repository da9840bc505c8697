"""Labels come from the model's real greedy output; signals match a direct recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lmlens_failure.labels import default_check, greedy_continuations, is_degenerate, run_examples, tokenize
from lmlens_failure.tasks import Example, make_examples, register_task, unregister_task

PROMPTS = ["a", "hello there", "12 + 7 =", "The capital of France is", "x y z w v u t"]


def reference_greedy(loaded, prompt: str, n: int) -> list[int]:
    """Plain greedy decoding: the whole sequence through the model at every step, no cache, no padding."""
    ids = torch.tensor([tokenize(loaded, prompt)])
    out: list[int] = []
    eos = loaded.tokenizer.eos_token_id
    with torch.no_grad():
        for _ in range(n):
            tok = int(loaded.model(input_ids=ids).logits[0, -1].argmax())
            out.append(tok)
            if tok == eos or "\n" in loaded.tokenizer.decode([tok]):
                break
            ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_cached_greedy_matches_plain_greedy(tiny_models, family: str) -> None:
    loaded = tiny_models[family]
    got = greedy_continuations(loaded, [tokenize(loaded, p) for p in PROMPTS], max_new_tokens=6)
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        assert tokens == reference_greedy(loaded, prompt, 6), prompt


def test_labels_follow_what_the_model_said(tiny_models) -> None:
    loaded = tiny_models["llama"]
    said = {p: loaded.tokenizer.decode(reference_greedy(loaded, p, 8), skip_special_tokens=True) for p in PROMPTS}
    said = {p: s.split("\n", 1)[0].strip() for p, s in said.items()}
    usable = [p for p in PROMPTS if said[p]]
    assert usable, "the tiny model said nothing on any prompt"
    right = [Example(prompt=p, answer=said[p], task="known", family="known") for p in usable]
    wrong = [Example(prompt=p, answer=said[p] + "Q", task="known", family="known") for p in usable]
    opened = [Example(prompt=p, answer=None, task="open", family="open") for p in PROMPTS]
    records, sig = run_examples(loaded, right + wrong + opened, max_new_tokens=8, batch_size=4)
    n = len(usable)
    assert [r.failed for r in records[:n]] == [0] * n
    assert [r.failed for r in records[n : 2 * n]] == [1] * n
    for r in records[:n]:
        assert said[r.prompt].startswith(r.output)  # what it said, up to where the answer was decided
    for r, p in zip(records[2 * n :], PROMPTS, strict=True):
        assert r.output == said[p]  # open prompts: the whole first line
        assert r.failed == int(r.degenerate)
    assert len(sig) == len(records)


def test_signals_match_a_float64_recomputation_and_ignore_padding(tiny_models) -> None:
    from lmlens_failure.labels import signals_for

    loaded = tiny_models["llama"]
    ids = [tokenize(loaded, p) for p in PROMPTS]
    batched = signals_for(loaded, ids, batch_size=5)
    for i, row in enumerate(ids):
        single = signals_for(loaded, [row], batch_size=1)
        np.testing.assert_allclose(batched.logit[i], single.logit[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched.attn[i], single.attn[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched.hidden[i], single.hidden[0], rtol=1e-4, atol=1e-4)
    # independent reference: the model's own logits and attention weights, in float64
    row = ids[3]
    model = loaded.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([row]), output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    p = torch.softmax(out.logits[0, -1].double(), -1).numpy()
    top = np.sort(p)[::-1]
    expected = [top[0], -(p * np.log(p)).sum(), top[0] - top[1], top[:5].sum()]
    np.testing.assert_allclose(batched.logit[3], expected, rtol=1e-5, atol=1e-6)
    n = len(row)
    for layer, att in enumerate(out.attentions):
        a = att[0, :, -1, :].double().numpy()  # [head, k]
        sink = a[:, 0]
        entropy = -(a * np.log(np.where(a > 0, a, 1))).sum(-1)
        lookback = a[:, 1 : max(1, n - 4)].sum(-1) / a[:, 1:].sum(-1)
        np.testing.assert_allclose(batched.attn[3, layer], np.stack([lookback, entropy, sink]), rtol=1e-4, atol=1e-5)
    assert batched.n_tokens[3] == n


def test_default_check_and_degeneracy() -> None:
    assert default_check(" Paris.", "Paris")
    assert default_check("paris", "Paris")
    assert not default_check("195", "19")
    assert not default_check("Parisian", "Paris")
    assert default_check("a  b c", "a b c")
    assert is_degenerate("   ", [1, 2])
    assert is_degenerate("the the the the", [5, 5, 5, 5])
    assert is_degenerate("abababab", [1, 2, 1, 2, 1, 2])
    assert not is_degenerate("1111", [1, 2, 3])


def test_tasks_are_reproducible_and_users_can_add_theirs() -> None:
    a = make_examples(24, seed=3)
    b = make_examples(24, seed=3)
    assert [e.prompt for e in a] == [e.prompt for e in b]
    assert {e.family for e in a} == {"arithmetic", "copy", "reverse", "counting", "sequence", "facts"}
    for e in a:
        if e.task.startswith("arithmetic"):
            left = e.prompt.rsplit("\n", 1)[-1].rstrip(" =")
            assert str(eval(left)) == e.answer  # the answer is right (the expression is ours)
    register_task("plural", lambda rng: Example(prompt="one mouse, two", answer="mice"), family="words")
    try:
        mine = make_examples(3, ["words"])
        assert [(e.task, e.family, e.answer) for e in mine] == [("plural", "words", "mice")] * 3
    finally:
        unregister_task("plural")
    from lmlens.errors import InvalidParamsError

    with pytest.raises(InvalidParamsError, match="unknown task"):
        make_examples(3, ["nope"])


def test_generation_stops_when_its_request_is_cancelled(tiny_models) -> None:
    from lmlens import cancel

    loaded = tiny_models["gpt2"]
    token = cancel.CancelToken()
    token.cancel("client left")
    with cancel.bound(token), pytest.raises(cancel.Cancelled, match="client left"):
        greedy_continuations(loaded, [tokenize(loaded, "abc")], max_new_tokens=4, stop=lambda i, toks: False)
