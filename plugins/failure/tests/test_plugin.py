"""The plugin end to end on tiny models: verbs, artifact round trip, refusals, method, route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmlens import Analyzer, LmlensError
from lmlens.settings import Settings

TEXTS_FAIL = [f"{i * 7919 % 1000} + {i * 104729 % 100} = {i % 13}" for i in range(24)]
TEXTS_OK = [
    f"the {w} sat on the {v}"
    for w, v in zip(
        ["cat", "dog", "owl", "fox", "bee", "ant", "elk", "emu", "yak", "gnu", "cow", "pig"] * 2,
        ["mat", "rug", "bed", "box", "log", "hat", "cup", "map", "pen", "jar", "bag", "net"] * 2,
        strict=True,
    )
]
PAIRS = [(t, 1) for t in TEXTS_FAIL] + [(t, 0) for t in TEXTS_OK]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("failure-artifacts")
    old = os.environ.get("LMLENS_ARTIFACT_DIR")
    os.environ["LMLENS_ARTIFACT_DIR"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("LMLENS_ARTIFACT_DIR", None)
        else:
            os.environ["LMLENS_ARTIFACT_DIR"] = old


@pytest.fixture(scope="module")
def gpt2(tiny_models, plugin_host, store_dir: Path, tmp_path_factory) -> Analyzer:
    settings = Settings(cache_dir=str(tmp_path_factory.mktemp("cache")), default_model="tiny-gpt2")
    return Analyzer(tiny_models["gpt2"], settings=settings, plugins=plugin_host)


@pytest.fixture(scope="module")
def trained(gpt2: Analyzer):
    return gpt2.train_failure_predictor(PAIRS, name="tiny-test", evaluate=True)


def test_training_stores_an_artifact_with_its_evaluation(trained, gpt2: Analyzer) -> None:
    assert trained.name == "tiny-test" and trained.n == 48 and trained.failure_rate == 0.5
    infos = {i.name: i for i in gpt2.artifacts("failure_predictor")}
    assert "tiny-test" in infos
    metrics = infos["tiny-test"].metrics
    assert set(metrics["random_split"]["overall"]) >= {"predictor", "majority", "one_minus_max_prob"}
    assert metrics["random_split"]["overall"]["predictor"]["auroc"] > 0.8  # two very different kinds of text
    art = gpt2.load_artifact("failure_predictor", "tiny-test")
    assert all(isinstance(v, np.ndarray) for v in art.tensors.values())
    assert art.provenance["data_size"] == 48


def test_method_result_by_attribute_and_key_matches_the_predictor(trained, gpt2: Analyzer, tmp_path: Path) -> None:
    from lmlens_failure.api import predictor_from_artifact
    from lmlens_failure.labels import signals_for, tokenize

    text = TEXTS_FAIL[0]
    result = gpt2.predict_failure_probability(text, threshold=0.3, predictor="tiny-test")
    assert result["failure_probability"] == result.failure_probability
    assert result.label == ("failure" if result.failure_probability >= 0.3 else "success")
    assert result.threshold == 0.3 and len(result.contributions) == 5
    top = result.contributions[0]
    assert top["value"] == top.value and top.direction in ("raises", "lowers")
    assert abs(top.contribution) == max(abs(c.contribution) for c in result.contributions)
    # the same number from the training-side path (batched signals, numpy predictor)
    predictor = predictor_from_artifact(gpt2.load_artifact("failure_predictor", "tiny-test"))
    sig = signals_for(gpt2.model, [tokenize(gpt2.model, text)])
    assert result.failure_probability == pytest.approx(float(predictor.predict_proba(sig)[0]), abs=1e-5)
    # via analyze, with the panel
    analysis = gpt2.analyze(text, ["failure"], {"failure": {"predictor": "tiny-test"}})
    gpt2.visualize(analysis, "failure", save_path=str(tmp_path / "failure.html"))
    assert "failure probability" in (tmp_path / "failure.html").read_text()


def test_round_trip_in_another_process(trained, gpt2: Analyzer, store_dir: Path) -> None:
    texts = [TEXTS_FAIL[1], TEXTS_OK[1], "something else entirely"]
    here = [gpt2.predict_failure_probability(t, predictor="tiny-test").failure_probability for t in texts]
    code = (
        "import json, sys\n"
        "from lmlens import Analyzer\n"
        "a = Analyzer('tiny-gpt2')\n"
        "texts = json.loads(sys.argv[1])\n"
        "print(json.dumps([a.predict_failure_probability(t, predictor='tiny-test').failure_probability "
        "for t in texts]))\n"
    )
    env = {**os.environ, "LMLENS_ARTIFACT_DIR": str(store_dir), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(texts)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    there = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(there, here, atol=1e-6)


def test_a_predictor_for_another_model_is_refused(trained, tiny_models, plugin_host, gpt2: Analyzer) -> None:
    llama = Analyzer(tiny_models["llama"], settings=gpt2.settings, plugins=plugin_host)
    with pytest.raises(LmlensError) as err:
        llama.analyze("hello", ["failure"], {"failure": {"predictor": "tiny-test"}})
    assert err.value.code == "artifact_model_mismatch"
    with pytest.raises(LmlensError) as err:
        llama.evaluate_failure_predictor(PAIRS, predictor="tiny-test")
    assert err.value.code == "artifact_model_mismatch"
    with pytest.raises(LmlensError) as err:  # no predictor for this model: the shipped default is refused
        llama.predict_failure_probability("hello")
    assert err.value.code == "artifact_model_mismatch" and "train_failure_predictor" in err.value.message


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ([(t, 1) for t in TEXTS_FAIL], "training_data_one_class"),
        (PAIRS[:5] + PAIRS[-5:], "training_data_too_few"),
        ([(t, 1) for t in TEXTS_FAIL[:20]] + [(t, 0) for t in TEXTS_OK[:3]], "training_data_too_few"),
        ([*PAIRS[:-1], ("x" * 5000, 0)], "text_too_long"),
        ([*PAIRS[:-1], ("fine", 2)], "invalid_training_data"),
        ([*PAIRS[:-1], ("", 0)], "invalid_training_data"),
        ("not a list", "invalid_training_data"),
    ],
)
def test_bad_training_data_is_refused_before_any_model_work(gpt2: Analyzer, data, code: str) -> None:
    small = Analyzer(
        gpt2.model,
        settings=Settings(cache_dir=str(gpt2.settings.cache_path), max_text_chars=1000),
        plugins=gpt2.plugins,
    )
    with pytest.raises(LmlensError) as err:
        small.train_failure_predictor(data, save=False)
    assert err.value.code == code, err.value.message


def test_training_needs_data_or_generation(gpt2: Analyzer) -> None:
    with pytest.raises(LmlensError) as err:
        gpt2.train_failure_predictor()
    assert err.value.code == "invalid_training_data"


def test_route_predicts_like_the_verb(trained, gpt2: Analyzer) -> None:
    pytest.importorskip("lmlens_http", reason="the route needs lmlens-http")
    from lmlens_http import create_app
    from lmlens_http.testing import running, tiny_config

    text = TEXTS_OK[2]
    expected = gpt2.predict_failure_probability(text, predictor="tiny-test").failure_probability
    with running(create_app(tiny_config())) as server, server.client() as client:
        ok = client.post("/predict/failure", json={"text": text, "threshold": 0.9, "predictor": "tiny-test"})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["failure_probability"] == pytest.approx(expected, abs=1e-6)
        assert body["label"] == ("failure" if expected >= 0.9 else "success")
        bad = client.post("/predict/failure", json={"text": text, "threshold": 2})
        assert bad.status_code == 422
        missing = client.post("/predict/failure", json={"text": text, "predictor": "nope"})
        assert missing.status_code == 404 and missing.json()["code"] == "artifact_not_found"


def test_train_job_reports_progress_and_saves(gpt2: Analyzer) -> None:
    from lmlens_failure.plugin import TrainParams, run_train_job

    assert gpt2.plugins.jobs["failure.train"].params is TrainParams

    class Context:
        analyzer = gpt2

        def __init__(self) -> None:
            self.seen: list[float] = []

        def progress(self, fraction: float, message: str) -> None:
            self.seen.append(fraction)

    context = Context()
    params = TrainParams(training_data=[(t, y) for t, y in PAIRS], name="tiny-job", evaluate=False)
    out = run_train_job(params, context)
    assert out["name"] == "tiny-job" and out["n"] == 48
    assert context.seen and context.seen[-1] == 1.0 and context.seen == sorted(context.seen)
    assert "tiny-job" in {i.name for i in gpt2.artifacts("failure_predictor")}


def test_cli_train_predict_evaluate(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin_host
) -> None:
    from click.testing import CliRunner

    from lmlens.cli import cli

    monkeypatch.setenv("LMLENS_CACHE_DIR", str(tmp_path))
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(PAIRS))
    plugin_host.pm.hook.register_commands(cli=cli)
    runner = CliRunner()

    def invoke(args: list[str]) -> Any:
        return runner.invoke(cli, args, obj={"host": plugin_host})

    trained = invoke(
        ["failure", "train", "--data", str(data), "--model", "tiny-llama", "--name", "cli-test", "--no-evaluate"]
    )
    assert trained.exit_code == 0, trained.output
    assert "saved failure_predictor 'cli-test'" in trained.output
    predicted = invoke(["failure", "predict", TEXTS_OK[0], "--model", "tiny-llama", "--json"])
    assert predicted.exit_code == 0, predicted.output
    body = json.loads(predicted.output)
    assert body["predictor"] == "cli-test" and 0.0 <= body["failure_probability"] <= 1.0
    evaluated = invoke(["failure", "evaluate", "--data", str(data), "--model", "tiny-llama", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert report["n"] == 48 and set(report["overall"]) == {
        "predictor",
        "majority",
        "one_minus_max_prob",
        "one_minus_max_prob_platt",
    }
    refused = invoke(["failure", "predict", "hello", "--model", "tiny-bert"])
    assert refused.exit_code == 2 and "invalid_params" in refused.output  # an encoder has no next token


def test_generation_resumes_from_its_checkpoint(gpt2: Analyzer, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmlens_failure import api, labels

    calls: list[int] = []
    real = labels.run_examples

    def counting(loaded: Any, batch: Any, **kwargs: Any) -> Any:
        calls.append(len(batch))
        return real(loaded, batch, **kwargs)

    monkeypatch.setattr(labels, "run_examples", counting)

    class Interrupted(Exception):
        pass

    def interrupt(fraction: float, message: str) -> None:
        raise Interrupted  # the worker dies after the first chunk

    with pytest.raises(Interrupted):
        api.generate_resumable(gpt2, gpt2.model, 8, ["copy"], 0, "resume-test", interrupt, chunk=4)
    assert calls == [4]
    resumed = api.generate_resumable(gpt2, gpt2.model, 8, ["copy"], 0, "resume-test", None, chunk=4)
    assert calls == [4, 4]  # only the missing chunk ran
    whole = api.generate_resumable(gpt2, gpt2.model, 8, ["copy"], 0, "resume-other", None, chunk=8)
    assert [(r.prompt, r.output, r.failed) for r in resumed.records] == [
        (r.prompt, r.output, r.failed) for r in whole.records
    ]
    np.testing.assert_allclose(resumed.signals.logit, whole.signals.logit, rtol=1e-5)
