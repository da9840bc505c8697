"""The module Dramatiq workers import: the broker, and the one actor that runs any job.

    dramatiq lmlens_worker.actors --processes 2 --threads 1     (or: lmlens worker)
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage

from lmlens.analyzer import Analyzer
from lmlens.plugins import PluginHost
from lmlens_worker.broker import ACTOR_NAME, make_broker
from lmlens_worker.runner import execute
from lmlens_worker.settings import WorkerSettings, analyzer_settings
from lmlens_worker.store import JobStore

settings = WorkerSettings.from_env()
broker = make_broker(settings)
dramatiq.set_broker(broker)

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _shared() -> tuple[JobStore, PluginHost, Analyzer]:
    """One plugin host and analyzer per worker process, so models stay loaded between jobs."""
    with _lock:
        if not _state:
            host = PluginHost()
            _state["store"] = JobStore(redis.Redis.from_url(settings.redis_url), settings.result_ttl_s,
                                       settings.lease_s)
            _state["host"] = host
            _state["analyzer"] = Analyzer(plugins=host, settings=analyzer_settings(list(host.aliases)))
        return _state["store"], _state["host"], _state["analyzer"]


@dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=settings.queue,
    max_retries=settings.max_retries,
    min_backoff=settings.min_backoff_ms,
    max_backoff=settings.max_backoff_ms,
    time_limit=settings.time_limit_ms,
)
def run_job(job_id: str) -> None:
    store, host, analyzer = _shared()
    message = CurrentMessage.get_current_message()
    retries = int(message.options.get("retries", 0)) if message is not None else 0
    execute(job_id, store=store, host=host, analyzer=analyzer, retries=retries, max_retries=settings.max_retries)
