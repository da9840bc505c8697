"""The plugin as users meet it: entry point, CLI, wire round trips."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from lmlens import wire
from lmlens.cli import cli
from lmlens_importance import ImportanceResult


def test_entry_point_lists_the_method(plugin_host):
    info = {i.name: i for i in plugin_host.infos()}["importance"]
    assert info.error is None and info.dist == "lmlens-importance"
    assert info.methods == ["importance"]
    assert "register_panels" in info.hooks


def test_needs_nothing_from_the_shared_pass(plugin_host, tiny_models):
    from lmlens_importance.params import ImportanceParams

    method = plugin_host.methods["importance"]
    assert list(method.needs(tiny_models["gpt2"].info, ImportanceParams())) == []


def test_cli_plugins_and_analyze(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLENS_CACHE_DIR", str(tmp_path))
    runner = CliRunner()
    listed = runner.invoke(cli, ["plugins", "--json"], obj={})
    assert listed.exit_code == 0
    assert "importance" in {p["name"] for p in json.loads(listed.output)}
    out = tmp_path / "r.json"
    ran = runner.invoke(
        cli,
        [
            "analyze",
            "The cat sat.",
            "-m",
            "importance",
            "--model",
            "tiny-gpt2",
            "-p",
            "importance.method=gradient_x_input",
            "-o",
            str(out),
        ],
        obj={},
    )
    assert ran.exit_code == 0, ran.output
    body = json.loads(out.read_bytes())["methods"]["importance"]
    assert body["kind"] == "importance" and body["method"] == "gradient_x_input"
    bad = runner.invoke(cli, ["analyze", "x", "-m", "importance", "--model", "tiny-bert"], obj={})
    assert bad.exit_code == 2 and "invalid_params" in bad.output


def test_result_round_trips_through_json_and_msgpack(tiny_analyzer):
    result = tiny_analyzer("gpt2").analyze("The cat sat.", methods=["importance"])
    typed = wire.result_type([ImportanceResult])
    for encode, decode in ((wire.to_json, wire.from_json), (wire.to_msgpack, wire.from_msgpack)):
        back = decode(encode(result), typed).methods["importance"]
        found = result.methods["importance"]
        assert isinstance(back, ImportanceResult)
        assert np.allclose(back.scores, found.scores) and back.words == found.words
        assert back.convergence == found.convergence
        assert np.allclose(back.faithfulness.deletion_curve, found.faithfulness.deletion_curve)


def test_token_scores_carry_offsets(tiny_analyzer):
    result = tiny_analyzer("gpt2").analyze(
        "The cat sat.", methods=["importance"], params={"importance": {"method": "gradient"}}
    )
    found = result.methods["importance"]
    assert [(t.start, t.end, t.text) for t in found.tokens] == [(t.start, t.end, t.text) for t in result.tokens]
    assert max(abs(t.normalized) for t in found.tokens) == 1.0
    assert all(t.score >= 0 for t in found.tokens)  # saliency is a norm


def test_importance_command_prints_and_saves(tmp_path, monkeypatch):
    import click

    from lmlens_importance import register_commands

    monkeypatch.setenv("LMLENS_CACHE_DIR", str(tmp_path))
    group = click.Group()
    register_commands(cli=group)
    runner = CliRunner()
    picture = tmp_path / "p.html"
    ran = runner.invoke(
        group,
        [
            "importance",
            "The cat sat.",
            "--model",
            "tiny-llama",
            "--method",
            "integrated_gradients",
            "--steps",
            "4",
            "-p",
            "tolerance=0.001",
            "--save",
            str(picture),
        ],
    )
    assert ran.exit_code == 0, ran.output
    assert "UNRELIABLE" in ran.output and "faithfulness" in ran.output
    assert "UNRELIABLE" in picture.read_text()
    auto = runner.invoke(group, ["importance", "The cat sat.", "--model", "tiny-llama"])
    assert auto.exit_code == 0 and auto.output.startswith("occlusion") and "RMSNorm" in auto.output
    assert "UNRELIABLE" not in auto.output and "ERASER (deleted, probability) AOPC" in auto.output
    bad = runner.invoke(group, ["importance", "x", "--model", "tiny-bert"])
    assert bad.exit_code == 2 and "other_text" in bad.output


def test_scores_stitch_onto_long_documents(tiny_analyzer) -> None:
    import numpy as np

    analyzer = tiny_analyzer("llama")
    text = "Which words matter here? " * 4
    params = {"importance": {"method": "gradient", "target": "loss", "faithfulness": False}}
    single = analyzer.analyze(text, methods=["importance"], params=params).methods["importance"]
    document = analyzer.analyze_efficient(text, methods=["importance"], params=params, max_length=256)
    np.testing.assert_allclose(document.per_token["importance"]["scores"], single.scores, rtol=1e-5, atol=1e-8)
    estimate = analyzer.estimate_processing_requirements(text, ["importance"], params)
    assert 0 < estimate.memory_estimate_gb.gradients_gb < 0.01  # one backward pass of a tiny model
