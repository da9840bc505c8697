"""Worker settings from the environment."""

from __future__ import annotations

import os

import msgspec


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
        )
