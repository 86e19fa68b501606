"""One MoE layer's solve: its inputs, its result, and the balance-only placement.

Layers are independent: :class:`LayerTask` holds everything one layer's solve needs (it is sent
to worker processes), :class:`LayerSolution` what it returns. :func:`balance_layer` is the
balance-only placement every objective starts from (steps 1-4 of
:mod:`placement.solver.optimizer`); :mod:`placement.solver.traffic` builds on it.

Shapes: ``S`` scenarios, ``E`` logical experts, ``G`` GPUs, ``spg`` slots per GPU, ``P = G * spg``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from placement.cluster import Cluster
from placement.models import ModelShape
from placement.solver.balance import (
    LayerState,
    count_bound,
    enumerate_placements,
    improve,
    lpt_assign,
    multiset_count,
    pair_counts,
    robust_counts,
)
from placement.solver.cpsat import configuration_count, solve_exact, solve_patterns

__all__ = [
    "BalanceResult",
    "Effort",
    "LayerSolution",
    "LayerTask",
    "Validation",
    "balance_layer",
    "canonical",
    "exact_model_applies",
    "identical_gpus",
    "spread_colocated",
]


@dataclass(frozen=True)
class Effort:
    """Work limits of the optimizer (deterministic: counts, never seconds).

    Attributes:
        rounds: perturbation rounds of the iterated local search per layer.
        max_moves: moves per descent.
        exact_max_patterns: solve a layer with the exact CP-SAT pattern model when there are at
            most this many GPU configurations (``C(E, slots per GPU)``).
        exact_max_vars: else with the exact assignment model when it needs at most this many
            assignment variables (``E * G * max replicas``).
        exact_work: CP-SAT deterministic time limit per layer (its own work unit, not seconds).
        enum_max: a layer with at most this many placements up to the order of GPUs
            (:func:`~placement.solver.balance.multiset_count`) is solved exactly by listing
            them (:func:`~placement.solver.balance.enumerate_placements`) instead of CP-SAT.
        max_tokens: planning tokens of a layer the traffic search uses (a seeded sample when
            there are more; every token is scored).
        home_moves: moves of the node-level local search after the partition.
        vcycles: Mt-KaHyPar V-cycles per partition refinement.
        pack_rounds: perturbation rounds of the in-node packing.
    """

    rounds: int = 12
    max_moves: int = 800
    exact_max_patterns: int = 1500
    exact_max_vars: int = 1200
    exact_work: float = 2.0
    enum_max: int = 500_000
    max_tokens: int = 20000
    home_moves: int = 64
    vcycles: int = 1
    pack_rounds: int = 2


@dataclass(frozen=True)
class Validation:
    """One layer's planning tokens split in two for the drift rule
    (:func:`placement.solver.optimizer.solve_layer`): the search is run on the fitting half and
    its candidates judged on the unfitted half.

    Attributes:
        shares: ``[S_f, E]`` every fitting scenario's share of its tokens per expert.
        plan_shares: ``[S_f, E]`` the same shrunk toward the pool (what the search plans on).
        pooled: ``[E]`` the fitting half's counts.
        tokens: per fitting scenario ``(topk_ids [T, k], src_gpu [T])``.
        held: ``(topk_ids [T', k], src_gpu [T'])`` the unfitted tokens, pooled.
        eplb: ``[P]`` EPLB's placement of the fitting half, or None.
        warm: ``[P]`` EPLB's global placement of the fitting half, or None.
        drift: the drift model's figure of the layer
            (:class:`placement.solver.drift.DriftModel`).
    """

    shares: np.ndarray
    plan_shares: np.ndarray
    pooled: np.ndarray
    tokens: tuple[tuple[np.ndarray, np.ndarray], ...]
    held: tuple[np.ndarray, np.ndarray]
    eplb: np.ndarray | None
    warm: np.ndarray | None
    drift: float = 0.0


@dataclass(frozen=True)
class LayerTask:
    """One layer to place (picklable: sent to worker processes).

    Attributes:
        index: layer index ``0..L-1``.
        shares: ``[S, E]`` every scenario's share of the layer's tokens per expert.
        cluster: the cluster (shape, bandwidths, GPU speed).
        robust: ``"max"`` or ``"mean"``.
        seed: seed of the layer's randomised steps.
        warm: ``[P]`` a warm-start placement (EPLB's global policy), or None.
        eplb: ``[P]`` EPLB's placement of the layer (the reference a plan never loses to), or
            None when EPLB cannot plan the cluster.
        deadline: ``time.time()`` value after which the layer returns what it has (the
            ``time_limit`` safety net; the search is otherwise bounded by ``effort``).
        effort: work limits.
        tokens: per scenario ``(topk_ids [T, k], src_gpu [T])`` of this layer, or None.
        objective: ``"time"``, ``"balance"`` or ``"traffic"``.
        balance_tolerance: explicit tolerance, or None for the objective's default.
        max_nodes_per_token, num_groups: node-limited routing.
        plan_shares: ``[S, E]`` the shares the search plans on when they differ from
            ``shares`` (shrunk toward the pool; token-level traces), or None.
        model: the model shape of the predicted time.
        overlap: how communication and compute overlap in the predicted time.
        pooled: ``[E]`` the layer's counts, all scenarios together.
        validation: the planning tokens split for the drift rule, or None (no rule).
    """

    index: int
    shares: np.ndarray
    cluster: Cluster
    robust: str
    seed: int
    warm: np.ndarray | None
    eplb: np.ndarray | None
    deadline: float
    effort: Effort
    model: ModelShape
    pooled: np.ndarray
    tokens: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None
    objective: str = "time"
    balance_tolerance: float | None = None
    max_nodes_per_token: int | None = None
    num_groups: int = 1
    plan_shares: np.ndarray | None = None
    overlap: str = "two-batch"
    validation: Validation | None = None

    @property
    def num_nodes(self) -> int:
        return self.cluster.num_nodes

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.gpus_per_node

    @property
    def slots_per_gpu(self) -> int:
        return self.cluster.slots_per_gpu

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    @property
    def node_limited(self) -> bool:
        return self.max_nodes_per_token is not None and self.max_nodes_per_token < self.num_nodes

    def timed_out(self) -> bool:
        """Whether the ``time_limit`` safety net has fired."""
        return time.time() > self.deadline


@dataclass(frozen=True)
class LayerSolution:
    """What a layer's solve returns.

    Attributes:
        index: layer index.
        phy2log: ``[P]`` expert of every slot.
        bound: valid lower bound of the robust even-split imbalance.
        status: ``"OPTIMAL"`` (proven for balance), ``"FEASIBLE"`` or ``"TIME_LIMIT"``.
        objective: the robust even-split imbalance of ``phy2log``.
        bound_source: ``"exact"`` (CP-SAT), ``"counts"`` (replica-count bound) or ``"groups"``.
        fell_back: whether the layer is EPLB's placement (the search did not beat it).
        colocated: whether a GPU holds two replicas of one expert (EPLB's layer, or more slots
            per GPU than experts).
        choice: which candidate won (``"balance"``, ``"eplb"``, ``"partition, cap 0, 2
            everywhere"``...).
        info: extra figures (in-sample traffic, candidates...).
    """

    index: int
    phy2log: np.ndarray
    bound: float
    status: str
    objective: float
    bound_source: str
    fell_back: bool = False
    colocated: bool = False
    choice: str = ""
    info: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BalanceResult:
    """Balance-only placement of a layer: ``phy [G, spg]``, its robust even-split imbalance,
    a valid bound, status and where the bound came from."""

    phy: np.ndarray
    value: float
    bound: float
    status: str
    bound_source: str


def canonical(phy: np.ndarray) -> np.ndarray:
    """``phy [G, spg]``: experts in slot order within each GPU (a plan's readable, deterministic
    form)."""
    return np.sort(phy, axis=1)


def spread_colocated(row: np.ndarray, num_gpus: int, spg: int) -> np.ndarray:
    """``[P]`` EPLB row -> ``[G, spg]`` without two replicas of one expert on a GPU, or an empty
    ``[0, spg]`` array when that is impossible.

    A co-located duplicate is swapped with a replica on another GPU where neither clashes.
    """
    G = num_gpus
    phy = np.asarray(row).reshape(G, spg).copy()
    for _ in range(G * spg):
        srt = np.sort(phy, axis=1)
        dup = np.argwhere(srt[:, 1:] == srt[:, :-1])
        if dup.size == 0:
            return phy
        g = int(dup[0, 0])
        e = int(srt[g, dup[0, 1]])
        i = int(np.flatnonzero(phy[g] == e)[1])
        done = False
        for h in range(G):
            if h == g or (phy[h] == e).any():
                continue
            for j in range(spg):
                x = phy[h, j]
                if not (phy[g] == x).any():
                    phy[g, i], phy[h, j] = x, e
                    done = True
                    break
            if done:
                break
        if not done:
            break
    srt = np.sort(phy, axis=1)
    return phy if not (srt[:, 1:] == srt[:, :-1]).any() else np.empty((0, spg), dtype=np.int64)


def identical_gpus(w: np.ndarray, num_gpus: int, spg: int) -> np.ndarray:
    """``phy [G, spg]`` for ``spg >= E``: every GPU holds every expert, and the same extra
    replicas of the hottest experts (co-located when ``spg > E``).

    Identical GPUs split every expert evenly (imbalance 1 under the even rule) and the static
    rule serves every token on its own GPU (no traffic at all): optimal for every objective.
    """
    E = w.shape[1]
    order = np.argsort(-w.max(axis=0), kind="stable")
    reps, extra = divmod(spg, E)
    row = np.concatenate([np.tile(np.arange(E), reps), order[:extra]])
    return np.tile(np.sort(row), (num_gpus, 1)).astype(np.int64)


def exact_model_applies(task: LayerTask, num_experts: int, max_count: int | None = None) -> bool:
    """Whether a layer is small enough for the exact CP-SAT models."""
    G, spg = task.num_gpus, task.slots_per_gpu
    max_count = G if max_count is None else max_count
    K = min(max_count, G * spg - num_experts + 1)
    return (configuration_count(num_experts, spg) <= task.effort.exact_max_patterns
            or num_experts * G * K <= task.effort.exact_max_vars)


def balance_layer(task: LayerTask, w: np.ndarray, *, max_count: int | None = None) -> BalanceResult:
    """The balance-only placement of one layer (robust even-split imbalance of ``w [S, E]``).

    1. lower bound: the heaviest replica under the best robust replica counts, and 1;
    2. tiny layers (at most ``effort.enum_max`` placements up to the order of GPUs): every
       placement listed (:func:`~placement.solver.balance.enumerate_placements`), its optimum
       returned, ``OPTIMAL``;
    3. start points: robust replica counts (with two slots per GPU, moved while the best
       pairing improves) packed by a multi-scenario LPT, and the warm start (EPLB's global
       placement, co-located replicas spread out); the better one is improved;
    4. iterated local search from the peak GPUs (fixed counts of rounds and moves, seeded);
    5. small layers: CP-SAT solves the exact model with the placement as a hint and a
       deterministic work limit; its optimum (or better incumbent) and bound replace the
       heuristic's.
    """
    G, spg = task.num_gpus, task.slots_per_gpu
    P = G * spg
    E = w.shape[1]
    max_count = G if max_count is None else max_count

    # 1. lower bound
    bound = count_bound(w, P, max_count, task.robust)
    bound_source = "counts"

    # 2. tiny layers: every placement listed, the optimum of (F, Q) (steps 3-4 cannot beat it)
    if multiset_count(E, G, spg) <= task.effort.enum_max and not task.timed_out():
        phy = enumerate_placements(w, G, spg, robust=task.robust, max_count=max_count)
        if phy is not None:
            value = LayerState.build(w, phy, task.robust, max_count).objective()
            return BalanceResult(phy, value, value, "OPTIMAL", "exact")

    # 3. start points
    cnt = robust_counts(w, P, max_count, task.robust)
    if spg == 2:  # a GPU is a pair of replicas: counts that make good pairs, not light replicas
        cnt = pair_counts(w, cnt, max_count, task.robust)
    starts = [LayerState.build(w, lpt_assign(w, cnt, G, spg, task.robust), task.robust,
                               max_count)]
    if task.warm is not None:
        warm = spread_colocated(np.asarray(task.warm), G, spg)
        if warm.size and np.bincount(warm.reshape(-1), minlength=E).max() <= max_count:
            starts.append(LayerState.build(w, warm, task.robust, max_count))
    st = min(starts, key=lambda s: s.key())

    # 4. iterated local search
    st = improve(st, rounds=task.effort.rounds, max_moves=task.effort.max_moves,
                 seed=task.seed, deadline=task.deadline)
    timed_out = task.timed_out()
    best = st.phy
    value = st.objective()
    status = "FEASIBLE"

    # 5. exact for small layers: CP-SAT's pattern model when GPUs hold few experts, else its
    #    assignment model
    use_patterns = configuration_count(E, spg) <= task.effort.exact_max_patterns
    if exact_model_applies(task, E, max_count) and not timed_out:
        left = task.deadline - time.time()
        model = solve_patterns if use_patterns else solve_exact
        res = model(w, G, spg, robust=task.robust, max_count=max_count, hint=best,
                    seed=task.seed, max_deterministic_time=task.effort.exact_work, max_time=left)
        if res.phy is not None:
            cand = LayerState.build(w, res.phy, task.robust, max_count)
            if cand.objective() <= value + 1e-12:
                best, value = cand.phy, cand.objective()
        if res.bound > bound:
            bound, bound_source = res.bound, "exact"
        if res.optimal:
            status = "OPTIMAL"
            bound = min(max(bound, value - 1e-9), value)
            bound_source = "exact"
        timed_out = timed_out or task.timed_out()
    if timed_out:
        status = "TIME_LIMIT"
    return BalanceResult(best, value, min(bound, value), status, bound_source)
