"""Fitted artifacts: SAEs, failure predictors, anomaly detectors, probes, steering vectors.

An artifact is anything fitted to one model that a method later uses. On disk it is a
directory ``<root>/<kind>/<name>/`` with ``artifact.json`` (kind, name, the model's
fingerprint, hook points, config, metrics, provenance, content hash) and
``tensors.safetensors``. Nothing is pickled: loading an artifact runs no code.

Writes are atomic (a temporary directory renamed into place), so a half-written
artifact is never listed. Plugins ship defaults inside their wheels by registering
artifact directories (``register_artifacts``); a user's artifact of the same kind and
name takes precedence. A plugin can replace the whole store (a shared directory, an
object store) through the ``artifact_store`` hook, so every API process and worker
sees the same artifacts.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import numpy as np
from safetensors.numpy import load_file, save_file

from lmlens.errors import InvalidParamsError, LmlensError

if TYPE_CHECKING:
    from lmlens.models import LoadedModel

META = "artifact.json"
TENSORS = "tensors.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactNotFoundError(LmlensError):
    code = "artifact_not_found"
    http_status = 404


class ArtifactModelMismatchError(LmlensError):
    code = "artifact_model_mismatch"
    http_status = 409


class ArtifactInvalidError(LmlensError):
    code = "artifact_invalid"
    http_status = 422


@dataclass
class Artifact:
    """A fitted thing: JSON metadata plus named arrays."""

    kind: str
    name: str
    model: str  # model_fingerprint() of the model it was fitted on
    model_name: str  # the model's name when fitted, for people
    points: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""


class ArtifactInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a listing shows: everything but the tensors."""

    kind: str
    name: str
    model: str
    model_name: str
    points: list[str]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    content_hash: str
    builtin: bool = False
    path: str = ""


class ArtifactStoreProtocol(Protocol):
    def save(self, artifact: Artifact) -> ArtifactInfo: ...
    def list(self, kind: str | None = None, model: str | None = None) -> list[ArtifactInfo]: ...
    def info(self, kind: str, name: str) -> ArtifactInfo: ...
    def load(self, kind: str, name: str) -> Artifact: ...
    def delete(self, kind: str, name: str) -> bool: ...
    def checkpoint(self, artifact: Artifact) -> None: ...
    def load_checkpoint(self, kind: str, name: str) -> Artifact | None: ...
    def drop_checkpoint(self, kind: str, name: str) -> None: ...


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidParamsError(
            f"{what} {value!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field=what,
        )
    return value


def data_provenance(texts: Iterable[str]) -> dict[str, Any]:
    """Hash and size of the training data, for an artifact's provenance."""
    digest = hashlib.sha256()
    n = chars = 0
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
        n += 1
        chars += len(text)
    return {"data_hash": digest.hexdigest(), "data_size": n, "data_chars": chars}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"lmlens": version("lmlens")}
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return {"lmlens": "0"}


def _meta(artifact: Artifact) -> dict[str, Any]:
    return {
        "format": 1,
        "kind": artifact.kind,
        "name": artifact.name,
        "model": artifact.model,
        "model_name": artifact.model_name,
        "points": list(artifact.points),
        "config": artifact.config,
        "metrics": artifact.metrics,
        "provenance": artifact.provenance,
    }


