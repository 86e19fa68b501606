"""SGLang's dispatch rules beyond ours: ``sglang-static``, ``dynamic`` and ``lp`` (LPLB).

SGLang (github.com/sgl-project/sglang, Apache License 2.0) maps a token's logical expert to a
physical replica with ``--ep-dispatch-algorithm``:

* ``static`` (``python/sglang/srt/eplb/expert_location.py``): every source GPU ``g`` narrows an
  expert's replicas (in physical order) to (1) its only replica, else (2) the first replica on
  ``g`` itself, else (3) the first replica on ``g``'s node when that narrows the choice (some, but
  not all, replicas there); the GPUs left with every replica get a fair random one each
  (``random.Random(42)``, ``_fair_choices``: every replica ``k // n`` times, the ``k mod n``
  left drawn without replacement, shuffled), drawn expert by expert, layer by layer, from one
  generator per GPU that skips the experts this GPU narrowed. :func:`sglang_static_dispatch` is
  that table, exactly.
* ``dynamic`` (``expert_location_dispatch.py``): the same narrowing; a GPU left with every
  replica draws one per token, ``randint(0, 65536) % n`` (here numpy's generator, seeded).
* ``lp`` (``lplb_solver.py``, LPLB): per batch and layer, the global count ``c_e`` of every
  replicated expert is split over its replicas by the LP that minimises the busiest GPU's
  load; every token picks a replica with the split's probabilities (no locality).
  :func:`lp_split` solves the LPs with HiGHS (``scipy.optimize.linprog``), one sparse
  block-diagonal LP per batch over all layers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np

from placement.cluster import Cluster
from placement.lplb import LpLayout, lp_gpu_loads, lp_split, replica_table

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "LpLayout",
    "dynamic_slots",
    "lp_gpu_loads",
    "lp_split",
    "narrowed_dispatch",
    "replica_table",
    "sglang_static_dispatch",
]

DEFAULT_BATCH_TOKENS = 4096
"""Tokens per batch of the ``lp`` rule on token-level traces (aggregated traces: a window)."""


def narrowed_dispatch(phy2log: np.ndarray, cluster: Cluster, num_experts: int,
                      same_node: bool = True) -> np.ndarray:
    """``[L, G, E]`` the replica SGLang's narrowing gives source GPU ``g`` (only replica, first
    on ``g``, first on ``g``'s node when that narrows the choice), ``-1`` where every replica
    stays a candidate. ``same_node=False``: no node step (one node, or SGLang's same-node
    preference off)."""
    log2phy, logcnt = replica_table(phy2log, num_experts)
    G, spg, gpn = cluster.num_gpus, cluster.slots_per_gpu, cluster.gpus_per_node
    valid = log2phy >= 0  # [L, E, X]
    gpu = np.where(valid, log2phy // spg, -1)
    node = np.where(valid, gpu // gpn, -1)
    X = log2phy.shape[2]
    out = np.full((log2phy.shape[0], G, num_experts), -1, dtype=np.int64)
    big = np.iinfo(np.int64).max
    for g in range(G):
        n = g // gpn
        own = gpu == g
        first_own = np.where(own, np.arange(X), X).min(axis=2)  # [L, E]
        on_node = node == n
        cnt_node = on_node.sum(axis=2)
        first_node = np.where(on_node, np.arange(X), X).min(axis=2)
        pick = np.full(logcnt.shape, big, dtype=np.int64)
        pick = np.where(logcnt == 1, 0, pick)
        pick = np.where((pick == big) & (first_own < X), first_own, pick)
        if same_node:
            narrows = (cnt_node > 0) & (cnt_node < logcnt)
            pick = np.where((pick == big) & narrows, first_node, pick)
        chosen = np.take_along_axis(log2phy, np.minimum(pick, X - 1)[..., None], axis=2)[..., 0]
        out[:, g, :] = np.where(pick == big, -1, chosen)
    return out


def _fair_choices(arr: list[int], k: int, r: random.Random) -> list[int]:
    """SGLang's ``_fair_choices``: every item ``k // n`` times, ``k mod n`` drawn, shuffled."""
    quotient, remainder = divmod(k, len(arr))
    ans = arr * quotient + r.sample(arr, k=remainder)
    r.shuffle(ans)
    return ans


def sglang_static_dispatch(phy2log: np.ndarray, cluster: Cluster, num_experts: int,
                           same_node: bool = True, seed: int = 42) -> np.ndarray:
    """``[L, G, E]`` SGLang's static dispatch table (``logical_to_rank_dispatch_physical_map``
    of every rank), exactly: :func:`narrowed_dispatch`, then per GPU the fair random choices of
    its own generator ``random.Random(seed)`` over the (layer, expert) cells it left open (the
    random calls depend only on how many GPUs share a cell and how many replicas it has, so one
    pass per GPU over its open cells reproduces SGLang's loop)."""
    table = narrowed_dispatch(phy2log, cluster, num_experts, same_node)
    log2phy, logcnt = replica_table(phy2log, num_experts)
    free = table < 0  # [L, G, E]
    k = free.sum(axis=1)  # [L, E] GPUs sharing every open cell
    pos = np.cumsum(free, axis=1) - 1  # a GPU's index among the cell's open GPUs
    G = cluster.num_gpus
    for g in range(G):
        r = random.Random(seed)
        cells = np.argwhere(free[:, g, :])  # (layer, expert) in SGLang's loop order
        for layer, e in cells.tolist():
            n = int(logcnt[layer, e])
            choice = _fair_choices(list(range(n)), int(k[layer, e]), r)[int(pos[layer, g, e])]
            table[layer, g, e] = log2phy[layer, e, choice]
    return table


def dynamic_slots(ids: np.ndarray, src: np.ndarray, narrowed: np.ndarray, log2phy: np.ndarray,
                  logcnt: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """``[t, L, k]`` the slot of every assignment under SGLang's ``dynamic`` rule (-1 padding).

    Args:
        ids: ``[t, L, k]`` experts (-1 none); src: ``[t]`` source GPUs.
        narrowed: ``[L, G, E]`` :func:`narrowed_dispatch`; log2phy, logcnt: :func:`replica_table`.
        draws: ``[t, L, k]`` integers in ``[0, 65536)``; an open cell takes replica
            ``draws % n``.
    """
    L = ids.shape[1]
    valid = ids >= 0
    e = np.where(valid, ids, 0)
    lay = np.arange(L)[None, :, None]
    fixed = narrowed[lay, src[:, None, None], e]
    n = logcnt[lay, e]
    alt = log2phy[lay, e, draws % n]
    return np.where(valid, np.where(fixed >= 0, fixed, alt), -1)


def batches(num_tokens: int, batch_tokens: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches of ``batch_tokens`` tokens."""
    for s in range(0, num_tokens, batch_tokens):
        yield s, min(num_tokens, s + batch_tokens)
