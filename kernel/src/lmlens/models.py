"""Resolve and load models: aliases, hub ids, local directories, ``.gguf`` files.

A GGUF file is dequantised once and written as a safetensors directory in the cache
directory; later loads read that copy. Nothing is downloaded unless the spec is a hub
id, and ``trust_remote_code`` is never passed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from lmlens import eager as eager_attention
from lmlens.architectures import Architecture, ModuleMap, find_architecture
from lmlens.errors import DeviceUnavailableError, ModelLoadError, ModelNotInstalledError, UnknownModelError

CONVERSION_VERSION = "2"


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a model and where its weights live.

    ``locate()`` returns the spec to load (a path, a hub id, ``tiny:<family>``) or
    ``None`` when the weights are not installed; ``install_hint`` is then the exact
    command that installs them.
    """

    name: str
    description: str
    source: str
    locate: Callable[[], str | None]
    install_hint: str | None = None


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "lmlens")
    aliases: dict[str, ModelAlias] = field(default_factory=dict)
    architectures: Sequence[Architecture] = ()
    allow_hub: bool = True


@dataclass(frozen=True)
class ModelInfo:
    """Shape facts a method needs to declare its needs and size its work."""

    family: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_mlp: int
    d_head: int
    vocab_size: int
    max_positions: int
    causal: bool
    has_lm_head: bool
    n_params: int
    dtype: str


