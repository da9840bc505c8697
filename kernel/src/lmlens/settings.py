"""Settings read from the environment, with the names the product description promised."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import platformdirs


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Limits and locations. ``Settings.from_env()`` reads the documented variables."""

    default_model: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: str = ""
    max_sequence_length: int = 2048
    max_text_chars: int = 200_000
    max_document_chars: int = 5_000_000
    model_lru_size: int = 2
    memory_limit_gb: float = 16.0
    # When set, only these model specs load (a service, a worker); hub ids are never fetched.
    allowed_models: list[str] | None = None

    @classmethod
    def from_env(cls) -> Settings:
        cache_dir = (
            os.environ.get("LMLENS_CACHE_DIR")
            or os.environ.get("MODEL_CACHE_DIR")
            or platformdirs.user_cache_dir("lmlens")
        )
        return cls(
            default_model=os.environ.get("LMLENS_DEFAULT_MODEL", "smollm2-135m"),
            device=os.environ.get("MODEL_DEVICE", "auto"),
            dtype=os.environ.get("MODEL_DTYPE", "auto"),
            cache_dir=cache_dir,
            max_sequence_length=_env_int("MAX_SEQUENCE_LENGTH", 2048),
            max_text_chars=_env_int("LMLENS_MAX_TEXT_CHARS", 200_000),
            max_document_chars=_env_int("LMLENS_MAX_DOCUMENT_CHARS", 5_000_000),
            model_lru_size=_env_int("LMLENS_MODEL_LRU_SIZE", 2),
            memory_limit_gb=_env_float("MEMORY_LIMIT_GB", 16.0),
            allowed_models=[m.strip() for m in os.environ["LMLENS_MODELS"].split(",") if m.strip()]
            if os.environ.get("LMLENS_MODELS")
            else None,
        )

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir or platformdirs.user_cache_dir("lmlens"))
