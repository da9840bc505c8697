"""Attention flow (Abnar and Zuidema 2020): max-flow through the layered attention graph.

Nodes are (layer boundary l, token i) for l = 0..L; an edge runs from (l, i) down to
(l - 1, j) with capacity ``T_l[i, j]``, the layer's residual-augmented attention. The
flow from output token q to input token k is the max-flow from (L, q) to (0, k); each
row is then normalised to sum to 1, as in the paper's code. It needs one max-flow per
(q, k) pair, so it is offered only for short texts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

EPS = 1e-12


class FlowGraph:
    """A directed graph with float capacities; Dinic's algorithm for max-flow."""

    def __init__(self, n_nodes: int) -> None:
        self.n = n_nodes
        self.adj: list[list[int]] = [[] for _ in range(n_nodes)]
        self.to: list[int] = []
        self.cap: list[float] = []

    def add(self, u: int, v: int, capacity: float) -> None:
        """Edge u -> v, and its residual twin v -> u (capacity 0) at the next index."""
        self.adj[u].append(len(self.to))
        self.to.append(v)
        self.cap.append(capacity)
        self.adj[v].append(len(self.to))
        self.to.append(u)
        self.cap.append(0.0)

    def max_flow(self, source: int, sink: int) -> float:
        residual = self.cap[:]
        total = 0.0
        while True:
            level = self._levels(source, residual)
            if level[sink] < 0:
                return total
            next_edge = [0] * self.n
            while True:
                pushed = self._push(source, sink, float("inf"), level, next_edge, residual)
                if pushed <= EPS:
                    break
                total += pushed

    def _levels(self, source: int, residual: list[float]) -> list[int]:
        level = [-1] * self.n
        level[source] = 0
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for e in self.adj[u]:
                v = self.to[e]
                if level[v] < 0 and residual[e] > EPS:
                    level[v] = level[u] + 1
                    queue.append(v)
        return level

    def _push(
        self, u: int, sink: int, limit: float, level: list[int], next_edge: list[int], residual: list[float]
    ) -> float:
        if u == sink:
            return limit
        edges = self.adj[u]
        while next_edge[u] < len(edges):
            e = edges[next_edge[u]]
            v = self.to[e]
            if residual[e] > EPS and level[v] == level[u] + 1:
                pushed = self._push(v, sink, min(limit, residual[e]), level, next_edge, residual)
                if pushed > EPS:
                    residual[e] -= pushed
                    residual[e ^ 1] += pushed  # twins sit at 2i and 2i + 1
                    return pushed
            next_edge[u] += 1
        return 0.0


def attention_flow(transitions: Sequence[torch.Tensor]) -> torch.Tensor:
    """layer-list of [q, k] row-stochastic transitions (first layer first) -> [q, k] float64."""
    n = transitions[0].shape[-1]
    n_layers = len(transitions)
    graph = FlowGraph((n_layers + 1) * n)
    for layer, t in enumerate(transitions, start=1):  # layer l sits between boundaries l and l - 1
        rows, cols = torch.nonzero(t > EPS, as_tuple=True)
        values = t[rows, cols].tolist()
        for i, j, c in zip(rows.tolist(), cols.tolist(), values, strict=True):
            graph.add(layer * n + i, (layer - 1) * n + j, c)
    flows = torch.zeros(n, n, dtype=torch.float64)
    top = n_layers * n
    for q in range(n):
        for k in range(n):
            flows[q, k] = graph.max_flow(top + q, k)
    return flows / flows.sum(-1, keepdim=True).clamp(min=1e-300)
