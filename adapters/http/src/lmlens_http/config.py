"""Service settings: defaults < ``config.yaml`` < environment variables < command-line flags.

The environment names are the ones the README promises (``API_HOST``, ``REDIS_URL``,
``CACHE_TTL`` ...). ``config.yaml`` uses the field names of ``ServiceConfig``; its path
is ``$LMLENS_CONFIG``, else ``./config.yaml`` when that file exists. The product
description's nested file (``model:``, ``api:`` ... sections) is refused with a message
that names the flat key replacing each nested one (``NESTED``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from lmlens.errors import LmlensError
from lmlens.settings import Settings

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(LmlensError):
    code = "invalid_config"


class ServiceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    workers: Positive = 1  # uvicorn processes
    model_device: str = "auto"
    model_cache_dir: str = ""  # "" = the kernel's default (LMLENS_CACHE_DIR or the user cache)
    redis_url: str | None = None  # None: cache and rate limits in process
    cache_ttl: Seconds = 3600.0
    redis_timeout_s: Seconds = 1.0  # one Redis call; past it the request goes uncached
    max_batch_size: Positive = 32
    max_sequence_length: Positive = 2048
    memory_limit_gb: Annotated[float, msgspec.Meta(gt=0)] = 16.0
    default_model: str | None = None  # None: the kernel's default (smollm2-135m)
    models: list[str] | None = None  # the allowlist; None: every registered alias
    preload: list[str] = []  # models to load at startup; the server listens once they are loaded
    warm_default: bool = True  # no preload: load the default model in the background at startup
    pool_workers: Positive = 2  # threads running model work
    queue_size: NonNegative = 16  # admitted jobs waiting for a thread; more get 503
    request_timeout_s: Seconds = 60.0
    rate_limit: NonNegative = 600  # requests per client per rate_window_s; 0 = no limit
    rate_window_s: Seconds = 60.0
    max_body_bytes: Positive = 4 * 1024 * 1024
    max_job_texts: Positive = 10_000  # texts in one analyze_batch job (POST /jobs, a big /analyze/batch)
    api_keys: list[str] = []  # when any key is set (here or in the file), every route but /health needs one
    api_key_file: str = ""  # a file of sha256 hex digests of keys, one a line ("#" comments)
    allowed_origins: list[str] = []  # browser origins allowed to call (CORS); others get 403
    memory_cache_entries: Positive = 256
    response_memo_mb: NonNegative = 64  # encoded hot cache hits kept in process; 0 = off
    access_log: bool = True


ENVIRONMENT = {
    "API_HOST": "host",
    "API_PORT": "port",
    "API_WORKERS": "workers",
    "MODEL_DEVICE": "model_device",
    "MODEL_CACHE_DIR": "model_cache_dir",
    "REDIS_URL": "redis_url",
    "CACHE_TTL": "cache_ttl",
    "REDIS_TIMEOUT": "redis_timeout_s",
    "MAX_BATCH_SIZE": "max_batch_size",
    "MAX_SEQUENCE_LENGTH": "max_sequence_length",
    "MEMORY_LIMIT_GB": "memory_limit_gb",
    "LMLENS_DEFAULT_MODEL": "default_model",
    "LMLENS_MODELS": "models",
    "LMLENS_PRELOAD": "preload",
    "LMLENS_WARM_DEFAULT": "warm_default",
    "API_POOL_WORKERS": "pool_workers",
    "API_QUEUE_SIZE": "queue_size",
    "API_REQUEST_TIMEOUT": "request_timeout_s",
    "API_RATE_LIMIT": "rate_limit",
    "API_RATE_WINDOW": "rate_window_s",
    "API_MAX_BODY_BYTES": "max_body_bytes",
    "API_MAX_JOB_TEXTS": "max_job_texts",
    "LMLENS_API_KEYS": "api_keys",
    "LMLENS_API_KEY_FILE": "api_key_file",
    "LMLENS_ALLOWED_ORIGINS": "allowed_origins",
    "API_RESPONSE_MEMO_MB": "response_memo_mb",
    "API_ACCESS_LOG": "access_log",
}
_LISTS = {"models", "preload", "api_keys", "allowed_origins"}

# The product description's nested config.yaml (model:, analysis:, api:, visualization:)
# and the flat keys that replace it; None: no setting of the service does that.
NESTED = {
    "model.default_model": "default_model",
    "model.device": "model_device",
    "model.fp16": None,  # the environment's MODEL_DTYPE=float16 does
    "analysis.default_methods": None,
    "analysis.cache_results": None,  # results are cached whenever a cache exists
    "api.rate_limit": "rate_limit",
    "api.timeout": "request_timeout_s",
    "visualization.default_colormap": None,
    "visualization.interactive": None,
}
_NOTES = {"model.fp16": "set MODEL_DTYPE=float16"}


def _reject_nested(file: Path, loaded: dict[str, Any]) -> None:
    """A nested section (the product description's shape) gets a message naming the flat keys."""
    flat = set(ServiceConfig.__struct_fields__)
    sections = [k for k, v in loaded.items() if isinstance(v, dict) and k not in flat]
    if not sections:
        return
    lines = []
    for section in sections:
        for key in loaded[section]:
            dotted = f"{section}.{key}"
            target = NESTED.get(dotted, "?")
            if target is None:
                lines.append(f"{dotted}: no equivalent" + (f" ({_NOTES[dotted]})" if dotted in _NOTES else ""))
            elif target == "?":
                lines.append(f"{dotted}: unknown")
            else:
                lines.append(f"{dotted} -> {target}")
    raise ConfigError(
        f"{file} has nested sections ({', '.join(sections)}); config.yaml takes flat keys "
        f"({', '.join(sorted(flat))}). Replace: " + "; ".join(lines),
        field="config",
    )


def _from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in ENVIRONMENT.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        values[field] = [p.strip() for p in raw.split(",") if p.strip()] if field in _LISTS else raw
    return values


def config_path(env: Mapping[str, str]) -> Path | None:
    if env.get("LMLENS_CONFIG"):
        return Path(env["LMLENS_CONFIG"])
    local = Path("config.yaml")
    return local if local.is_file() else None


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServiceConfig:
    """Merge the layers and validate once; a bad value names its field."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    file = Path(path) if path is not None else config_path(env)
    if file is not None:
        try:
            loaded = msgspec.yaml.decode(file.read_bytes()) or {}
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"cannot read {file}: {exc}", field="config") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file} must hold a mapping of settings", field="config")
        _reject_nested(file, loaded)
        merged.update(loaded)
    merged.update(_from_environment(env))
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # strict=False: environment values arrive as strings ("8000", "1.5")
        return msgspec.convert(merged, ServiceConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None


def kernel_settings(config: ServiceConfig) -> Settings:
    """The kernel's Settings with this service's overrides."""
    base = Settings.from_env()
    return msgspec.structs.replace(
        base,
        default_model=config.default_model or base.default_model,
        device=config.model_device,
        cache_dir=config.model_cache_dir or base.cache_dir,
        max_sequence_length=config.max_sequence_length,
        memory_limit_gb=config.memory_limit_gb,
    )
