"""msgspec Structs shared by every adapter: requests, results, errors.

Arrays are numpy arrays inside Python. On the wire they travel as nested lists in
JSON and as packed typed arrays (``{"dtype", "shape", "data": <bytes>}``) in
MessagePack, so a 30 x 9 x 512 x 512 pattern tensor is one memcpy, not 70M floats.
"""

from __future__ import annotations

import functools
import operator
import threading
import typing
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]
"""An n-dimensional float32 array; the shape is written beside each field that holds one."""

T = TypeVar("T")


class Token(msgspec.Struct, frozen=True, kw_only=True):
    """One token of the analysed text, with its character span in that text."""

    id: int
    piece: str  # the vocabulary entry, e.g. "Ġcat"
    text: str  # the characters it covers, text[start:end] ("" for special tokens)
    start: int
    end: int


class ModelRef(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    revision: str
    family: str


class FieldAccess:
    """Mapping-style reads on a Struct: ``result["patterns"]`` is ``result.patterns``.

    The product description's readers type ``results["attention"]["patterns"]``; the
    attributes stay the primary API. ``keys()`` are the Struct's fields plus the names a
    subclass lists in ``mapping_aliases`` (properties such as ``token_importance``).
    """

    __slots__ = ()
    mapping_aliases: ClassVar[tuple[str, ...]] = ()

    def keys(self) -> list[str]:
        fields: tuple[str, ...] = getattr(self, "__struct_fields__", ())
        return [*fields, *(a for a in self.mapping_aliases if a not in fields)]

    def __getitem__(self, key: str) -> Any:
        if isinstance(key, str) and key in self.keys():
            return getattr(self, key)
        raise KeyError(f"{type(self).__name__} has no {key!r}; it has: {', '.join(self.keys())}")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (this is get itself)

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((k, getattr(self, k)) for k in self.keys())


class Result(FieldAccess, msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of every method's result. Each plugin subclasses it with ``tag="<method>"``.

    Fields read as attributes or as keys: ``result.patterns`` or ``result["patterns"]``.
    """


_owners: weakref.WeakValueDictionary[int, AnalysisResult] = weakref.WeakValueDictionary()
_owners_lock = threading.Lock()


def owner_of(method_result: Result) -> AnalysisResult | None:
    """The live AnalysisResult that holds ``method_result``, if any: it lets a picture of
    ``result["attention"]`` label its axes with the analysed tokens."""
    with _owners_lock:
        owner = _owners.get(id(method_result))
    if owner is None or not any(r is method_result for r in owner.methods.values()):
        return None
    return owner


class AnalysisResult(msgspec.Struct, frozen=True, kw_only=True, weakref=True):
    """One request's answer: the tokens, and one Result per requested method.

    ``result["attention"]`` is ``result.methods["attention"]`` (the product description's
    spelling); ``keys()`` are the method names. Other fields are attributes only.
    """

    model: ModelRef
    text: str
    tokens: list[Token]
    methods: dict[str, Result]
    timings_ms: dict[str, float] = {}
    cached: bool = False

    def __post_init__(self) -> None:
        self._remember()

    def _remember(self) -> None:
        with _owners_lock:
            for found in self.methods.values():
                _owners[id(found)] = self

    def keys(self) -> list[str]:
        return list(self.methods)

    def __getitem__(self, method: str) -> Result:
        if isinstance(method, str) and method in self.methods:
            self._remember()  # copies made by msgspec.structs.replace skip __post_init__
            return self.methods[method]
        raise KeyError(
            f"the result has no {method!r} analysis; it has: {', '.join(self.methods) or 'none'}"
            + (f" (use result.{method} for the {method!r} field)" if method in self.__struct_fields__ else "")
        )

    def __contains__(self, method: object) -> bool:
        return method in self.methods

    def get(self, method: str, default: Any = None) -> Any:
        return self.methods.get(method, default)


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """An error as every adapter reports it."""

    code: str
    message: str
    field: str | None = None


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    dist: str | None
    version: str | None
    methods: list[str]
    hooks: list[str]
    error: str | None = None


class ModelRow(msgspec.Struct, frozen=True, kw_only=True):
    """A model a user may name: ``lmlens models`` and the service's ``GET /models``."""

    name: str
    description: str
    installed: bool
    source: str = ""
    install_hint: str | None = None
    loaded: bool = False  # in memory in this process (the service)
    default: bool = False  # used when a request names no model


# --- array encoding -------------------------------------------------------------------


def _json_enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _msgpack_enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(typ: Any, obj: Any) -> Any:
    origin = typing.get_origin(typ) or typ
    if origin is np.ndarray:
        dtype = np.float32
        args = typing.get_args(typ)
        if len(args) == 2:
            dtype_args = typing.get_args(args[1])
            if dtype_args:
                dtype = dtype_args[0]
        if isinstance(obj, dict):
            flat = np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"]))
            return flat.reshape(obj["shape"]).astype(dtype, copy=False)
        return np.asarray(obj, dtype=dtype)
    raise NotImplementedError(f"cannot decode {typ!r}")


def _schema_hook(typ: Any) -> dict[str, Any]:
    origin = typing.get_origin(typ) or typ
    if origin is np.ndarray:
        return {
            "type": "array",
            "description": "n-dimensional array as nested lists (JSON) or packed bytes (MessagePack)",
            "items": {},
        }
    raise NotImplementedError(f"no schema for {typ!r}")


_json_encoder = msgspec.json.Encoder(enc_hook=_json_enc_hook)
_msgpack_encoder = msgspec.msgpack.Encoder(enc_hook=_msgpack_enc_hook)


def to_json(obj: Any) -> bytes:
    return _json_encoder.encode(obj)


def to_msgpack(obj: Any) -> bytes:
    return _msgpack_encoder.encode(obj)


def from_json(data: bytes | str, typ: type[T]) -> T:
    return msgspec.json.decode(data, type=typ, dec_hook=_dec_hook)


def from_msgpack(data: bytes, typ: type[T]) -> T:
    return msgspec.msgpack.decode(data, type=typ, dec_hook=_dec_hook)


def convert(obj: Any, typ: type[T]) -> T:
    """Validate plain Python data (a params dict, say) into a Struct."""
    return msgspec.convert(obj, typ, dec_hook=_dec_hook)


def json_schema(*types: Any) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    return msgspec.json.schema_components(types, schema_hook=_schema_hook)


def result_type(result_classes: typing.Iterable[type[Result]]) -> type[AnalysisResult]:
    """An AnalysisResult whose ``methods`` decode into the given plugin Result classes."""
    return _result_type(tuple(sorted(set(result_classes), key=lambda c: c.__qualname__)))


@functools.lru_cache(maxsize=64)
def _result_type(classes: tuple[type[Result], ...]) -> type[AnalysisResult]:
    if not classes:
        return AnalysisResult
    union = functools.reduce(operator.or_, classes)
    typed: Any = msgspec.defstruct(
        "TypedAnalysisResult",
        [("methods", dict[str, union])],  # type: ignore[valid-type]
        bases=(AnalysisResult,),
        frozen=True,
        kw_only=True,
    )
    return typed  # type: ignore[no-any-return]


def detached_analysis(method_result: Result, method: str) -> AnalysisResult:
    """An AnalysisResult around a method result whose analysis is gone (``owner_of`` found
    none): the tokens are unknown, so they are labelled by position, ``[0]``, ``[1]`` ..."""
    n = 0
    tokens = getattr(method_result, "tokens", None)
    patterns = getattr(method_result, "patterns", None)
    scores = getattr(method_result, "scores", None)
    if isinstance(tokens, list):
        n = len(tokens)
    elif isinstance(patterns, np.ndarray) and patterns.ndim >= 2:
        n = int(patterns.shape[-1])
    elif isinstance(scores, np.ndarray) and scores.ndim == 1:
        n = int(scores.shape[0])
    placeholders = [Token(id=-1, piece=f"[{i}]", text=f"[{i}]", start=0, end=0) for i in range(n)]
    return AnalysisResult(
        model=ModelRef(name="unknown", revision="", family=""),
        text="",
        tokens=placeholders,
        methods={method: method_result},
    )
