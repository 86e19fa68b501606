"""Experts to nodes by hypergraph partitioning (Mt-KaHyPar, deterministic preset).

Under the engines' static rule a token crosses the network once for every remote node that
holds one of its experts. With every expert on one node ("homed"), a token's sends are the
connectivity of its hyperedge minus one, when the hyperedge holds the token's experts and a
vertex fixed to the token's own node: the (lambda - 1) objective that Mt-KaHyPar minimises.

* vertices: the homed experts, weighted by load (integers), and one vertex per node, fixed to it
  (weight 1: Mt-KaHyPar needs positive weights);
* hyperedges: one per distinct (homed experts of a token, source node), weighted by how many
  planning tokens share it;
* balance: a maximum weight per node (the load a node may serve).

Mt-KaHyPar's deterministic preset gives the same partition for the same input and seed on any
machine and thread count. A partition here refines a start (V-cycles), which keeps it fast on
small hypergraphs (a full multilevel partition of a DeepSeek-V3 layer takes about a second).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["refine_homes"]

_LOCK = threading.Lock()
_INIT: Any = None


def _initializer() -> Any:
    """Mt-KaHyPar's initializer, one per process (one thread: layers run in parallel)."""
    global _INIT
    with _LOCK:
        if _INIT is None:
            import mtkahypar

            _INIT = mtkahypar.initialize(1, False)
        return _INIT


def _hyperedges(ids: np.ndarray, node: np.ndarray, local: np.ndarray,
                num_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR hyperedges: ``(indptr, pins, weights)`` of the distinct (homed experts, source node)
    sets of the tokens; ``local [E]`` is the vertex of every homed expert (``-1``: not homed)."""
    V = int(local.max()) + 1 if local.size else 0
    v = np.where(ids >= 0, local[np.maximum(ids, 0)], -1)  # [T, k]
    v = np.concatenate([v, (V + node)[:, None]], axis=1)  # the node vertex
    v = np.sort(v, axis=1)
    # a pin once per token: drop repeats and non-homed experts
    dup = np.zeros_like(v, dtype=bool)
    dup[:, 1:] = v[:, 1:] == v[:, :-1]
    v = np.where(dup | (v < 0), -1, v)
    has = (v[:, :-1] >= 0).any(axis=1) if v.shape[1] > 1 else np.zeros(v.shape[0], bool)
    v = np.sort(v[has], axis=1)
    if v.shape[0] == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, weights = np.unique(v, axis=0, return_counts=True)
    size = (rows >= 0).sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(size)])
    pins = rows[rows >= 0]
    return indptr, pins, weights.astype(np.int64)


def refine_homes(
    ids: np.ndarray,
    node: np.ndarray,
    homed: np.ndarray,
    weight: np.ndarray,
    start: np.ndarray,
    caps: np.ndarray,
    *,
    num_nodes: int,
    seed: int,
    vcycles: int = 1,
) -> np.ndarray:
    """Home nodes of the homed experts, refined from ``start`` by Mt-KaHyPar.

    Args:
        ids: ``[T, k]`` planning tokens' experts (``-1`` none).
        node: ``[T]`` source node of every token.
        homed: ``[n]`` the experts to place (the others are on every node: never remote).
        weight: ``[n]`` positive integer load of every homed expert.
        start: ``[n]`` a start node of every homed expert (need not meet the caps).
        caps: ``[N]`` the most weight a node may take.
    Returns:
        ``[n]`` node of every homed expert (``start`` when nothing better is found).
    """
    import mtkahypar

    N = num_nodes
    n = homed.size
    if N == 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    E = int(max(int(ids.max(initial=-1)) + 1, int(homed.max()) + 1))
    local = np.full(E, -1, dtype=np.int64)
    local[homed] = np.arange(n)
    indptr, pins, hw = _hyperedges(ids, node, local, N)
    if hw.size == 0:
        return np.asarray(start, dtype=np.int64).copy()
    init = _initializer()
    ctx = init.context_from_preset(mtkahypar.PresetType.DETERMINISTIC)
    ctx.set_partitioning_parameters(N, 0.03, mtkahypar.Objective.KM1)
    ctx.logging = False
    # node vertices weigh 1 each: the caps make room for them
    ctx.set_individual_target_block_weights([int(c) + 1 for c in caps])
    mtkahypar.set_seed(int(seed) % (2**31 - 1))
    edges = [pins[indptr[i]:indptr[i + 1]].tolist() for i in range(hw.size)]
    vw = np.maximum(np.asarray(weight, dtype=np.int64), 1).tolist() + [1] * N
    hg = init.create_hypergraph(ctx, n + N, len(edges), edges, vw, hw.tolist())
    hg.add_fixed_vertices([-1] * n + list(range(N)), N)
    part = [int(x) for x in start] + list(range(N))
    phg = hg.create_partitioned_hypergraph(ctx, N, part)
    before = phg.km1()
    phg.improve_partition(ctx, int(vcycles))
    out = np.array([phg.block_id(v) for v in range(n)], dtype=np.int64)
    loads = np.bincount(out, weights=np.asarray(vw[:n], dtype=np.float64), minlength=N)
    start_loads = np.bincount(np.asarray(start, dtype=np.int64),
                              weights=np.asarray(vw[:n], dtype=np.float64), minlength=N)
    # keep the start when the refinement made it worse on both cut and balance
    if phg.km1() > before and loads.max() >= start_loads.max():
        return np.asarray(start, dtype=np.int64).copy()
    return out
