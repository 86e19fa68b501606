"""What a plan is judged by, per layer and in-sample: the figures and the objective's order.

A candidate placement of one layer (``phy [G, spg]``) is scored on the layer's planning data
(:class:`LayerScore`): the robust even-split imbalance over the scenarios, and with token-level
traces the engines' static dispatch rule applied to all planning tokens pooled (imbalance,
cross-node sends and copies per token, the per-GPU traffic) and the predicted MoE layer time of
:func:`placement.moe_time.layer_times` for the cluster's bandwidths and the model's shape.

The three objectives (:data:`placement.solver.problem.OBJECTIVES`) order candidates (:func:`pick`):

* ``"time"`` (default): the least predicted MoE layer time. Its compute part is that of the
  EXPECTED static loads (:func:`expected_rates`: the planning sample's noise is not a property
  of the plan), its communication
  part that of the planning tokens. Candidates within :data:`TIME_TIE` of the fastest count as
  equally fast and the one with the fewest cross-node sends wins (a compute-bound layer hides
  its traffic in the model, not on the wire). Guard: a plan's expected static imbalance is
  never worse than the balance-only plan's or EPLB's, whichever is worse, by more than that
  same :data:`TIME_TIE` (with aggregated counts: its robust imbalance);
  ``balance_tolerance`` replaces the guard by ``(1 + tolerance) x`` the balance-only plan's
  expected static imbalance. With aggregated counts no traffic is known and
  the time is the compute time of the robust (worst-window) loads: the balance objective.
* ``"balance"``: the least robust even-split imbalance (then static imbalance, then sends).
* ``"traffic"``: the fewest cross-node sends among plans within ``balance_tolerance`` (default
  5 %) of the balance-only plan's expected static imbalance (aggregated counts: and its robust
  even-split imbalance).

Shapes: ``S`` scenarios, ``E`` experts, ``G`` GPUs, ``spg`` slots per GPU, ``T`` tokens, ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from placement.cluster import Cluster
from placement.models import ModelShape
from placement.moe_time import layer_times
from placement.plan import static_dispatch

__all__ = [
    "CLEAR_GAIN",
    "DEFAULT_TOLERANCE",
    "TIME_TIE",
    "VALIDATION_MARGIN",
    "LayerScore",
    "LayerScorer",
    "admissible",
    "expected_rates",
    "guard",
    "node_fractions",
    "pick",
    "static_traffic",
    "validated",
]

TIME_TIE = 0.01
"""Predicted layer times within this fraction of the fastest candidate count as equal (the cost
model is not more accurate than that)."""

VALIDATION_MARGIN = 0.01
"""Validation guard (:func:`validated`): on the unfitted half of the planning tokens a candidate
must be at least this fraction faster than EPLB's placement (predicted MoE layer time) and
balance at least this fraction better (static imbalance); a clearly faster one
(:data:`CLEAR_GAIN`) may balance up to this fraction worse."""

CLEAR_GAIN = 0.75
"""A candidate whose predicted time on the unfitted half is at most this fraction of EPLB's
needs only to balance within :data:`VALIDATION_MARGIN` of EPLB's (the network, not the
slowest GPU, sets its time)."""


DEFAULT_TOLERANCE = 0.05
"""``balance_tolerance`` of the ``"traffic"`` objective when none is given."""

_EPS = 1e-9


@dataclass(frozen=True)
class LayerScore:
    """In-sample figures of one layer's placement.

    Attributes:
        robust_even: robust even-split imbalance (worst or mean scenario, by ``robust``).
        static: max/mean tokens per GPU under the static rule, all planning tokens (even split of
            the pooled counts for aggregated traces).
        expected: max/mean of the expected static loads (see the module docstring; the robust
            even-split imbalance for aggregated traces).
        sends, copies: cross-node sends / copies per planning token (0 for aggregated traces).
        time: predicted MoE layer time, seconds, for the pooled planning tokens.
        compute, comm: its compute and communication (dispatch + combine) parts.
    """

    robust_even: float
    static: float
    expected: float
    sends: float
    copies: float
    time: float
    compute: float
    comm: float


def static_traffic(phy: np.ndarray, cluster: Cluster, num_experts: int, ids: np.ndarray,
                   src: np.ndarray, *, dispatch: np.ndarray | None = None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], float, float]:
    """Tokens per GPU and per-GPU traffic of one layer under the engines' static rule.

    Args:
        phy: ``[G, spg]`` (or ``[P]``) expert of every slot.
        ids: ``[T, k]`` logical experts of every token (``-1`` none).
        src: ``[T]`` source GPU of every token.
        dispatch: ``[G, E]`` the slot tokens on GPU g use for expert e (None: the static rule
            of ``phy``).
    Returns:
        ``(loads [G], traffic, sends, copies)``: ``traffic`` holds ``intra_send``,
        ``intra_recv``, ``net_send``, ``net_recv`` ``[G]`` as
        :meth:`placement.validation.ValidationResult.per_gpu_traffic` defines them (copies to
        other GPUs of the node; cross-node sends deduplicated per node, received by the GPU of the
        remote node with the source's local index); ``sends`` and ``copies`` are totals.
    """
    G, gpn, N = cluster.num_gpus, cluster.gpus_per_node, cluster.num_nodes
    spg = cluster.slots_per_gpu
    disp = (static_dispatch(np.asarray(phy).reshape(1, -1), cluster, num_experts)[0]
            if dispatch is None else np.asarray(dispatch))  # [G, E]
    ids = np.asarray(ids, dtype=np.int64)
    src = np.asarray(src, dtype=np.int64)
    valid = ids >= 0
    dest = disp[src[:, None], np.maximum(ids, 0)] // spg  # [T, k] GPU of every assignment
    pair = (src[:, None] * G + dest)[valid]
    matrix = np.bincount(pair, minlength=G * G).reshape(G, G).astype(np.float64)
    node = np.arange(G) // gpn
    same = (node[:, None] == node[None, :]) & ~np.eye(G, dtype=bool)
    intra = np.where(same, matrix, 0.0)
    dnode = dest // gpn
    snode = (src // gpn)[:, None]
    remote = valid & (dnode != snode)
    key = np.sort(np.where(remote, dnode, -1), axis=1)
    first = np.ones_like(key, dtype=bool)
    first[:, 1:] = key[:, 1:] != key[:, :-1]
    hit = first & (key >= 0)
    cell = (np.broadcast_to(src[:, None], key.shape) * N + key)[hit]
    ns = np.bincount(cell, minlength=G * N).reshape(G, N).astype(np.float64)
    # receiving GPU of (source g, node n) is n * gpn + g % gpn
    net_recv = ns.reshape(N, gpn, N).sum(axis=0).T.reshape(G)
    traffic = {
        "intra_send": intra.sum(axis=1),
        "intra_recv": intra.sum(axis=0),
        "net_send": ns.sum(axis=1),
        "net_recv": net_recv,
    }
    return matrix.sum(axis=0), traffic, float(hit.sum()), float(remote.sum())


def _imbalance(loads: np.ndarray) -> float:
    mean = float(loads.mean())
    return float(loads.max()) / mean if mean > 0 else 1.0


def node_fractions(ids: np.ndarray, src: np.ndarray, cluster: Cluster,
                   num_experts: int) -> np.ndarray:
    """``[N, E]`` the share of every expert's tokens that comes from every source node.

    The planning sample's node-by-expert counts, shrunk toward "every node sends its share of
    the tokens to every expert alike" by empirical Bayes: the shrinkage keeps only the part of
    the spread that is larger than sampling noise (``1 - df / X^2`` of it, with ``X^2`` the
    chi-square statistic of the table and ``df`` its degrees of freedom). Experts without
    tokens get the node shares of all tokens.
    """
    gpn, E = cluster.gpus_per_node, num_experts
    N = cluster.num_nodes
    ids = np.asarray(ids, dtype=np.int64)
    src = np.asarray(src, dtype=np.int64)
    valid = ids >= 0
    node = np.broadcast_to((src // gpn)[:, None], ids.shape)[valid]
    cnt = np.bincount(node * E + ids[valid], minlength=N * E).reshape(N, E).astype(np.float64)
    tot = cnt.sum()
    node_share = cnt.sum(axis=1) / tot if tot > 0 else np.full(N, 1.0 / N)
    per_e = cnt.sum(axis=0)
    expected = node_share[:, None] * per_e[None, :]
    used = per_e > 0
    rho = 0.0
    if N > 1 and used.sum() > 1:
        x2 = float((((cnt - expected) ** 2)[:, used] / np.maximum(expected[:, used], 1e-12)).sum())
        df = (N - 1) * (int(used.sum()) - 1)
        rho = max(0.0, 1.0 - df / x2) if x2 > 0 else 0.0
    raw = np.divide(cnt, per_e[None, :], out=np.tile(node_share[:, None], (1, E)),
                    where=per_e[None, :] > 0)
    return node_share[:, None] + rho * (raw - node_share[:, None])


def expected_rates(ids: np.ndarray, src: np.ndarray, cluster: Cluster,
                   num_experts: int) -> np.ndarray:
    """``[G, E]`` expected assignments from every source GPU to every expert.

    Every expert keeps its planning assignments, split over the source nodes by
    :func:`node_fractions` and evenly over a node's GPUs (data-parallel attention balances tokens
    over GPUs: the sample's spread is not the next batch's).
    """
    gpn = cluster.gpus_per_node
    ids = np.asarray(ids, dtype=np.int64)
    valid = ids >= 0
    per_e = np.bincount(ids[valid], minlength=num_experts).astype(np.float64)
    frac = node_fractions(ids, src, cluster, num_experts)  # [N, E]
    G = cluster.num_gpus
    return (frac * per_e[None, :] / gpn)[np.arange(G) // gpn]


class LayerScorer:
    """Scores candidate placements of one layer (:meth:`score`) on its planning data.

    Args:
        w: ``[S, E]`` plain scenario loads scaled to mean GPU load 1 (:func:`scaled_loads`).
        cluster: the cluster (bandwidths and GPU speed included).
        model: the model shape of the predicted time.
        robust: ``"max"`` or ``"mean"``.
        tokens: ``(ids [T, k], src [T])`` the planning tokens the traffic (and the static
            imbalance) is scored on, or None (counts).
        rate_tokens: the planning tokens of the expected static loads (default: ``tokens``).
        pooled: ``[E]`` the layer's pooled counts (aggregated traces: the compute part of the
            time is scaled to them).
        overlap: :data:`placement.moe_time.OVERLAPS`.
    """

    def __init__(self, w: np.ndarray, cluster: Cluster, model: ModelShape, robust: str, *,
                 tokens: tuple[np.ndarray, np.ndarray] | None, pooled: np.ndarray,
                 rate_tokens: tuple[np.ndarray, np.ndarray] | None = None,
                 overlap: str = "two-batch") -> None:
        self.w = np.asarray(w, dtype=np.float64)
        self.cluster = cluster
        self.model = model
        self.robust = robust
        self.tokens = tokens
        self.pooled = np.asarray(pooled, dtype=np.float64)
        self.overlap = overlap
        self.num_experts = int(self.w.shape[1])
        self.rate: np.ndarray | None = None
        rt = tokens if rate_tokens is None else rate_tokens
        if tokens is not None and rt is not None and rt[0].shape[0]:
            self.rate = expected_rates(rt[0], rt[1], cluster, self.num_experts)

    def robust_even(self, phy: np.ndarray) -> float:
        """Robust even-split imbalance of ``phy [G, spg]`` over the scenarios."""
        cnt = np.bincount(phy.reshape(-1), minlength=self.num_experts).astype(np.float64)
        per = self.w / np.maximum(cnt, 1.0)[None, :]
        peaks = per[:, phy].sum(axis=2).max(axis=1)  # [S] (mean GPU load 1 per scenario)
        return float(peaks.max() if self.robust == "max" else peaks.mean())

    def score(self, phy: np.ndarray) -> LayerScore:
        """The figures of ``phy [G, spg]``."""
        phy = np.asarray(phy).reshape(self.cluster.num_gpus, self.cluster.slots_per_gpu)
        rob = self.robust_even(phy)
        c = self.cluster
        if self.tokens is None or self.tokens[0].shape[0] == 0:
            # compute only: the robust loads at the pooled token count (mean GPU load)
            mean_load = float(self.pooled.sum()) / c.num_gpus
            loads = np.full((1, c.num_gpus), mean_load)
            loads[0, 0] = rob * mean_load
            comp, _, _, layer = layer_times(loads, c, self.model, overlap=self.overlap)
            cnt = np.bincount(phy.reshape(-1), minlength=self.num_experts)
            even = (self.pooled / np.maximum(cnt, 1))[phy].sum(axis=1)
            return LayerScore(rob, _imbalance(even), rob, 0.0, 0.0, float(layer[0]),
                              float(comp[0]), 0.0)
        ids, src = self.tokens
        assert self.rate is not None
        disp = static_dispatch(phy.reshape(1, -1), c, self.num_experts)[0]  # [G, E]
        loads, traffic, sends, copies = static_traffic(phy, c, self.num_experts, ids, src,
                                                       dispatch=disp)
        dest = disp // c.slots_per_gpu
        expected = np.bincount(dest.reshape(-1), weights=self.rate.reshape(-1),
                               minlength=c.num_gpus)
        comp, dsp, comb, layer = layer_times(
            expected[None], c, self.model, traffic={k: v[None] for k, v in traffic.items()},
            overlap=self.overlap,
        )
        assert dsp is not None and comb is not None
        T = max(ids.shape[0], 1)
        return LayerScore(rob, _imbalance(loads), _imbalance(expected), sends / T, copies / T,
                          float(layer[0]), float(comp[0]), float(dsp[0] + comb[0]))


def guard(objective: str, tolerance: float | None, balance: LayerScore,
           eplb: LayerScore | None, *, tokens: bool = True) -> tuple[float, float]:
    """``(robust even-split cap, expected static cap)`` a candidate must meet, from the
    balance-only plan's and EPLB's scores (see the module docstring); ``tokens``: whether the
    scores are of token-level planning data."""
    if objective == "balance":
        return float("inf"), float("inf")
    if tolerance is not None or objective == "traffic":
        tol = DEFAULT_TOLERANCE if tolerance is None else tolerance
        # token-level: the expected loads of all planning tokens (a short window's worst case
        # is noise); aggregated counts: the robust imbalance too
        cap_r = float("inf") if tokens else (1.0 + tol) * balance.robust_even
        return cap_r, (1.0 + tol) * balance.expected
    ref_s = balance.expected if eplb is None else max(balance.expected, eplb.expected)
    if tokens:
        # the expected loads of all planning tokens: a short window's worst case is noise
        return float("inf"), ref_s * (1.0 + TIME_TIE)
    ref_r = balance.robust_even if eplb is None else max(balance.robust_even, eplb.robust_even)
    return ref_r * (1.0 + TIME_TIE), ref_s * (1.0 + TIME_TIE)


def validated(score: LayerScore, ref: LayerScore) -> bool:
    """Whether ``score`` (a candidate fitted to one half of the planning tokens, scored on the
    other) beats ``ref`` (EPLB's placement of the same half, scored alike) clearly enough to be
    trusted on the next tokens: time at most ``1 - VALIDATION_MARGIN`` of ``ref``'s and static
    imbalance at most ``1 - VALIDATION_MARGIN`` of ``ref``'s, or time at most ``CLEAR_GAIN`` of
    ``ref``'s and static imbalance at most ``1 + VALIDATION_MARGIN`` of ``ref``'s."""
    if score.time > (1.0 - VALIDATION_MARGIN) * ref.time + 1e-15:
        return False
    if score.static <= (1.0 - VALIDATION_MARGIN) * ref.static + _EPS:
        return True
    return bool(score.time <= CLEAR_GAIN * ref.time
                and score.static <= (1.0 + VALIDATION_MARGIN) * ref.static + _EPS)


def admissible(scores: Sequence[LayerScore], objective: str, *, balance: int,
               eplb: int | None = None, tolerance: float | None = None,
               tokens: bool = True) -> list[int]:
    """Indices of the candidates that meet the objective's balance guard (:func:`guard`)."""
    e = scores[eplb] if eplb is not None else None
    cap_r, cap_s = guard(objective, tolerance, scores[balance], e, tokens=tokens)
    return [i for i, s in enumerate(scores)
            if s.robust_even <= cap_r + _EPS and s.expected <= cap_s + _EPS]


def pick(scores: Sequence[LayerScore], objective: str, *, balance: int,
         eplb: int | None = None, tolerance: float | None = None, tokens: bool = True) -> int:
    """Index of the best of ``scores`` by ``objective`` (see the module docstring).

    Args:
        balance: index of the balance-only plan (the reference of the tolerance).
        eplb: index of EPLB's plan of the layer, or None: no candidate may be worse than it on
            the objective, and the guard of ``"time"`` admits its balance.
        tolerance: ``balance_tolerance`` (None: the objective's default).
        tokens: whether the scores are of token-level planning data.
    Ties go to the earliest candidate.
    """
    ok = admissible(scores, objective, balance=balance, eplb=eplb, tolerance=tolerance,
                    tokens=tokens) or [balance]
    if objective == "balance":
        return min(ok, key=lambda i: (scores[i].robust_even, scores[i].expected, scores[i].sends,
                                      i))
    if objective == "traffic":
        return min(ok, key=lambda i: (scores[i].sends, scores[i].robust_even, i))
    # time: the fastest, and among the equally fast (never slower than EPLB) the fewest sends
    best = min(scores[i].time for i in ok)
    limit = best * (1.0 + TIME_TIE)
    if eplb is not None and eplb in ok:
        limit = min(limit, scores[eplb].time)
    near = [i for i in ok if scores[i].time <= limit]
    return min(near, key=lambda i: (scores[i].sends, scores[i].time, i))
