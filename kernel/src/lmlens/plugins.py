"""The plugin host: a pluggy PluginManager over the entry-point group ``lmlens``.

Entry points are loaded one by one: a plugin that fails to import, or whose
``register_*`` hook raises, is recorded with its error and the rest carry on.
``LMLENS_LOAD_PLUGINS`` (comma-separated entry-point names) limits which outside
plugins load; the kernel's own plugins (dist ``lmlens``) always load.
"""

from __future__ import annotations

import importlib.metadata
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pluggy

from lmlens import hookspecs
from lmlens.architectures import Architecture
from lmlens.errors import UnknownMethodError
from lmlens.jobs import Job, UnknownJobKindError
from lmlens.method import Method
from lmlens.models import ModelAlias
from lmlens.wire import PluginInfo, Result

GROUP = "lmlens"
KERNEL_DIST = "lmlens"


@dataclass
class _PluginRecord:
    name: str
    dist: str | None
    version: str | None
    methods: list[str] = field(default_factory=list)
    error: str | None = None


def check_method(method: object) -> None:
    """What every registered method must be; a violation is the plugin's load error."""
    if not isinstance(method, Method):
        raise TypeError(f"register_methods got {type(method).__name__}, not Method")
    if not (isinstance(method.params, type) and issubclass(method.params, msgspec.Struct)):
        raise TypeError(f"method {method.name!r}: params must be a msgspec.Struct class")
    if not (isinstance(method.result, type) and issubclass(method.result, Result)):
        raise TypeError(f"method {method.name!r}: result must subclass lmlens.Result")
    tag = method.result.__struct_config__.tag
    if tag != method.name:
        raise TypeError(
            f"method {method.name!r}: its result {method.result.__name__} is tagged {tag!r}; "
            f"declare it with tag={method.name!r}"
        )


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


class PluginHost:
    """Loads plugins and holds what they registered: methods, models, architectures."""

    def __init__(self, *, load: Iterable[str] | None = None, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._records: dict[str, _PluginRecord] = {}
        if load is None:
            raw = os.environ.get("LMLENS_LOAD_PLUGINS")
            load = None if raw is None else [n.strip() for n in raw.split(",") if n.strip()]
        self._allowed = None if load is None else set(load)
        self.methods: dict[str, Method] = {}
        self.method_owner: dict[str, str] = {}
        self.aliases: dict[str, ModelAlias] = {}
        self.architectures: list[Architecture] = []
        self.jobs: dict[str, Job] = {}
        self.panels: dict[str, Callable[..., Any]] = {}
        self.artifact_dirs: list[Path] = []
        self.verbs: dict[str, Callable[..., Any]] = {}
        if entry_points:
            self._load_entry_points()
        self.refresh()

    # --- loading -----------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            is_kernel = dist is not None and dist.lower() == KERNEL_DIST
            if self._allowed is not None and not is_kernel and ep.name not in self._allowed:
                continue
            if ep.name in self._records:
                continue  # the same dist seen twice on sys.path
            record = _PluginRecord(name=ep.name, dist=dist, version=version)
            self._records[ep.name] = record
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin is reported, never fatal
                record.error = _short_error(exc)

    def register(self, plugin: ModuleType | object, name: str, version: str | None = None) -> None:
        """Register an in-process plugin (a module or object with hookimpls)."""
        self._records[name] = _PluginRecord(name=name, dist=None, version=version)
        self.pm.register(plugin, name=name)
        self.refresh()

    def refresh(self) -> None:
        """Collect every ``register_*`` hook again, one plugin at a time."""
        for record in self._records.values():
            record.methods.clear()
        self.methods.clear()
        self.method_owner.clear()
        self.aliases.clear()
        self.architectures.clear()
        self.jobs.clear()
        self.panels.clear()
        self.artifact_dirs.clear()
        self.verbs.clear()

        def add_method(owner: str) -> Callable[[Method], None]:
            def register(method: Method) -> None:
                check_method(method)
                if method.name in self.methods:
                    raise ValueError(
                        f"method {method.name!r} is already registered by "
                        f"{self.method_owner[method.name]!r}"
                    )
                self.methods[method.name] = method
                self.method_owner[method.name] = owner
                if owner in self._records:
                    self._records[owner].methods.append(method.name)

            return register

        self._collect("register_methods", add_method)
        self._collect("register_models", lambda _o: lambda a: self.aliases.setdefault(a.name, a))
        self._collect("register_architectures", lambda _o: self.architectures.append)
        self._collect("register_jobs", lambda _o: lambda job: self.jobs.__setitem__(job.kind, job))
        self._collect("register_panels", lambda _o: self.panels.__setitem__)
        self._collect("register_artifacts", lambda _o: lambda path: self.artifact_dirs.append(Path(path)))
        self._collect("register_verbs", lambda _o: lambda name, fn: self.verbs.setdefault(name, fn))

    def _collect(self, hook_name: str, make_register: Callable[[str], Callable[..., Any]]) -> None:
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order
            owner = impl.plugin_name
            try:
                kwargs = {"register": make_register(owner)} if impl.argnames else {}
                impl.function(**kwargs)
            except Exception as exc:
                record = self._records.setdefault(owner, _PluginRecord(owner, None, None))
                record.error = _short_error(exc)

    # --- queries -------------------------------------------------------------------------

    def method(self, name: str) -> Method:
        try:
            return self.methods[name]
        except KeyError:
            installed = ", ".join(sorted(self.methods)) or "none"
            raise UnknownMethodError(
                f"unknown method {name!r}; installed methods: {installed}", field="methods"
            ) from None

    def job(self, kind: str) -> Job:
        try:
            return self.jobs[kind]
        except KeyError:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise UnknownJobKindError(f"unknown job kind {kind!r}; known: {known}", field="kind") from None

    def plugin_version(self, name: str) -> str:
        record = self._records.get(name)
        return (record.version if record else None) or "0"

    def infos(self) -> list[PluginInfo]:
        rows = []
        for name, record in sorted(self._records.items()):
            plugin = self.pm.get_plugin(name)
            hooks = (
                sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
                if plugin is not None
                else []
            )
            rows.append(
                PluginInfo(
                    name=name,
                    dist=record.dist,
                    version=record.version,
                    methods=list(record.methods),
                    hooks=hooks,
                    error=record.error,
                )
            )
        return rows
