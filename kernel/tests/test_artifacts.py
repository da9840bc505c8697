"""Fitted artifacts: save, list, load in another process, fingerprints, atomic writes, cache keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest

from lmlens import (
    Analyzer,
    Artifact,
    ArtifactModelMismatchError,
    ArtifactNotFoundError,
    ArtifactStore,
    InvalidParamsError,
    Method,
    Result,
    hookimpl,
    model_fingerprint,
)
from lmlens.artifacts import write_artifact
from lmlens.cache import MemoryCache
from lmlens.plugins import PluginHost
from lmlens.settings import Settings


def make(loaded, name: str = "probe", scale: float = 1.0) -> Artifact:
    return Artifact(
        kind="probe",
        name=name,
        model=model_fingerprint(loaded),
        model_name=loaded.name,
        points=["blocks.1.resid_post"],
        config={"layer": 1, "note": "test"},
        tensors={"w": (np.arange(12, dtype=np.float32).reshape(3, 4) * scale)},
        metrics={"auroc": 0.9},
    )


def test_fingerprint_tells_models_apart_and_is_stable(tiny_models) -> None:
    prints = {family: model_fingerprint(loaded) for family, loaded in tiny_models.items()}
    assert len(set(prints.values())) == 3
    assert model_fingerprint(tiny_models["gpt2"]) == prints["gpt2"]  # memoised, same value


def test_save_list_load_delete(tmp_path: Path, tiny_models) -> None:
    store = ArtifactStore(tmp_path)
    info = store.save(make(tiny_models["gpt2"]))
    assert info.kind == "probe" and info.content_hash and not info.builtin
    assert info.provenance["versions"]["lmlens"] and info.provenance["created"]
    assert [i.name for i in store.list()] == ["probe"]
    assert store.list(kind="sae") == []
    assert store.list(model=model_fingerprint(tiny_models["llama"])) == []
    back = store.load("probe", "probe")
    np.testing.assert_array_equal(back.tensors["w"], make(tiny_models["gpt2"]).tensors["w"])
    assert back.config == {"layer": 1, "note": "test"} and back.metrics == {"auroc": 0.9}
    assert back.content_hash == info.content_hash
    assert store.delete("probe", "probe") is True
    assert store.list() == [] and store.delete("probe", "probe") is False
    with pytest.raises(ArtifactNotFoundError) as exc:
        store.load("probe", "probe")
    assert exc.value.code == "artifact_not_found"


def test_names_cannot_escape_the_store(tmp_path: Path, tiny_models) -> None:
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidParamsError):
        store.save(make(tiny_models["gpt2"], name="../outside"))
    with pytest.raises(InvalidParamsError):
        store.load("probe", "../../etc")
    assert not (tmp_path / "outside").exists()


def test_a_half_written_artifact_is_never_listed(tmp_path: Path, tiny_models) -> None:
    store = ArtifactStore(tmp_path)
    store.save(make(tiny_models["gpt2"], name="done"))
    # a writer that died half-way leaves only its staging directory behind
    staging = tmp_path / ".tmp-crashed" / "a"
    staging.mkdir(parents=True)
    (staging / "tensors.safetensors").write_bytes(b"partial")
    # and a directory without its metadata file is not an artifact either
    (tmp_path / "probe" / "no-meta").mkdir(parents=True)
    assert [i.name for i in store.list()] == ["done"]


def test_content_hash_changes_with_the_tensors(tmp_path: Path, tiny_models) -> None:
    store = ArtifactStore(tmp_path)
    first = store.save(make(tiny_models["gpt2"])).content_hash
    second = store.save(make(tiny_models["gpt2"], scale=2.0)).content_hash
    assert first != second
    assert store.info("probe", "probe").content_hash == second  # replaced in place


def test_load_in_another_process(tmp_path: Path, tiny_models) -> None:
    store = ArtifactStore(tmp_path)
    info = store.save(make(tiny_models["gpt2"]))
    code = (
        "import sys, json; from lmlens import ArtifactStore, model_fingerprint; "
        "from lmlens.testing import load_tiny; "
        "a = ArtifactStore(sys.argv[1]).load('probe', 'probe'); "
        "print(json.dumps({'hash': a.content_hash, 'sum': float(a.tensors['w'].sum()), "
        "'same_model': a.model == model_fingerprint(load_tiny('gpt2'))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True, timeout=120
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"hash": info.content_hash, "sum": 66.0, "same_model": True}


def test_analyzer_refuses_an_artifact_of_another_model(tiny_analyzer, tiny_models, tmp_path: Path) -> None:
    analyzer = tiny_analyzer("llama")
    analyzer._artifact_store = ArtifactStore(tmp_path)
    analyzer.save_artifact(make(tiny_models["gpt2"], name="for-gpt2"))
    analyzer.save_artifact(make(tiny_models["llama"], name="for-llama"))
    assert analyzer.load_artifact("probe", "for-llama").name == "for-llama"
    with pytest.raises(ArtifactModelMismatchError) as exc:
        analyzer.load_artifact("probe", "for-gpt2")
    assert exc.value.code == "artifact_model_mismatch" and "tiny-gpt2" in exc.value.message
    assert [i.name for i in analyzer.artifacts("probe")] == ["for-gpt2", "for-llama"]
    assert analyzer.delete_artifact("probe", "for-gpt2")


class ProbeParams(msgspec.Struct, frozen=True, kw_only=True):
    artifact: str = "probe"


class ProbeResult(Result, frozen=True, tag="probe_sum"):
    total: float


def _probe_run(trace, params: ProbeParams) -> ProbeResult:
    return ProbeResult(total=float(trace.artifact("probe", params.artifact).tensors["w"].sum()))


class ProbePlugin:
    @hookimpl
    def register_methods(self, register) -> None:
        register(
            Method(
                name="probe_sum",
                description="sum of a fitted artifact's weights",
                params=ProbeParams,
                result=ProbeResult,
                needs=lambda info, params: [],
                run=_probe_run,
                artifacts=lambda params: [("probe", params.artifact)],
            )
        )


def probe_analyzer(tiny_models, tmp_path: Path) -> Analyzer:
    host = PluginHost()
    host.register(ProbePlugin(), "probe-plugin")
    settings = Settings(cache_dir=str(tmp_path))
    return Analyzer(tiny_models["gpt2"], settings=settings, plugins=host, cache=MemoryCache())


def test_a_method_uses_an_artifact_and_the_cache_key_follows_its_content(tiny_models, tmp_path: Path) -> None:
    analyzer = probe_analyzer(tiny_models, tmp_path)
    with pytest.raises(ArtifactNotFoundError):  # checked before any work
        analyzer.analyze("hello", ["probe_sum"])
    analyzer.save_artifact(make(tiny_models["gpt2"]))
    first = analyzer.analyze("hello", ["probe_sum"])
    assert first.methods["probe_sum"].total == 66.0 and not first.cached
    assert analyzer.analyze("hello", ["probe_sum"]).cached
    analyzer.save_artifact(make(tiny_models["gpt2"], scale=2.0))  # refitted: a new content hash
    again = analyzer.analyze("hello", ["probe_sum"])
    assert not again.cached and again.methods["probe_sum"].total == 132.0
    analyzer.save_artifact(make(tiny_models["llama"], name="other"))
    with pytest.raises(ArtifactModelMismatchError):
        analyzer.analyze("hello", ["probe_sum"], params={"probe_sum": {"artifact": "other"}})


def test_register_artifacts_ships_read_only_defaults(tiny_models, tmp_path: Path) -> None:
    shipped = tmp_path / "wheel" / "default-probe"
    write_artifact(make(tiny_models["gpt2"], name="shipped"), shipped)

    class Shipper:
        @hookimpl
        def register_artifacts(self, register) -> None:
            register(shipped)

    host = PluginHost()
    host.register(Shipper(), "shipper")
    analyzer = Analyzer(tiny_models["gpt2"], settings=Settings(cache_dir=str(tmp_path / "cache")), plugins=host)
    rows = analyzer.artifacts("probe")
    assert [(r.name, r.builtin) for r in rows] == [("shipped", True)]
    assert analyzer.load_artifact("probe", "shipped").tensors["w"].shape == (3, 4)
    with pytest.raises(InvalidParamsError):
        analyzer.delete_artifact("probe", "shipped")
    # a user's artifact of the same name takes precedence
    analyzer.save_artifact(make(tiny_models["gpt2"], name="shipped", scale=3.0))
    assert [(r.name, r.builtin) for r in analyzer.artifacts("probe")] == [("shipped", False)]
    assert analyzer.load_artifact("probe", "shipped").tensors["w"].sum() == 198.0


def test_artifact_store_hook_replaces_the_store(tiny_models, tmp_path: Path) -> None:
    shared = ArtifactStore(tmp_path / "shared")

    class SharedStore:
        @hookimpl
        def artifact_store(self, settings, builtins):
            return shared

    host = PluginHost()
    host.register(SharedStore(), "shared-store")
    analyzer = Analyzer(tiny_models["gpt2"], settings=Settings(cache_dir=str(tmp_path / "cache")), plugins=host)
    analyzer.save_artifact(make(tiny_models["gpt2"]))
    assert (tmp_path / "shared" / "probe" / "probe" / "artifact.json").exists()
    assert not (tmp_path / "cache" / "artifacts").exists()


def test_artifact_dir_setting(tiny_models, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LMLENS_ARTIFACT_DIR", str(tmp_path / "elsewhere"))
    analyzer = Analyzer(tiny_models["gpt2"], settings=Settings(cache_dir=str(tmp_path / "cache")))
    analyzer.save_artifact(make(tiny_models["gpt2"]))
    assert os.path.isdir(tmp_path / "elsewhere" / "probe" / "probe")


def test_checkpoints_are_not_listed_and_come_back(tmp_path: Path, tiny_models) -> None:
    store = ArtifactStore(tmp_path)
    store.checkpoint(make(tiny_models["gpt2"], name="training"))
    assert store.list() == []
    back = store.load_checkpoint("probe", "training")
    assert back is not None and back.tensors["w"].sum() == 66.0
    store.drop_checkpoint("probe", "training")
    assert store.load_checkpoint("probe", "training") is None


def test_cli_lists_and_deletes_artifacts(tmp_path: Path, tiny_models, monkeypatch) -> None:
    from click.testing import CliRunner

    from lmlens.cli import cli

    monkeypatch.setenv("LMLENS_CACHE_DIR", str(tmp_path))
    ArtifactStore(tmp_path / "artifacts").save(make(tiny_models["gpt2"], name="cli-probe"))
    runner = CliRunner()
    listed = runner.invoke(cli, ["artifacts", "--kind", "probe", "--json"], obj={})  # plugins ship others
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["kind"], r["name"], r["metrics"]) for r in rows] == [("probe", "cli-probe", {"auroc": 0.9})]
    text = runner.invoke(cli, ["artifacts", "--kind", "probe"], obj={})
    assert "cli-probe" in text.output and "auroc=0.9" in text.output
    gone = runner.invoke(cli, ["artifacts", "delete", "probe", "cli-probe"], obj={})
    assert gone.exit_code == 0 and "deleted" in gone.output
    again = runner.invoke(cli, ["artifacts", "delete", "probe", "cli-probe"], obj={})
    assert again.exit_code == 2 and "artifact_not_found" in again.output


def test_a_default_artifact_may_depend_on_the_model(tiny_models, tmp_path: Path) -> None:
    class PerModel:
        @hookimpl
        def register_methods(self, register) -> None:
            register(
                Method(
                    name="probe_sum", description="", params=ProbeParams, result=ProbeResult,
                    needs=lambda info, params: [],
                    run=lambda trace, params: ProbeResult(
                        total=float(trace.artifact("probe", f"{trace.model.name}-default").tensors["w"].sum())
                    ),
                    artifacts=lambda params, loaded: [("probe", f"{loaded.name}-default")],
                )
            )

    host = PluginHost(load=[])
    host.register(PerModel(), "per-model")
    analyzer = Analyzer(tiny_models["gpt2"], settings=Settings(cache_dir=str(tmp_path)), plugins=host,
                        cache=MemoryCache())
    with pytest.raises(ArtifactNotFoundError, match="tiny-gpt2-default"):
        analyzer.analyze("hello", ["probe_sum"])
    analyzer.save_artifact(make(tiny_models["gpt2"], name="tiny-gpt2-default"))
    assert analyzer.analyze("hello", ["probe_sum"]).methods["probe_sum"].total == 66.0
    analyzer.save_artifact(make(tiny_models["gpt2"], name="tiny-gpt2-default", scale=2.0))
    assert analyzer.analyze("hello", ["probe_sum"]).methods["probe_sum"].total == 132.0  # not a stale hit


def test_a_writer_killed_between_its_renames_loses_nothing(tmp_path: Path, tiny_models) -> None:
    store = ArtifactStore(tmp_path)
    store.checkpoint(make(tiny_models["gpt2"], name="training"))
    store.save(make(tiny_models["gpt2"], name="kept"))
    # what a writer leaves when killed after moving the old version aside, before moving the new one in
    for target in (tmp_path / ".checkpoints" / "probe" / "training", tmp_path / "probe" / "kept"):
        os.rename(target, target.parent / f".old-{target.name}-123-abcd")
    back = store.load_checkpoint("probe", "training")
    assert back is not None and back.tensors["w"].sum() == 66.0
    assert store.load("probe", "kept").tensors["w"].sum() == 66.0
    assert [i.name for i in store.list()] == ["kept"]
