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
from placement.errors import InputError

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


def replica_table(phy2log: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """``phy2log [L, P]`` -> ``log2phy [L, E, X]`` (replicas in physical order, -1 padded) and
    ``logcnt [L, E]``."""
    p2l = np.asarray(phy2log, dtype=np.int64)
    L, P = p2l.shape
    E = num_experts
    logcnt = np.zeros((L, E), dtype=np.int64)
    np.add.at(logcnt, (np.repeat(np.arange(L), P), p2l.reshape(-1)), 1)
    X = max(int(logcnt.max(initial=1)), 1)
    order = np.argsort(p2l, axis=1, kind="stable")  # by expert, then slot
    exp_sorted = np.take_along_axis(p2l, order, axis=1)
    start = np.concatenate([np.zeros((L, 1), dtype=np.int64), np.cumsum(logcnt, axis=1)[:, :-1]],
                           axis=1)
    rank = np.arange(P)[None, :] - np.take_along_axis(start, exp_sorted, axis=1)
    log2phy = np.full((L, E, X), -1, dtype=np.int64)
    log2phy[np.arange(L)[:, None], exp_sorted, rank] = order
    return log2phy, logcnt


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


class LpLayout:
    """The fixed part of every batch's LP for one placement ``phy2log [L, P]``.

    Variables per layer ``l``: ``x_s`` for every slot ``s`` of a replicated expert (its share
    of the expert's batch count), then ``M_l`` (the layer's busiest GPU). Rows: for every
    replicated expert ``sum_s x_s = c_e``; for every GPU ``base_g + sum_{s on g} x_s <= M_l``
    (``base_g``: the counts of its single-replica experts). Objective ``sum_l M_l``: the layers
    are independent blocks, so every ``M_l`` is its own minimum.

    The optimum's split is rarely unique (only the busiest GPUs are pinned); with ``spread``
    (default) a second LP picks, among the optimal splits, the one closest to the even split
    (least ``sum_s |x_s - c_e / n_e|``), so that GPUs below the peak are not filled in an
    arbitrary vertex order batch after batch. SGLang's interior-point solver lands inside
    the optimal face too; its exact point is not reproduced.
    """

    def __init__(self, phy2log: np.ndarray, cluster: Cluster, num_experts: int,
                 spread: bool = True) -> None:
        from scipy import sparse

        self.spread = spread
        p2l = np.asarray(phy2log, dtype=np.int64)
        L, P = p2l.shape
        E, G = num_experts, cluster.num_gpus
        self.L, self.P, self.E, self.G = L, P, E, G
        self.phy2log = p2l
        self.gpu = cluster.gpu_of_slot()  # [P]
        _, self.logcnt = replica_table(p2l, E)
        rep = np.take_along_axis(self.logcnt, p2l, axis=1) > 1  # [L, P] replicated slots
        self.rep_l, self.rep_s = np.nonzero(rep)  # variables, layer-major
        nx = len(self.rep_l)
        self.nx = nx
        self.nvar = nx + L
        # equality rows: one per replicated (layer, expert), in (layer, expert) order
        rep_e = p2l[self.rep_l, self.rep_s]
        cell = self.rep_l * E + rep_e
        self.eq_cells, eq_row = np.unique(cell, return_inverse=True)
        self.A_eq = sparse.csr_matrix((np.ones(nx), (eq_row, np.arange(nx))),
                                      shape=(len(self.eq_cells), self.nvar))
        # inequality rows: one per (layer, GPU)
        ub_row = self.rep_l * G + self.gpu[self.rep_s]
        rows = np.concatenate([ub_row, np.arange(L * G)])
        cols = np.concatenate([np.arange(nx), nx + np.repeat(np.arange(L), G)])
        vals = np.concatenate([np.ones(nx), -np.ones(L * G)])
        self.A_ub = sparse.csr_matrix((vals, (rows, cols)), shape=(L * G, self.nvar))
        self.cost = np.concatenate([np.zeros(nx), np.ones(L)])
        self.single = ~rep  # [L, P]
        # stage 2 (the split closest to even among the optimal ones): variables x, then u;
        # u_s >= |x_s - c_e / n_e|, GPU rows with the stage-1 optimum as bound
        eye = sparse.identity(nx, format="csr")
        A_gpu = sparse.csr_matrix((np.ones(nx), (ub_row, np.arange(nx))), shape=(L * G, nx))
        self.A2_ub = sparse.vstack([
            sparse.hstack([A_gpu, sparse.csr_matrix((L * G, nx))]),
            sparse.hstack([eye, -eye]),
            sparse.hstack([-eye, -eye]),
        ]).tocsr()
        self.A2_eq = sparse.hstack([self.A_eq[:, :nx], sparse.csr_matrix((self.A_eq.shape[0], nx))]
                                   ).tocsr()
        self.cost2 = np.concatenate([np.zeros(nx), np.ones(nx)])

    def base(self, counts: np.ndarray) -> np.ndarray:
        """``counts [L, E]`` -> ``[L, G]`` load of every GPU's single-replica experts."""
        c = np.take_along_axis(counts, self.phy2log, axis=1) * self.single  # [L, P]
        out = np.zeros((self.L, self.G))
        np.add.at(out, (np.repeat(np.arange(self.L), self.P), np.tile(self.gpu, self.L)),
                  c.reshape(-1))
        return out

    def solve(self, counts: np.ndarray) -> np.ndarray:
        """``counts [L, E]`` of one batch -> ``[L, P]`` the share of its expert's batch tokens
        every slot takes (1 for single replicas; an expert with no tokens: even shares)."""
        from scipy.optimize import linprog

        counts = np.asarray(counts, dtype=np.float64)
        share = np.where(self.single, 1.0, 0.0)
        cnt_rep = np.take_along_axis(self.logcnt, self.phy2log, axis=1).astype(np.float64)
        even = 1.0 / cnt_rep
        if self.nx == 0:
            return share
        b_eq = counts.reshape(-1)[self.eq_cells]
        b_ub = -self.base(counts).reshape(-1)
        res = linprog(self.cost, A_ub=self.A_ub, b_ub=b_ub, A_eq=self.A_eq, b_eq=b_eq,
                      bounds=(0, None), method="highs")
        if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
            raise InputError(f"the lp dispatch LP failed: {res.message}")
        c = counts[self.rep_l, self.phy2log[self.rep_l, self.rep_s]]
        x = np.maximum(res.x[: self.nx], 0.0)
        if self.spread:
            peak = res.x[self.nx:]  # [L] the stage-1 optimum of every layer
            target = c / self.logcnt[self.rep_l, self.phy2log[self.rep_l, self.rep_s]]
            cap = np.repeat(peak, self.G) * (1 + 1e-9) + 1e-9 + b_ub
            b2 = np.concatenate([cap, target, -target])
            res2 = linprog(self.cost2, A_ub=self.A2_ub, b_ub=b2, A_eq=self.A2_eq, b_eq=b_eq,
                           bounds=(0, None), method="highs")
            if res2.status == 0:
                x = np.maximum(res2.x[: self.nx], 0.0)
        frac = np.divide(x, c, out=np.zeros_like(x), where=c > 0)
        # normalise rounding; experts without tokens split evenly
        share[self.rep_l, self.rep_s] = np.where(c > 0, frac, even[self.rep_l, self.rep_s])
        tot = np.zeros((self.L, self.E))
        np.add.at(tot, (np.repeat(np.arange(self.L), self.P), self.phy2log.reshape(-1)),
                  share.reshape(-1))
        return share / np.take_along_axis(tot, self.phy2log, axis=1)


def lp_split(counts: np.ndarray, phy2log: np.ndarray, cluster: Cluster,
             num_experts: int) -> np.ndarray:
    """``counts [B, L, E]`` of ``B`` batches -> ``[B, L, P]`` every slot's share of its expert's
    batch tokens under SGLang's ``lp`` dispatch (:class:`LpLayout`)."""
    lay = LpLayout(phy2log, cluster, num_experts)
    return np.stack([lay.solve(c) for c in np.asarray(counts)])


def lp_gpu_loads(counts: np.ndarray, phy2log: np.ndarray, cluster: Cluster,
                 num_experts: int) -> np.ndarray:
    """``counts [L, E]`` (or ``[B, L, E]``) -> ``[L, G]`` (``[B, L, G]``) GPU loads under
    ``lp`` dispatch: each replicated expert's count split by the LP that minimises the busiest
    GPU. For scoring a candidate placement's layer under lp."""
    c = np.asarray(counts, dtype=np.float64)
    one = c.ndim == 2
    cb = c[None] if one else c
    share = lp_split(cb, phy2log, cluster, num_experts)  # [B, L, P]
    p2l = np.asarray(phy2log, dtype=np.int64)
    slot_load = np.take_along_axis(cb, np.broadcast_to(p2l, share.shape), axis=2) * share
    G, spg = cluster.num_gpus, cluster.slots_per_gpu
    loads = slot_load.reshape(*slot_load.shape[:2], G, spg).sum(axis=3)
    return loads[0] if one else loads


def batches(num_tokens: int, batch_tokens: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches of ``batch_tokens`` tokens."""
    for s in range(0, num_tokens, batch_tokens):
        yield s, min(num_tokens, s + batch_tokens)
