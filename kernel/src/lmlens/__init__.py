"""lmlens: look inside transformer language models.

The public face: ``Analyzer`` to run analyses, and what a plugin author uses:
``hookimpl``, ``Method``/``Plan``/``Need``/``Trace``/``Result``, the write hook ``Patch``,
the one pass entry point ``run_forward``, fitted ``Artifact``s and their store, the
cancellation token, and the typed errors every way in reports. Everything else is
internal.
"""

from importlib.metadata import PackageNotFoundError, version

from lmlens import _openmp  # noqa: F401  (first: it must run before torch is imported)
from lmlens.analyzer import Analyzer
from lmlens.artifacts import (
    Artifact,
    ArtifactInfo,
    ArtifactInvalidError,
    ArtifactModelMismatchError,
    ArtifactNotFoundError,
    ArtifactStore,
    data_provenance,
    model_fingerprint,
)
from lmlens.budget import rows_per_pass
from lmlens.cache import Cache
from lmlens.cancel import Cancelled, CancelToken
from lmlens.capture import Need, Patch, PatchContext
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
from lmlens.forward import run_forward
from lmlens.generation import greedy_generate
from lmlens.hookspecs import hookimpl
from lmlens.jobs import Job, JobContext, QueueUnavailableError
from lmlens.method import Method, Plan, Trace
from lmlens.models import LoadedModel, ModelAlias, ModelInfo
from lmlens.request import Request
from lmlens.special import special_positions
from lmlens.wire import AnalysisResult, Float32Array, Result, Token

try:
    __version__ = version("lmlens")
except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "AnalysisResult",
    "Analyzer",
    "Artifact",
    "ArtifactInfo",
    "ArtifactInvalidError",
    "ArtifactModelMismatchError",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "Cache",
    "CancelToken",
    "Cancelled",
    "EmptyTextError",
    "Float32Array",
    "InvalidParamsError",
    "Job",
    "JobContext",
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
    "Patch",
    "PatchContext",
    "Plan",
    "QueueUnavailableError",
    "Request",
    "Result",
    "TextTooLongError",
    "Token",
    "Trace",
    "UnknownMethodError",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "__version__",
    "data_provenance",
    "greedy_generate",
    "hookimpl",
    "model_fingerprint",
    "rows_per_pass",
    "run_forward",
    "special_positions",
]
