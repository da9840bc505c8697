"""A TopK SAE trained through the job queue survives a SIGKILLed worker (issue 14).

A real ``lmlens worker`` on a real Redis trains ``sae.train`` on tiny-llama; once the job
record shows progress past the first checkpoint the worker's process group is stopped,
the checkpoint on disk is read, and the group is SIGKILLed. A second worker gets the
message back (the dead worker's heartbeat lapses), resumes from that checkpoint and
saves exactly one artifact, whose metrics match the same params trained uninterrupted
in this process.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from lmlens import Analyzer, ArtifactStore
from lmlens.settings import Settings
from lmlens_worker.queue import RedisJobQueue
from lmlens_worker.settings import WorkerSettings

from .conftest import worker_env

lmlens_sae = pytest.importorskip("lmlens_sae", reason="the SAE plugin (plugins/sae) is not installed")

NAME = "killed-topk"
CHECKPOINT_EVERY = 5
# About 12 Ki usable tokens of tiny-llama text: 8000 train tokens, 5 % held out for the metrics.
TEXTS = [
    f"Note {i}: a {who} carried {n} {thing} across the {where} before {when}, "
    f"then wrote a short letter about the trip and left it by the door."
    for i, (who, n, thing, where, when) in enumerate(
        (w, n, t, p, h)
        for w in ("baker", "sailor", "teacher", "farmer", "clerk")
        for n in (3, 9, 14)
        for t in ("boxes", "lamps", "books", "baskets")
        for p, h in (("bridge", "noon"), ("valley", "dusk"))
    )
]
PARAMS = {
    "texts": TEXTS, "model": "tiny-llama", "name": NAME, "point": "blocks.1.resid_post", "architecture": "topk",
    "k": 8, "d_sae": 128, "tokens": 8000, "batch_size": 128, "lr": 3e-3, "buffer_mb": 0.25,
    "checkpoint_every": CHECKPOINT_EVERY, "evaluate_ce": False, "dead_after_tokens": 4000, "seed": 0,
}
KILL_AT = 0.2  # fraction of the tokens: step >= 12 of 63, so the checkpoint of step 10 is on disk
POLLS = 3000  # 0.1 s apart: a generous bound for a busy machine, not a timing margin


def test_sae_job_killed_mid_run_resumes_and_matches_an_uninterrupted_run(
    redis_server, start_worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in worker_env(redis_server.url).items():
        if key.startswith(("LMLENS_", "REDIS_URL")):
            monkeypatch.setenv(key, value)
    queue = RedisJobQueue(WorkerSettings.from_env())
    worker_dir = tmp_path / "worker-artifacts"
    env = {**worker_env(redis_server.url), "LMLENS_ARTIFACT_DIR": str(worker_dir)}
    store = ArtifactStore(worker_dir)

    first = start_worker(env)
    job_id = queue.submit("sae.train", PARAMS)
    for _ in range(POLLS):
        status = queue.status(job_id)
        assert status["status"] in ("queued", "running"), f"the job ended before the kill: {status}"
        if status["progress"] >= KILL_AT:
            os.killpg(first.process.pid, signal.SIGSTOP)  # freeze it, so the checkpoint read is the one it leaves
            checkpoint = store.load_checkpoint("sae", NAME)
            if checkpoint is not None:
                break
            os.killpg(first.process.pid, signal.SIGCONT)  # stopped between the renames of a checkpoint write
        time.sleep(0.1)
    else:
        raise AssertionError(f"no progress past {KILL_AT} with a checkpoint after {POLLS} polls: {status}")
    step_at_kill = checkpoint.config["checkpoint"]["trainer"]["step"]
    first.kill(signal.SIGKILL)
    assert step_at_kill >= 2 * CHECKPOINT_EVERY and step_at_kill % CHECKPOINT_EVERY == 0
    assert queue.status(job_id)["status"] == "running"  # the dead worker never finished it
    assert store.list(kind="sae") == []  # nothing saved yet, only the checkpoint

    start_worker(env)
    # The uninterrupted reference, in this process with its own store, while the second worker starts.
    monkeypatch.delenv("LMLENS_ARTIFACT_DIR", raising=False)
    reference_analyzer = Analyzer(settings=Settings(cache_dir=str(tmp_path / "reference"), default_model="tiny-llama"))
    from lmlens_sae.service import TrainSAEParams, run_training

    reference = run_training(reference_analyzer, TrainSAEParams(**PARAMS))
    assert reference["resumed_from_step"] == 0

    result = queue.result(job_id, timeout=300)
    status = queue.status(job_id)
    assert (status["status"], status["attempts"]) == ("done", 2)
    assert result["resumed_from_step"] == step_at_kill  # resumed from the checkpoint it was killed after
    assert step_at_kill < result["metrics"]["train_steps"]
    assert queue.store.client.exists(queue.store.key(job_id) + ":result") == 1

    saved = store.list(kind="sae")
    assert [(info.name, info.builtin) for info in saved] == [(NAME, False)]  # exactly one artifact
    assert sorted(p.name for p in (worker_dir / "sae").iterdir()) == [NAME]
    assert saved[0].content_hash == result["content_hash"]
    assert store.load_checkpoint("sae", NAME) is None  # dropped once the artifact was saved
    assert saved[0].model == store.load("sae", NAME).model == reference_analyzer.artifact_store.load("sae", NAME).model

    found, expected = result["metrics"], reference["metrics"]
    assert found["train_tokens"] == pytest.approx(expected["train_tokens"], rel=0.05)
    assert found["eval_explained_variance"] == pytest.approx(expected["eval_explained_variance"], abs=0.03)
    assert found["eval_l0"] == pytest.approx(expected["eval_l0"], abs=0.5)
    assert found["eval_dead_fraction"] == pytest.approx(expected["eval_dead_fraction"], abs=0.1)
    assert saved[0].metrics["eval_explained_variance"] == found["eval_explained_variance"]
