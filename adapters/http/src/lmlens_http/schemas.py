"""The service's own wire types (the kernel's are in ``lmlens.wire``).

Requests forbid unknown fields, so a typo is a
422 naming the field rather than a silently ignored option.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from lmlens.wire import AnalysisResult, ErrorBody, PluginInfo


class CacheHealth(msgspec.Struct, frozen=True, kw_only=True):
    backend: Literal["redis", "memory"]
    healthy: bool
    error: str | None = None


class PoolHealth(msgspec.Struct, frozen=True, kw_only=True):
    workers: int
    queue_size: int
    running: int
    queued: int


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok", "degraded"]
    version: str
    models_loaded: list[str]
    default_model: str
    cache: CacheHealth
    rate_limit: CacheHealth
    pool: PoolHealth
    plugins: list[PluginInfo]


# --- WebSocket messages ------------------------------------------------------------------


class ProgressData(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    method: str | None  # None for the shared forward pass, windows and jobs
    stage: Literal["start", "end", "window", "job", "cached"]
    fraction: float | None = None  # a followed job's progress in [0, 1]


class WsFollow(msgspec.Struct, frozen=True, kw_only=True, tag="follow", tag_field="type",
               forbid_unknown_fields=True):
    """Follow a queued job's progress: ``{"type": "follow", "job": "<id>"}``."""

    job: str
    id: str | None = None


class WsJobData(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    job: str
    result: Any  # the job's result


class WsJobComplete(msgspec.Struct, frozen=True, kw_only=True, tag="complete", tag_field="type"):
    data: WsJobData
    id: str | None = None


class WsProgress(msgspec.Struct, frozen=True, kw_only=True, tag="progress", tag_field="type"):
    data: ProgressData
    id: str | None = None


class WsComplete(msgspec.Struct, frozen=True, kw_only=True, tag="complete", tag_field="type"):
    data: AnalysisResult
    id: str | None = None


class WsError(msgspec.Struct, frozen=True, kw_only=True, tag="error", tag_field="type"):
    data: ErrorBody
    id: str | None = None


# --- types that depend on the installed methods ------------------------------------------

HTTP_DEFAULTS: dict[str, dict[str, Any]] = {"attention": {"patterns": False}}
"""Defaults that differ over HTTP: full attention maps are [layer, head, n, n] floats (about
59 MB of JSON at 128 tokens on SmolLM2), so the service sends the per-head summaries unless
the request asks for ``patterns: true`` (then only for the requested layers and heads)."""


def http_params(name: str, params: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """``params`` with this service's defaults (a subclass, so the kernel accepts it as is)."""
    overrides = HTTP_DEFAULTS.get(name)
    if not overrides:
        return params
    fields = {f.name: f for f in msgspec.structs.fields(params)}
    changed = [(key, fields[key].type, value) for key, value in overrides.items() if key in fields]
    if not changed:
        return params
    config = params.__struct_config__
    return msgspec.defstruct(  # type: ignore[no-any-return]
        params.__name__, changed, bases=(params,), kw_only=True, frozen=config.frozen,
        forbid_unknown_fields=config.forbid_unknown_fields, module=params.__module__,
    )



class RequestTypes:
    """Request and result types with one typed ``params`` field per installed method.

    Built from whatever methods the plugins registered, so a new plugin's parameters
    are validated (with field paths) and documented without touching the adapter.
    """

    def __init__(self, methods: dict[str, Any], result_type: type[AnalysisResult]) -> None:
        fields = []
        rename = {}
        for i, (name, method) in enumerate(sorted(methods.items())):
            attr = f"m{i}"  # method names need not be identifiers
            rename[attr] = name
            fields.append((attr, http_params(name, method.params) | None, None))
        self.params: type[Any] = msgspec.defstruct(
            "MethodParams", fields, kw_only=True, frozen=True, forbid_unknown_fields=True, rename=rename,
            omit_defaults=True,
        )
        self._attrs = rename
        empty = self.params()
        common = [
            ("model", str | None, None),
            ("methods", list[str], msgspec.field(default_factory=lambda: ["attention"])),
            ("params", self.params, empty),
        ]
        self.analyze: type[Any] = msgspec.defstruct(
            "AnalyzeRequest", [("text", str), *common], kw_only=True, frozen=True, forbid_unknown_fields=True
        )
        self.batch: type[Any] = msgspec.defstruct(
            "BatchRequest",
            [
                ("texts", Annotated[list[str], msgspec.Meta(min_length=1)]),
                *common,
                # texts per pool job; None: min(8, max_batch_size)
                ("batch_size", Annotated[int, msgspec.Meta(ge=1)] | None, None),
            ],
            kw_only=True,
            frozen=True,
            forbid_unknown_fields=True,
        )
        self.ws_analyze: type[Any] = msgspec.defstruct(
            "WsAnalyze",
            [("text", str), *common, ("id", str | None, None)],
            tag="analyze",
            tag_field="type",
            kw_only=True,
            frozen=True,
            forbid_unknown_fields=True,
        )
        self.result = result_type
        self.batch_result: type[Any] = msgspec.defstruct(
            "BatchResult", [("results", list[result_type])], kw_only=True, frozen=True  # type: ignore[valid-type]
        )

    def params_dict(self, params: Any) -> dict[str, Any]:
        """``{method: params Struct}`` for the methods the request gave params for."""
        out = {}
        for attr, name in self._attrs.items():
            value = getattr(params, attr)
            if value is not None:
                out[name] = value
        return out
