"""Typed errors with stable codes.

Every way in (Python, CLI, HTTP, jobs) reports failures through these classes, so a
client can branch on ``code`` without parsing the message.
"""

from __future__ import annotations


class LmlensError(Exception):
    """Base class: a stable ``code``, a human ``message`` and the offending ``field``."""

    code: str = "lmlens_error"
    http_status: int = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class EmptyTextError(LmlensError):
    code = "empty_text"


class TextTooLongError(LmlensError):
    code = "text_too_long"
    http_status = 413


class UnknownMethodError(LmlensError):
    code = "unknown_method"


class UnknownModelError(LmlensError):
    code = "unknown_model"
    http_status = 404


class ModelNotInstalledError(LmlensError):
    code = "model_not_installed"
    http_status = 404


class ModelLoadError(LmlensError):
    code = "model_load_failed"
    http_status = 500


class DeviceUnavailableError(LmlensError):
    """MODEL_DEVICE (or ``device=``) names a device this torch build or machine lacks."""

    code = "device_unavailable"
    http_status = 503


class UnsupportedArchitectureError(LmlensError):
    code = "unsupported_architecture"
    http_status = 422


class InvalidParamsError(LmlensError):
    code = "invalid_params"
    http_status = 422


class MethodFailedError(LmlensError):
    code = "method_failed"
    http_status = 500


class MemoryLimitError(LmlensError):
    code = "memory_limit"
    http_status = 413
