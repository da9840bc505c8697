"""Job records, per-item progress and results in Redis.

Keys (all expire after ``result_ttl_s``):

    lmlens:job:{id}          hash: kind, params, status, progress, message, attempts, error, ...
    lmlens:job:{id}:items    hash: item index -> encoded item (what a retry resumes from)
    lmlens:job:{id}:result   the encoded result, written once (SET NX)
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
import redis

STATUSES = ("queued", "running", "retrying", "done", "failed", "cancelled")
FINAL = {"done", "failed", "cancelled"}


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A job's record. ``stale``: it reads ``running`` but its worker has not renewed the
    lease (``heartbeat``) for ``lease_s``: the worker is gone, and the job waits for
    Dramatiq to requeue it (or for nobody, if every worker is gone)."""

    id: str
    kind: str
    status: str
    progress: float
    message: str
    attempts: int
    error: dict[str, Any] | None
    resumed_items: int
    created: float
    updated: float
    has_result: bool
    heartbeat: float | None = None
    stale: bool = False


class JobStore:
    def __init__(self, client: redis.Redis, ttl_s: int, lease_s: float = 60.0) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.lease_s = lease_s

    @staticmethod
    def key(job_id: str) -> str:
        return f"lmlens:job:{job_id}"

    def create(self, kind: str, params: dict[str, Any] | bytes) -> str:
        job_id = uuid.uuid4().hex
        if not isinstance(params, bytes):
            params = msgspec.json.encode(params)
        now = time.time()
        key = self.key(job_id)
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping={
                "kind": kind, "params": params, "status": "queued", "progress": 0.0,
                "message": "queued", "attempts": 0, "error": b"", "resumed_items": 0, "cancelled": 0,
                "created": now, "updated": now,
            })
            pipe.expire(key, self.ttl_s)
            pipe.execute()
        return job_id

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(self.key(job_id)))

    def params(self, job_id: str) -> tuple[str, dict[str, Any]]:
        kind, params = self.client.hmget(self.key(job_id), "kind", "params")
        if kind is None:
            raise KeyError(job_id)
        return kind.decode(), msgspec.json.decode(params or b"{}")

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        if "error" in fields and not isinstance(fields["error"], bytes):
            fields["error"] = msgspec.json.encode(fields["error"])
        key = self.key(job_id)
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def start_attempt(self, job_id: str, resumed_items: int) -> int:
        attempts = int(self.client.hincrby(self.key(job_id), "attempts", 1))
        self.update(job_id, status="running", message=f"attempt {attempts}", resumed_items=resumed_items)
        return attempts

    def status(self, job_id: str) -> JobStatus:
        raw = self.client.hgetall(self.key(job_id))
        if not raw:
            raise KeyError(job_id)
        get = {k.decode(): v for k, v in raw.items()}
        error = get.get("error") or b""
        status = get["status"].decode()
        heartbeat = float(get["heartbeat"]) if get.get("heartbeat") else None
        stale = status == "running" and time.time() - (heartbeat or float(get["updated"])) > self.lease_s
        return JobStatus(
            id=job_id,
            kind=get["kind"].decode(),
            status=status,
            progress=float(get["progress"]),
            message=get["message"].decode(),
            attempts=int(get["attempts"]),
            error=msgspec.json.decode(error) if error else None,
            resumed_items=int(get.get("resumed_items", 0)),
            created=float(get["created"]),
            updated=float(get["updated"]),
            has_result=bool(self.client.exists(self.key(job_id) + ":result")),
            heartbeat=heartbeat,
            stale=stale,
        )

    def beat(self, job_id: str) -> None:
        """Renew the running job's lease."""
        self.client.hset(self.key(job_id), "heartbeat", time.time())

    def fail_unless_final(self, job_id: str, message: str, error: dict[str, Any]) -> bool:
        """Mark a job failed unless it already ended (done, failed, cancelled); True if marked."""
        raw = self.client.hget(self.key(job_id), "status")
        if raw is None or raw.decode() in FINAL or self.result(job_id) is not None:
            return False
        self.update(job_id, status="failed", message=message, error=error)
        return True

    # --- items and results -------------------------------------------------------------

    def item_done(self, job_id: str, index: int, value: bytes) -> None:
        key = self.key(job_id) + ":items"
        with self.client.pipeline() as pipe:
            pipe.hset(key, str(index), value)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def done_items(self, job_id: str) -> dict[int, bytes]:
        return {int(k): v for k, v in self.client.hgetall(self.key(job_id) + ":items").items()}

    def items(self, job_id: str, start: int, limit: int) -> dict[int, bytes]:
        """The recorded items ``start .. start + limit - 1`` (those that exist)."""
        indices = list(range(start, start + limit))
        values = self.client.hmget(self.key(job_id) + ":items", [str(i) for i in indices])
        return {i: bytes(v) for i, v in zip(indices, values, strict=True) if v is not None}

    def store_result(self, job_id: str, value: bytes) -> bool:
        """Write the result once; a second delivery of the same job does not overwrite it."""
        return bool(self.client.set(self.key(job_id) + ":result", value, nx=True, ex=self.ttl_s))

    def result(self, job_id: str) -> bytes | None:
        value = self.client.get(self.key(job_id) + ":result")
        return None if value is None else bytes(value)

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop; True when it was not finished yet."""
        status = self.status(job_id).status
        if status in FINAL:
            return False
        self.update(job_id, cancelled=1, status="cancelled", message="cancelled by request")
        return True

    def is_cancelled(self, job_id: str) -> bool:
        return self.client.hget(self.key(job_id), "cancelled") == b"1"
