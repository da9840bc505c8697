"""lmlens: look inside transformer language models.

The public face: ``Analyzer`` to run analyses, ``hookimpl``/``Method``/``Need``/``Result``
to write plugins, and the typed errors every way in reports.
"""

from lmlens.analyzer import Analyzer
from lmlens.capture import Need
from lmlens.errors import (
    EmptyTextError,
    InvalidParamsError,
    LmlensError,
    MemoryLimitError,
    MethodFailedError,
    ModelLoadError,
    ModelNotInstalledError,
    TextTooLongError,
    UnknownMethodError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from lmlens.hookspecs import hookimpl
from lmlens.method import Method, Trace
from lmlens.models import LoadedModel, ModelAlias, ModelInfo
from lmlens.wire import AnalysisResult, Result, Token

__version__ = "0.1.0"

__all__ = [
    "AnalysisResult",
    "Analyzer",
    "EmptyTextError",
    "InvalidParamsError",
    "LmlensError",
    "LoadedModel",
    "MemoryLimitError",
    "Method",
    "MethodFailedError",
    "ModelAlias",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotInstalledError",
    "Need",
    "Result",
    "TextTooLongError",
    "Token",
    "Trace",
    "UnknownMethodError",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "__version__",
    "hookimpl",
]
