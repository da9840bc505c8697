"""The Dramatiq broker on Redis, configured from WorkerSettings."""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, default_middleware

from lmlens_worker.settings import WorkerSettings

ACTOR_NAME = "lmlens_run_job"


def make_broker(settings: WorkerSettings) -> RedisBroker:
    broker = RedisBroker(
        url=settings.redis_url,
        namespace=settings.namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        middleware=[m() for m in default_middleware] + [CurrentMessage()],
    )
    broker.declare_queue(settings.queue)
    return broker
