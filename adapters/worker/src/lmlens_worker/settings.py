"""Worker settings from the environment."""

from __future__ import annotations

import os

import msgspec

from lmlens.settings import Settings


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "lmlens"
    namespace: str = "lmlens-dramatiq"
    result_ttl_s: int = 7 * 24 * 3600  # results and job records live this long in Redis
    max_retries: int = 3
    min_backoff_ms: int = 2_000
    max_backoff_ms: int = 60_000
    time_limit_ms: int = 6 * 3600 * 1000
    # A worker silent for this long is dead: its unfinished messages go back on the queue.
    heartbeat_timeout_ms: int = 30_000
    # Chance (per million broker calls) of the maintenance that requeues dead workers' messages.
    maintenance_chance: int = 10_000
    # A running job renews its lease every lease_s / 3; a record not renewed for lease_s reads stale.
    lease_s: float = 60.0
    redis_timeout_s: float = 2.0  # one Redis call from the job routes and the CLI

    @classmethod
    def from_env(cls) -> WorkerSettings:
        return cls(
            redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            queue=os.environ.get("LMLENS_JOB_QUEUE", "lmlens"),
            result_ttl_s=_int("LMLENS_JOB_TTL", 7 * 24 * 3600),
            max_retries=_int("LMLENS_JOB_MAX_RETRIES", 3),
            min_backoff_ms=_int("LMLENS_JOB_MIN_BACKOFF_MS", 2_000),
            max_backoff_ms=_int("LMLENS_JOB_MAX_BACKOFF_MS", 60_000),
            time_limit_ms=_int("LMLENS_JOB_TIME_LIMIT_MS", 6 * 3600 * 1000),
            heartbeat_timeout_ms=_int("LMLENS_WORKER_HEARTBEAT_MS", 30_000),
            maintenance_chance=_int("LMLENS_WORKER_MAINTENANCE_CHANCE", 10_000),
            lease_s=float(os.environ.get("LMLENS_JOB_LEASE_S") or 60.0),
            redis_timeout_s=float(os.environ.get("LMLENS_JOB_REDIS_TIMEOUT") or 2.0),
        )


def analyzer_settings(aliases: list[str]) -> Settings:
    """The kernel's settings for a worker's Analyzer: without ``LMLENS_MODELS``, only the
    registered aliases (never a path or hub id a job names), unless
    ``LMLENS_ALLOW_ANY_MODEL=1`` says otherwise."""
    settings = Settings.from_env()
    if settings.allowed_models is None and os.environ.get("LMLENS_ALLOW_ANY_MODEL", "").lower() not in (
        "1", "true", "yes"
    ):
        allowed = list(dict.fromkeys([*sorted(aliases), settings.default_model]))
        settings = msgspec.structs.replace(settings, allowed_models=allowed)
    return settings