@dataclass
class LoadedModel:
    """A model ready for capture: weights, tokenizer, module map and shape facts."""

    name: str
    revision: str
    model: nn.Module
    tokenizer: Any
    arch: Architecture
    modules: ModuleMap
    info: ModelInfo
    device: torch.device
    # Held by run_forward for a whole pass: hooks, attention switch, pass, hook removal.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        *,
        name: str,
        revision: str,
        model: nn.Module,
        tokenizer: Any,
        architectures: Sequence[Architecture],
    ) -> LoadedModel:
        config: Any = model.config
        arch = find_architecture(config.model_type, list(architectures))
        modules = ModuleMap(model, arch)
        n_heads = int(getattr(config, "num_attention_heads", getattr(config, "n_head", 0)))
        d_model = int(getattr(config, "hidden_size", getattr(config, "n_embd", 0)))
        has_lm_head = arch.lm_head is not None and _has_module(model, arch.lm_head)
        param = next(model.parameters())
        info = ModelInfo(
            family=arch.name,
            model_type=config.model_type,
            n_layers=modules.n_layers,
            n_heads=n_heads,
            n_kv_heads=int(getattr(config, "num_key_value_heads", None) or n_heads),
            d_model=d_model,
            d_mlp=int(
                getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d_model
            ),
            d_head=int(getattr(config, "head_dim", None) or d_model // max(n_heads, 1)),
            vocab_size=int(config.vocab_size),
            max_positions=int(
                getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 0
            ),
            causal=arch.causal,
            has_lm_head=has_lm_head,
            n_params=sum(p.numel() for p in model.parameters()),
            dtype=str(param.dtype).removeprefix("torch."),
        )
        model.eval()
        # Analyses differentiate with respect to inputs, never weights: frozen weights keep
        # backward passes from allocating weight gradients (and keep methods from toggling them).
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return cls(
            name=name,
            revision=revision,
            model=model,
            tokenizer=tokenizer,
            arch=arch,
            modules=modules,
            info=info,
            device=param.device,
        )

    @property
    def base_model(self) -> nn.Module:
        """The model without its task head (what runs when no method needs logits)."""
        prefix = self.modules.prefix.rstrip(".")
        return self.model.get_submodule(prefix) if prefix else self.model

    def set_eager_attention(self, eager: bool) -> None:
        """Patterns exist only in eager attention; SDPA is faster when none are needed.

        For the families ``lmlens.eager`` reproduces, "eager" is its ``lmlens_eager``,
        which writes each map straight into a buffer a need gives (no copy).
        """
        want = "eager" if eager else "sdpa"
        if eager and eager_attention.supports(self.model):
            eager_attention.register()
            want = eager_attention.NAME
        config: Any = self.model.config
        if getattr(config, "_attn_implementation", None) == want:
            return
        setter = getattr(self.model, "set_attn_implementation", None)
        if setter is None:
            config._attn_implementation = want
            return
        try:
            setter(want)
        except (ValueError, ImportError):
            if eager:
                raise
            setter("eager")  # a model without SDPA support stays eager


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


# --- the kernel's loader -----------------------------------------------------------------


def package_dir(module_name: str) -> Path | None:
    """Where an installed package lives, without importing it (its imports may be heavy)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pick_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``: a device this torch build can use, or
    ``DeviceUnavailableError`` (code ``device_unavailable``) saying why not."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"unknown device {device!r} (MODEL_DEVICE): use auto, cpu, cuda, cuda:N or mps ({exc})", field="device"
        ) from None
    if picked.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceUnavailableError(
                f"device {device!r} (MODEL_DEVICE) is not available: {build} "
                f"(torch {torch.__version__}); use MODEL_DEVICE=cpu or auto",
                field="device",
            )
        if picked.index is not None and picked.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) are visible",
                field="device",
            )
    if picked.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(
            f"device {device!r} (MODEL_DEVICE) is not available on this machine; use cpu or auto", field="device"
        )
    return picked


def pick_dtype(dtype: str) -> torch.dtype:
    if dtype in ("auto", "float32"):
        return torch.float32
    choices = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
    if dtype not in choices:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, float16, bfloat16")
    return choices[dtype]


def load(spec: str, options: LoadOptions) -> LoadedModel:
    """Resolve ``spec`` (alias, ``tiny:<family>``, ``.gguf``, directory, hub id) and load it."""
    name = spec
    alias = options.aliases.get(spec)
    if alias is not None:
        located = alias.locate()
        if located is None:
            raise ModelNotInstalledError(
                f"model {spec!r} is not installed; install it with: {alias.install_hint}",
                field="model",
            )
        spec = located
    device, dtype = pick_device(options.device), pick_dtype(options.dtype)
    if spec.startswith("tiny:"):
        from lmlens.tiny import build_tiny

        model, tokenizer, revision = *build_tiny(spec.removeprefix("tiny:")), "random-seed-0"
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise UnknownModelError(f"no GGUF file at {spec}", field="model")
            path, revision = convert_gguf(path, options.cache_dir)
        elif path.is_dir():
            revision = _dir_revision(path)
        elif _looks_like_hub_id(spec) and options.allow_hub:
            if hub_offline():
                return _finish(name, *_load_offline(spec, device, dtype, sorted(options.aliases)), options)
            return _finish(name, *_load_pretrained(spec, device, dtype, local=False), options)
        else:
            known = ", ".join(sorted(options.aliases)) or "none"
            raise UnknownModelError(
                f"unknown model {spec!r}: not an alias ({known}), a directory, a .gguf file"
                + (" or a hub id" if options.allow_hub else ""),
                field="model",
            )
        model, tokenizer, _ = _load_pretrained(str(path), device, dtype, local=True)
        return _finish(name, model, tokenizer, revision, options)
    model = model.to(device=device, dtype=dtype)
    return _finish(name, model, tokenizer, revision, options)


def _finish(
    name: str, model: nn.Module, tokenizer: Any, revision: str, options: LoadOptions
) -> LoadedModel:
    return LoadedModel.build(
        name=name,
        revision=revision,
        model=model,
        tokenizer=tokenizer,
        architectures=options.architectures,
    )


_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` or a single name (``gpt2``, ``bert-base-uncased``: canonical hub models)."""
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(_HUB_NAME.fullmatch(p) for p in parts) and ".." not in spec


def hub_offline(timeout: float = 2.0) -> bool:
    """True when the hub cannot be reached: HF_HUB_OFFLINE is set, or a TCP connection to
    the hub's host fails within ``timeout`` seconds (instead of the hub client's retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    reached: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reached.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores socket timeouts
    worker.start()
    worker.join(timeout + 0.5)
    return not reached


def _load_offline(
    spec: str, device: torch.device, dtype: torch.dtype, aliases: Sequence[str] = ()
) -> tuple[nn.Module, Any, str]:
    """A hub id without a network: only a copy already in the Hugging Face cache loads."""
    try:
        return _load_pretrained(spec, device, dtype, local=True)
    except ModelLoadError:
        raise ModelLoadError(
            f"cannot load {spec!r}: this machine is offline (HF_HUB_OFFLINE is set or the hub does not "
            f"answer) and {spec!r} is not in the Hugging Face cache. Download it on a connected machine "
            f"(huggingface-cli download {spec} --local-dir ./{spec.replace('/', '--')}), copy that directory "
            f"here and pass its path as the model, or use an alias ({', '.join(aliases) or 'none'}; see lmlens models)",
            field="model",
        ) from None


def _auto_class(architectures: list[str]) -> Any:
    import transformers

    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return transformers.AutoModelForCausalLM
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return transformers.AutoModelForMaskedLM
    return transformers.AutoModel


def quiet_transformers() -> None:
    """transformers' per-load reports and progress bars are noise in a service log."""
    from transformers.utils import logging

    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _load_pretrained(
    source: str, device: torch.device, dtype: torch.dtype, *, local: bool
) -> tuple[nn.Module, Any, str]:
    import transformers

    quiet_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
        auto = _auto_class(list(getattr(config, "architectures", None) or []))
        model = auto.from_pretrained(
            source, config=config, dtype=dtype, local_files_only=local, attn_implementation="sdpa"
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local)
    except OSError as exc:
        causes = {type(exc).__name__, type(exc.__cause__).__name__}
        if not local and causes & {"RepositoryNotFoundError", "GatedRepoError"}:
            raise UnknownModelError(
                f"the hub has no model {source!r} that can be read without credentials ({exc})", field="model"
            ) from exc
        raise ModelLoadError(f"could not load {source}: {exc}", field="model") from exc
    revision = str(getattr(config, "_commit_hash", None) or "local")
    return model.to(device), tokenizer, revision


def _dir_revision(path: Path) -> str:
    marker = path / "lmlens-revision.json"
    if marker.is_file():
        return str(json.loads(marker.read_text())["revision"])
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return "dir-" + digest.hexdigest()[:16]


_CONTENT_KEYS: dict[tuple[str, int, int], str] = {}


def _content_key(gguf: Path, chunk: int = 1 << 20) -> str:
    """A key from the file's name, size and the bytes of its first and last MiB (and the
    conversion's version): the same wheel installed in two virtual environments shares one
    conversion, and a changed file gets a new one. Memoised per (path, size, mtime)."""
    stat = gguf.stat()
    memo = (str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _CONTENT_KEYS:
        digest = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{CONVERSION_VERSION}".encode())
        with gguf.open("rb") as handle:
            digest.update(handle.read(chunk))
            handle.seek(max(0, stat.st_size - chunk))
            digest.update(handle.read(chunk))
        _CONTENT_KEYS[memo] = digest.hexdigest()[:16]
    return _CONTENT_KEYS[memo]


def convert_gguf(gguf: Path, cache_dir: Path) -> tuple[Path, str]:
    """Dequantise ``gguf`` once into ``cache_dir`` as safetensors; return (dir, revision).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict
    is written with safetensors directly, beside the config and the tokenizer.
    """
    from filelock import FileLock

    revision = "gguf-" + _content_key(gguf)
    target = cache_dir / "converted" / f"{gguf.stem}-{revision}"
    if (target / "lmlens-revision.json").is_file():
        return target, revision
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "lmlens-revision.json").is_file():
            return target, revision
        _convert_gguf_into(gguf, target, revision)
    return target, revision


def _convert_gguf_into(gguf: Path, target: Path, revision: str) -> None:
    import transformers
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    quiet_transformers()
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        with tqdm(total=3, desc=f"converting {gguf.name} (once)", unit="step") as bar:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name
            )
            tokenizer.save_pretrained(work)
            bar.update()
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            bar.update()
            config = model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.architectures = [type(model).__name__]
            config.save_pretrained(work)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if getattr(config, "tie_word_embeddings", False):
                state.pop("lm_head.weight", None)  # tied: the loader re-ties it to the embedding
            save_file(state, str(work / "model.safetensors"), metadata={"format": "pt"})
            (work / "lmlens-revision.json").write_text(
                json.dumps({"revision": revision, "source": str(gguf)})
            )
            bar.update()
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    except Exception as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise ModelLoadError(f"could not convert {gguf}: {exc}", field="model") from exc


class ModelStore:
    """Keeps the most recently used loaded models, up to ``size`` of them."""

    def __init__(self, size: int = 2) -> None:
        self.size = max(1, size)
        self._models: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()

    def get_or_load(
        self, spec: str, options: LoadOptions, loader: Callable[[str, LoadOptions], LoadedModel]
    ) -> LoadedModel:
        key = (spec, options.device, options.dtype)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loaded = loader(spec, options)
            self._models[key] = loaded
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return loaded

    def loaded(self) -> list[str]:
        with self._lock:
            return [key[0] for key in self._models]
