"""Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless set.

torch's CPU build runs its intra-op threads on GNU OpenMP, which by default spins a
waiting thread for a while after every parallel region. On a CPU shared with other work
(a server whose pool runs two analyses at once, other processes) the spinning threads
take the cores the working ones need. On two busy cores (load average 8-11), SmolLM2
forward passes (medians of 3): 8 tokens 3.0-4.2 s spinning vs 0.24-0.41 s sleeping,
512 tokens 11.6-17.5 s vs 3.7-4.0 s; the first analysis of the service's cold start
(``benchmarks/bench_cold_start.py``) 3.2 s vs 0.3 s. Not measured on an idle machine,
where sleeping threads may cost a little wake-up latency per parallel region.

The setting is read once, when torch loads its OpenMP library, so it only takes effect
when ``lmlens`` is imported before ``torch`` (the ``lmlens`` command, its server and
workers); a value already in the environment is kept (``OMP_WAIT_POLICY=ACTIVE``
restores spinning).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
