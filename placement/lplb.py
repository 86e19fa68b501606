"""SGLang's LP dispatch (LPLB), the LP itself: shared by the replay
(:mod:`placement.validation.engine_rules`) and the solver (:mod:`placement.solver.lp_dispatch`).

SGLang (github.com/sgl-project/sglang, ``python/sglang/srt/eplb/lplb_solver.py``, Apache
License 2.0) solves, per batch and layer, the LP that splits every replicated expert's global
token count over its replicas to minimise the busiest GPU's load. Here with HiGHS
(``scipy.optimize.linprog``), all layers of a batch as one sparse block-diagonal LP.
"""

from __future__ import annotations

import numpy as np

from placement.cluster import Cluster
from placement.errors import InputError

__all__ = ["LpLayout", "lp_gpu_loads", "lp_split", "replica_table"]


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
