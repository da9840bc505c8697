"""Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless set.

torch's CPU build runs its intra-op threads on GNU OpenMP, which by default spins a
waiting thread for a while after every parallel region. On a CPU shared with other work
(a server whose pool runs two analyses at once, other processes) the spinning threads
take the cores the working ones need: on two busy cores (load average 8-11) a SmolLM2
forward pass of 8 tokens took 3.0-4.2 s with spinning and 0.24-0.41 s with sleeping
threads (512 tokens: 11.6-17.2 s vs 3.7-3.9 s), and the service's first /analyze
first analysis (the breakdown of ``benchmarks/bench_cold_start.py``, medians of 3
at load 7-9) 4.8 s vs 0.27 s. The setting is read once,
when torch loads its OpenMP library, so it only takes effect when ``lmlens`` is imported
before ``torch`` (the ``lmlens`` command, its server and workers); a value already in
the environment is kept (``OMP_WAIT_POLICY=ACTIVE`` restores spinning).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