def _content_hash(meta: dict[str, Any], tensors_path: Path) -> str:
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    with tensors_path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_artifact(artifact: Artifact, directory: Path) -> ArtifactInfo:
    """Write ``artifact`` into ``directory`` (which must not exist yet) and return its info."""
    check_name(artifact.kind, "kind")
    check_name(artifact.name, "name")
    provenance = {"created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **artifact.provenance}
    provenance["versions"] = {**_versions(), **provenance.get("versions", {})}
    artifact.provenance = provenance
    directory.mkdir(parents=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in artifact.tensors.items()}
    save_file(tensors, str(directory / TENSORS))
    meta = _meta(artifact)
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidParamsError(f"artifact {artifact.name!r}: config and metrics must be plain JSON ({exc})") from None
    meta["content_hash"] = artifact.content_hash = _content_hash(json.loads(text), directory / TENSORS)
    (directory / META).write_text(json.dumps(meta, sort_keys=True, indent=1))
    return _info(meta, directory, builtin=False)


def _info(meta: dict[str, Any], directory: Path, *, builtin: bool) -> ArtifactInfo:
    return ArtifactInfo(
        kind=meta["kind"],
        name=meta["name"],
        model=meta["model"],
        model_name=meta.get("model_name", ""),
        points=list(meta.get("points", [])),
        metrics=meta.get("metrics", {}),
        provenance=meta.get("provenance", {}),
        content_hash=meta.get("content_hash", ""),
        builtin=builtin,
        path=str(directory),
    )


def read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads((directory / META).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactInvalidError(f"{directory}: not an artifact ({exc})") from None
    missing = {"kind", "name", "model"} - meta.keys()
    if missing:
        raise ArtifactInvalidError(f"{directory}: artifact.json lacks {', '.join(sorted(missing))}")
    return meta


def read_artifact(directory: Path) -> Artifact:
    meta = read_meta(directory)
    try:
        tensors = load_file(str(directory / TENSORS))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ArtifactInvalidError(f"{directory}: unreadable tensors ({exc})") from None
    return Artifact(
        kind=meta["kind"],
        name=meta["name"],
        model=meta["model"],
        model_name=meta.get("model_name", ""),
        points=list(meta.get("points", [])),
        config=meta.get("config", {}),
        tensors=tensors,
        metrics=meta.get("metrics", {}),
        provenance=meta.get("provenance", {}),
        content_hash=meta.get("content_hash", ""),
    )


class ArtifactStore:
    """Artifacts in a directory, plus read-only defaults shipped by plugins."""

    def __init__(self, root: str | Path, builtins: Sequence[str | Path] = ()) -> None:
        self.root = Path(root)
        self.builtins = [Path(p) for p in builtins]

    # --- paths ---------------------------------------------------------------------------

    def _dir(self, kind: str, name: str) -> Path:
        return self.root / check_name(kind, "kind") / check_name(name, "name")

    def _checkpoint_dir(self, kind: str, name: str) -> Path:
        return self.root / ".checkpoints" / check_name(kind, "kind") / check_name(name, "name")

    def _builtin(self, kind: str, name: str) -> tuple[Path, dict[str, Any]] | None:
        for directory in self.builtins:
            try:
                meta = read_meta(directory)
            except ArtifactInvalidError:
                continue
            if meta["kind"] == kind and meta["name"] == name:
                return directory, meta
        return None

    # --- writing -------------------------------------------------------------------------

    def _write_atomically(self, artifact: Artifact, target: Path) -> ArtifactInfo:
        """Stage the new version, move the old one aside, move the new one in, drop the old.

        A process killed between the two renames leaves only ``.old-<name>-*``: the next
        read of ``target`` renames the newest of those back (``_recover``), so a replaced
        artifact or checkpoint is never lost, only the unfinished new version.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            info = write_artifact(artifact, staging / "a")
            old = target.parent / f".old-{target.name}-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
            if target.exists():
                os.rename(target, old)
            os.rename(staging / "a", target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return msgspec.structs.replace(info, path=str(target))

    @staticmethod
    def _recover(target: Path) -> None:
        """Bring back the newest version a writer moved aside and died before replacing."""
        if (target / META).exists() or not target.parent.is_dir():
            return
        aside = sorted(
            (p for p in target.parent.glob(f".old-{target.name}-*") if (p / META).exists()),
            key=lambda p: int(p.name.split("-")[-2]),
        )
        if aside:
            with contextlib.suppress(OSError):  # another process recovered it first
                os.rename(aside[-1], target)

    def save(self, artifact: Artifact) -> ArtifactInfo:
        """Write atomically; an artifact of the same kind and name is replaced."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self._write_atomically(artifact, self._dir(artifact.kind, artifact.name))

    def checkpoint(self, artifact: Artifact) -> None:
        """Save work in progress (not listed); ``load_checkpoint`` gets it back after a crash."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_atomically(artifact, self._checkpoint_dir(artifact.kind, artifact.name))

    def load_checkpoint(self, kind: str, name: str) -> Artifact | None:
        directory = self._checkpoint_dir(kind, name)
        self._recover(directory)
        return read_artifact(directory) if (directory / META).exists() else None

    def drop_checkpoint(self, kind: str, name: str) -> None:
        shutil.rmtree(self._checkpoint_dir(kind, name), ignore_errors=True)

    def delete(self, kind: str, name: str) -> bool:
        directory = self._dir(kind, name)
        if not directory.exists():
            if self._builtin(kind, name) is not None:
                raise InvalidParamsError(
                    f"{kind} {name!r} ships with a plugin and cannot be deleted", field="name"
                )
            return False
        trash = self.root / f".old-{uuid.uuid4().hex}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # --- reading -------------------------------------------------------------------------

    def list(self, kind: str | None = None, model: str | None = None) -> list[ArtifactInfo]:
        found: dict[tuple[str, str], ArtifactInfo] = {}
        for directory in self.builtins:
            try:
                meta = read_meta(directory)
            except ArtifactInvalidError:
                continue
            found[(meta["kind"], meta["name"])] = _info(meta, directory, builtin=True)
        if self.root.is_dir():
            for kind_dir in sorted(self.root.iterdir()):
                if kind_dir.name.startswith(".") or not kind_dir.is_dir():
                    continue
                for directory in sorted(kind_dir.iterdir()):
                    if directory.name.startswith(".") or not (directory / META).exists():
                        continue
                    try:
                        meta = read_meta(directory)
                    except ArtifactInvalidError:
                        continue
                    found[(meta["kind"], meta["name"])] = _info(meta, directory, builtin=False)
        rows = [
            info
            for info in found.values()
            if (kind is None or info.kind == kind) and (model is None or info.model == model)
        ]
        return sorted(rows, key=lambda i: (i.kind, i.name))

    def _locate(self, kind: str, name: str) -> tuple[Path, dict[str, Any], bool]:
        directory = self._dir(kind, name)
        self._recover(directory)
        if (directory / META).exists():
            return directory, read_meta(directory), False
        builtin = self._builtin(kind, name)
        if builtin is not None:
            return builtin[0], builtin[1], True
        names = [i.name for i in self.list(kind=kind)]
        raise ArtifactNotFoundError(
            f"no {kind} artifact named {name!r}; available: {', '.join(names) or 'none'}", field="name"
        )

    def info(self, kind: str, name: str) -> ArtifactInfo:
        directory, meta, builtin = self._locate(kind, name)
        return _info(meta, directory, builtin=builtin)

    def load(self, kind: str, name: str) -> Artifact:
        directory = self._locate(kind, name)[0]
        return read_artifact(directory)


def model_fingerprint(loaded: LoadedModel) -> str:
    """A hash of a model's weights and tokenizer, memoised per loaded model.

    Every parameter contributes its name, shape, dtype and an evenly strided sample of
    up to 4096 values (so a 135M-parameter model hashes in milliseconds); the tokenizer
    contributes its vocabulary. Two checkpoints of one architecture differ in it.
    """
    if loaded._fingerprint is not None:
        return loaded._fingerprint
    import torch

    digest = hashlib.sha256()
    digest.update(str(loaded.info.model_type).encode())
    with torch.no_grad():
        for name, param in sorted(loaded.model.named_parameters(), key=lambda kv: kv[0]):
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].float().cpu().numpy()
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
            digest.update(sample.tobytes())
    vocab = getattr(loaded.tokenizer, "get_vocab", None)
    if callable(vocab):
        digest.update(json.dumps(sorted(vocab().items())).encode())
    loaded._fingerprint = "sha256:" + digest.hexdigest()[:32]
    return loaded._fingerprint


def check_model(info: ArtifactInfo | Artifact, loaded: LoadedModel) -> None:
    """Refuse an artifact fitted on another model."""
    fingerprint = model_fingerprint(loaded)
    if info.model != fingerprint:
        raise ArtifactModelMismatchError(
            f"{info.kind} {info.name!r} was fitted on {info.model_name or 'another model'} "
            f"({info.model[:19]}), not on the loaded {loaded.name} ({fingerprint[:19]})",
            field="model",
        )
