"""Padded batches: grouping, padding, and results equal to one text at a time."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch

from lmlens import Analyzer, Method, Need, Result, wire
from lmlens.batching import pad, pad_token_id, plan_batches
from lmlens.cache import MemoryCache
from lmlens.errors import EmptyTextError
from lmlens.hookspecs import hookimpl
from lmlens.plugins import PluginHost
from lmlens.settings import Settings

# one token (gpt2/llama byte tokenizer), a few, and the longest; BERT adds [CLS] and [SEP]
TEXTS = ["a", "The cat sat.", "hi there", "A much longer sentence about nothing in particular.", "xy", "ok"]


class DumpParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    logits: bool = True


class Dump(Result, frozen=True, kw_only=True, tag="dump"):
    arrays: dict[str, wire.Float32Array]


class DumpSolo(Result, frozen=True, kw_only=True, tag="dump_solo"):
    arrays: dict[str, wire.Float32Array]


def _dump_points(n_layers: int, logits: bool) -> list[str]:
    points = ["embed", "final"] + (["logits"] if logits else [])
    for i in range(n_layers):
        points += [f"blocks.{i}.{p}" for p in ("resid_pre", "attn.pattern", "attn.heads", "attn.out",
                                                "mlp.out", "resid_post")]
    return points


def _dump_needs(info, params: DumpParams) -> list[Need]:
    points = _dump_points(info.n_layers, params.logits and info.has_lm_head)
    # raw tensors, and a reducer that sums over positions (padding would change it)
    return [Need(p) for p in points] + [Need(p, lambda t: t.sum(dim=1), name=f"sum.{p}") for p in points]


def _dump_run(trace, params: DumpParams) -> Dump:
    return Dump(arrays={k: v.float().numpy(force=True) for k, v in trace.activations.items()})


def _dump_solo_run(trace, params: DumpParams) -> DumpSolo:
    return DumpSolo(arrays={k: v.float().numpy(force=True) for k, v in trace.activations.items()})


DUMP = Method(name="dump", description="every hook point, raw and summed", params=DumpParams, result=Dump,
              needs=_dump_needs, run=_dump_run, batchable=True)
DUMP_SOLO = Method(name="dump_solo", description="the same, not batchable", params=DumpParams,
                   result=DumpSolo, needs=_dump_needs, run=_dump_solo_run)


class Dumps:
    @hookimpl
    def register_methods(self, register):
        register(DUMP)
        register(DUMP_SOLO)


@pytest.fixture
def make_analyzer(tiny_models, tmp_path):
    host = PluginHost()
    host.register(Dumps(), "dumps")

    def make(family: str, cache: bool = False) -> Analyzer:
        settings = Settings(cache_dir=str(tmp_path), max_sequence_length=512)
        return Analyzer(tiny_models[family], settings=settings, plugins=host,
                        cache=MemoryCache(100) if cache else None)

    return make


class Passes:
    """Counts forward passes of a model's base."""

    def __init__(self, analyzer: Analyzer):
        self.base = analyzer.model.base_model
        self.shapes: list[tuple[int, ...]] = []

    def __enter__(self):
        self.handle = self.base.register_forward_pre_hook(self._seen, with_kwargs=True)
        return self

    def _seen(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.shapes.append(tuple(ids.shape))

    def __exit__(self, *exc):
        self.handle.remove()


def test_plan_batches_groups_by_length_within_limits() -> None:
    lengths = [5, 1, 40, 7, 6, 2, 300, 3, 9]
    batches = plan_batches(lengths, batch_size=3, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 100
    assert [300 in [lengths[i] for i in b] for b in batches].count(True) == 1
    assert [lengths[i] for i in batches[0]] == [1, 2, 3]  # the shortest together
    assert [b for b in batches if 300 in [lengths[i] for i in b]] == [[6]]  # over max_tokens: alone
    assert plan_batches([4, 4, 4], batch_size=1) == [[0], [1], [2]]


def test_pad_right_pads_with_a_mask(tiny_models) -> None:
    ids, mask = pad([torch.tensor([[7, 8, 9]]), torch.tensor([[5]])], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [5, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pad_token_falls_back_to_end_of_text(tiny_models) -> None:
    loaded = tiny_models["gpt2"]
    tokenizer = loaded.tokenizer
    assert pad_token_id(loaded) == tokenizer.pad_token_id
    saved = tokenizer.pad_token
    tokenizer.pad_token = None  # SmolLM2 and GPT-2 ship without one
    try:
        assert tokenizer.pad_token_id is None
        assert pad_token_id(loaded) == tokenizer.eos_token_id
    finally:
        tokenizer.pad_token = saved


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_padded_batch_equals_one_text_at_a_time(make_analyzer, family) -> None:
    analyzer = make_analyzer(family)
    alone = [analyzer.analyze(t, methods=["dump"]) for t in TEXTS]
    with Passes(analyzer) as passes:
        batched = analyzer.analyze_batch(TEXTS, methods=["dump"], batch_size=4)
    assert len(passes.shapes) == 2  # six texts in two padded passes
    assert sorted(s[0] for s in passes.shapes) == [2, 4]
    lengths = [len(r.tokens) for r in alone]
    assert min(lengths) == (3 if family == "bert" else 1)
    assert max(s[1] for s in passes.shapes) == max(lengths)  # the longest text set the padding
    for a, b, text in zip(alone, batched, TEXTS, strict=True):
        assert b.text == text and b.tokens == a.tokens
        left, right = a.methods["dump"].arrays, b.methods["dump"].arrays
        assert set(left) == set(right)
        for key in left:
            assert left[key].shape == right[key].shape, key
            np.testing.assert_allclose(right[key], left[key], rtol=1e-5, atol=1e-5, err_msg=f"{text!r} {key}")
        n = len(a.tokens)
        pattern = right["blocks.0.attn.pattern"]  # [1, head, n, n]: no weight left on padding
        assert pattern.shape[-2:] == (n, n)
        np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)


def test_a_method_that_opts_out_runs_text_by_text(make_analyzer) -> None:
    analyzer = make_analyzer("llama")
    with Passes(analyzer) as passes:
        batched = analyzer.analyze_batch(TEXTS, methods=["dump_solo"], batch_size=4)
    assert passes.shapes == [(1, len(r.tokens)) for r in batched]  # one unpadded pass per text, in order
    with Passes(analyzer) as passes:
        mixed = analyzer.analyze_batch(TEXTS[:2], methods=["dump", "dump_solo"], batch_size=4)
    assert len(passes.shapes) == 2  # one method opts out: the whole request runs alone
    for a, b in zip(batched[:2], mixed, strict=True):
        for key, value in a.methods["dump_solo"].arrays.items():
            np.testing.assert_array_equal(b.methods["dump_solo"].arrays[key], value)


def test_analyze_batch_reads_and_fills_the_cache(make_analyzer) -> None:
    analyzer = make_analyzer("gpt2", cache=True)
    first = analyzer.analyze_batch(TEXTS[:3], methods=["dump"], params={"dump": {"logits": False}})
    seen: list[int] = []
    with Passes(analyzer) as passes:
        again = analyzer.analyze_batch(TEXTS[:3], methods=["dump"], params={"dump": {"logits": False}},
                                       on_result=lambda i, r: seen.append(i))
    assert passes.shapes == [] and sorted(seen) == [0, 1, 2]
    assert all(r.cached for r in again) and not any(r.cached for r in first)
    assert analyzer.analyze(TEXTS[1], methods=["dump"], params={"dump": {"logits": False}}).cached


def test_a_padded_pass_holds_no_more_tokens_than_one_text_may(make_analyzer) -> None:
    analyzer = make_analyzer("gpt2")  # MAX_SEQUENCE_LENGTH 512 here
    texts = ["x" * 100] * 8
    with Passes(analyzer) as passes:
        analyzer.analyze_batch(texts, methods=["dump"], batch_size=8, max_tokens=10_000)
    assert passes.shapes == [(5, 100), (3, 100)]


def test_analyze_batch_refuses_before_any_pass(make_analyzer) -> None:
    analyzer = make_analyzer("gpt2")
    with Passes(analyzer) as passes, pytest.raises(EmptyTextError) as caught:
        analyzer.analyze_batch(["fine", "also fine", "  "], methods=["dump"])
    assert caught.value.field == "texts[2]"
    assert passes.shapes == []


def test_analyze_batch_job_batches_and_resumes(make_analyzer) -> None:
    from lmlens.default_plugins.jobs import ANALYZE_BATCH, AnalyzeBatchParams

    analyzer = make_analyzer("llama")

    class Context:
        def __init__(self, done):
            self.items = dict(done)
            self.analyzer = analyzer
            self.events: list[float] = []

        def progress(self, fraction, message):
            self.events.append(fraction)

        def done_items(self):
            return dict(self.items)

        def item_done(self, index, value):
            self.items[index] = value

    params = AnalyzeBatchParams(texts=TEXTS, methods=["dump"], params={"dump": {"logits": False}}, batch_size=8)
    first = Context({})
    with Passes(analyzer) as passes:
        full = ANALYZE_BATCH.run(params, first)
    assert len(passes.shapes) == 1 and passes.shapes[0][0] == len(TEXTS)
    assert sorted(first.events) == first.events and first.events[-1] == 1.0
    resumed = Context({i: first.items[i] for i in (0, 2, 3)})
    with Passes(analyzer) as passes:
        again = ANALYZE_BATCH.run(params, resumed)
    assert passes.shapes[0][0] == 3  # only the three texts left
    for a, b, text in zip(again, full, TEXTS, strict=True):
        alone = analyzer.analyze(text, methods=["dump"], params={"dump": {"logits": False}})
        assert a["tokens"] == b["tokens"]
        for key, value in alone.methods["dump"].arrays.items():
            got = wire.convert(a["methods"]["dump"], Dump).arrays[key]
            np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [256, 1])
def test_analyze_batch_job_names_the_bad_text_by_its_job_index(make_analyzer, monkeypatch, window) -> None:
    from lmlens.default_plugins import jobs
    from lmlens.default_plugins.jobs import ANALYZE_BATCH, AnalyzeBatchParams

    monkeypatch.setattr(jobs, "WINDOW", window)

    analyzer = make_analyzer("gpt2")

    class Context:
        def progress(self, fraction, message):
            pass

        def done_items(self):
            return {0: b"", 1: b""}  # the first two were done by an earlier attempt

        def item_done(self, index, value):
            recorded.append(index)

    recorded: list[int] = []
    Context.analyzer = analyzer
    params = AnalyzeBatchParams(texts=["a", "b", "c", ""], methods=["dump"])
    with pytest.raises(EmptyTextError) as caught:
        ANALYZE_BATCH.run(params, Context())
    assert caught.value.field == "texts[3]"
    assert recorded == ([] if window == 256 else [2])  # one window at a time: "c" finished first


@pytest.mark.parametrize("size", [0, 65, "8"])
def test_analyze_batch_job_refuses_a_bad_batch_size_at_submission(make_analyzer, size) -> None:
    from lmlens.errors import InvalidParamsError

    with pytest.raises(InvalidParamsError, match="batch_size"):
        make_analyzer("gpt2").submit("analyze_batch", {"texts": ["a"], "batch_size": size})
