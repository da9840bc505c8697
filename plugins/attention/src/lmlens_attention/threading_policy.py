"""Reducers run on one intra-op thread.

A reducer is a few dozen small tensor ops on one layer's map (a few MB). With several
intra-op threads every op ends in an OpenMP barrier, and on a CPU shared with other
work a barrier waits for whichever thread was descheduled: measured on SmolLM2 at 512
tokens on two busy cores, the reducers of one layer took 206 ms with two threads and
14 ms with one. The forward pass itself keeps every thread; only the hook's own work
is narrowed, and the setting is restored before the model continues.

It is opt-in (``LMLENS_ONE_THREAD_REDUCERS=1``): on a quiet machine two threads were
faster (SmolLM2, 512 tokens: `attention` at 1.14x a bare pass with two threads, 1.28x
with one), and ``torch.set_num_threads`` is process-wide, so in a server whose pool
runs two analyses at once it would narrow the other one's forward pass too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

import torch

R = TypeVar("R")


def on_one_thread(reducer: Callable[[torch.Tensor], R]) -> Callable[[torch.Tensor], R]:
    if os.environ.get("LMLENS_ONE_THREAD_REDUCERS") != "1":
        return reducer
    @functools.wraps(reducer)
    def run(pattern: torch.Tensor) -> R:
        before = torch.get_num_threads()
        if pattern.device.type != "cpu" or before == 1:
            return reducer(pattern)
        torch.set_num_threads(1)
        try:
            return reducer(pattern)
        finally:
            torch.set_num_threads(before)

    return run

