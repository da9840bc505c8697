"""Several threads share one model, as the HTTP pool's workers do.

head_importance writes activations (ablations) on every pass; attention only reads. If
any write reached a pass outside the kernel's lock, the reader would see ablated heads.
Iteration counts, not wall-clock time, bound the test; a barrier starts both threads together.
"""

from __future__ import annotations

import threading

import numpy as np

TEXT = "Two threads share one model and neither may see the other's patches."
PARAMS = {"attention": {"patterns": False, "top_k": 0}}


def test_ablations_never_leak_into_a_concurrent_analysis(tiny_analyzer) -> None:
    analyzer = tiny_analyzer("gpt2")
    reference = analyzer.analyze(TEXT, ["attention"], PARAMS, use_cache=False).methods["attention"].entropy
    clean_importance = analyzer.analyze(
        TEXT, ["head_importance"], {"head_importance": {"batch_size": 4}}, use_cache=False
    ).methods["head_importance"]
    start = threading.Barrier(2)
    wrong: list[float] = []
    importance_drift: list[float] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            start.wait(timeout=60)
            for _ in range(60):
                got = analyzer.analyze(TEXT, ["attention"], PARAMS, use_cache=False).methods["attention"].entropy
                if not np.allclose(got, reference, atol=1e-6):
                    wrong.append(float(np.abs(got - reference).max()))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def writer() -> None:
        try:
            start.wait(timeout=60)
            for _ in range(12):
                got = analyzer.analyze(
                    TEXT, ["head_importance"], {"head_importance": {"batch_size": 4}}, use_cache=False
                ).methods["head_importance"]
                importance_drift.append(float(np.abs(got.zero - clean_importance.zero).max()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert wrong == [], f"{len(wrong)} of 60 attention results were wrong (max entropy error {max(wrong):.3g})"
    assert max(importance_drift) < 1e-5
