"""The Dramatiq broker on Redis, configured from WorkerSettings."""

from __future__ import annotations

import logging
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware, TimeLimitExceeded, default_middleware

from lmlens_worker.settings import WorkerSettings

ACTOR_NAME = "lmlens_run_job"
log = logging.getLogger(__name__)


class JobRecords(Middleware):
    """Whatever way a message dies, its job record ends ``failed`` with the reason.

    It is the first middleware, so its ``after_*`` hooks run last (Dramatiq calls them in
    reverse), after ``Retries`` has decided: ``message.failed`` then means the message goes
    to the dead-letter queue. Without this, a job killed by the time limit on its last
    attempt kept reading ``running`` forever.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._store: Any = None

    def store(self) -> Any:
        if self._store is None:
            from lmlens_worker.store import JobStore

            self._store = JobStore(redis.Redis.from_url(self.settings.redis_url), self.settings.result_ttl_s,
                                   self.settings.lease_s)
        return self._store

    def _fail(self, message: Any, why: str, error: dict[str, Any]) -> None:
        if message.actor_name != ACTOR_NAME or not message.args:
            return
        try:
            self.store().fail_unless_final(str(message.args[0]), why, error)
        except redis.RedisError:  # Redis is gone too: the record reads stale once its lease runs out
            log.warning("could not record the failure of job %s", message.args[0], exc_info=True)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        if exception is None or not getattr(message, "failed", False):
            return
        attempts = int(message.options.get("retries", 0))
        if isinstance(exception, TimeLimitExceeded):
            limit = self.settings.time_limit_ms / 1000
            error = {"code": "time_limit", "message": f"every attempt ran past the time limit of {limit:g} s "
                     "(LMLENS_JOB_TIME_LIMIT_MS)"}
        else:
            error = {"code": "job_error", "message": f"the job raised {type(exception).__name__}"}
        self._fail(message, f"failed after {attempts} attempts", {**error, "attempts": attempts})

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._fail(message, "skipped by the worker", {"code": "job_skipped", "message": "the message was skipped"})


def make_broker(settings: WorkerSettings, *, socket_timeout: float | None = None) -> RedisBroker:
    client = None
    if socket_timeout is not None:  # the client side: fail fast while Redis is down
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=socket_timeout,
                                      socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 0))
    broker = RedisBroker(
        url=None if client is not None else settings.redis_url,
        client=client,
        namespace=settings.namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance,
        middleware=[JobRecords(settings)] + [m() for m in default_middleware] + [CurrentMessage()],
    )
    broker.declare_queue(settings.queue)
    return broker
