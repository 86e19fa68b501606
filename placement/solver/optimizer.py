"""The optimizer: robust replica counts and placement, layer by layer, on OR-Tools and local search.

For every MoE layer (layers are independent and solved in parallel, ``options.jobs``):

1. Scale every scenario's shares so that the mean GPU load is 1 (loads ARE imbalances). With
   token-level traces the search plans on shares shrunk toward the pooled ones by each window's
   token count (:func:`shrunk_shares`: a short window's shares are mostly sampling noise); the
   objective, bound and status reported are those of the plain shares.
2. Lower bound (valid for every placement): the heaviest replica under the best robust replica
   counts, and 1 (:func:`~placement.solver.balance.count_bound`).
3. Start points: (a) robust replica counts (EPLB's greedy on the worst scenario; with two slots
   per GPU then moved while the best pairing of each scenario improves) packed by a
   multi-scenario LPT; (b) DeepSeek EPLB's own placement of the summed shares (the warm start,
   its co-located replicas spread out). The better one, by the robust objective, is improved.
4. Iterated local search from the peak GPUs: replica swaps, then replica-count changes; fixed
   iteration counts and a seeded generator, so the plan depends on the input and seed only.
5. Small layers (the exact model has few variables): CP-SAT solves the exact model with the
   local-search placement as a hint and a deterministic work limit; its optimum (or better
   incumbent) and its bound replace the heuristic's.
6. Token-level traces: traffic is planned too (:mod:`placement.solver.traffic`): experts that fire
   together share a node and the experts whose replica on every node saves the most sends get
   one, within ``balance_tolerance`` of the balance-only optimum.

The whole solve stops at ``options.time_limit`` with the best placement found for every layer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from placement.errors import InputError, SolverError
from placement.plan import Plan
from placement.solver.balance import (
    LayerState,
    count_bound,
    improve,
    lpt_assign,
    pair_counts,
    robust_counts,
    scaled_loads,
)
from placement.solver.cpsat import configuration_count, solve_exact, solve_patterns
from placement.solver.problem import ProblemData, SolveOptions

__all__ = ["Effort", "LayerSolution", "LayerTask", "optimize", "shrunk_shares", "solve_layer"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Effort:
    """Work limits of the optimizer (deterministic: counts, not seconds).

    Attributes:
        rounds: perturbation rounds of the iterated local search per layer.
        max_moves: moves per descent.
        exact_max_patterns: solve a layer with the exact CP-SAT pattern model when there are at
            most this many GPU configurations (``C(E, slots per GPU)``).
        exact_max_vars: else with the exact assignment model when it needs at most this many
            assignment variables (``E * G * max replicas``).
        exact_work: CP-SAT deterministic time limit per layer.
    """

    rounds: int = 12
    max_moves: int = 800
    exact_max_patterns: int = 1500
    exact_max_vars: int = 1200
    exact_work: float = 2.0


@dataclass(frozen=True)
class LayerTask:
    """One layer to place (picklable: sent to worker processes).

    Attributes:
        index: layer index ``0..L-1``.
        shares: ``[S, E]`` every scenario's share of the layer's tokens per expert.
        num_nodes, gpus_per_node, slots_per_gpu: the cluster.
        robust: ``"max"`` or ``"mean"``.
        seed: seed of the layer's randomised steps.
        warm: ``[P]`` a warm-start placement (EPLB's), or None.
        deadline: ``time.monotonic()`` value after which the layer returns what it has.
        effort: work limits.
        max_count: most replicas one expert may have (G, or GPUs per node under node limits).
        tokens: per scenario ``(topk_ids [T, k], src_gpu [T])`` of this layer, or None.
        balance_tolerance, max_nodes_per_token, num_groups: traffic settings.
        plan_shares: ``[S, E]`` the shares the search plans on when they differ from
            ``shares`` (:func:`shrunk_shares`; token-level traces), or None.
    """

    index: int
    shares: np.ndarray
    num_nodes: int
    gpus_per_node: int
    slots_per_gpu: int
    robust: str
    seed: int
    warm: np.ndarray | None
    deadline: float
    effort: Effort
    tokens: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None
    balance_tolerance: float = 0.05
    max_nodes_per_token: int | None = None
    num_groups: int = 1
    plan_shares: np.ndarray | None = None

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


@dataclass(frozen=True)
class LayerSolution:
    """What a layer's solve returns.

    Attributes:
        index: layer index.
        phy2log: ``[P]`` expert of every slot.
        bound: valid lower bound of the robust even-split imbalance.
        status: ``"OPTIMAL"`` (proven), ``"FEASIBLE"`` or ``"TIME_LIMIT"``.
        objective: the robust even-split imbalance of ``phy2log``.
        bound_source: ``"exact"`` (CP-SAT) or ``"counts"`` (replica-count bound).
        info: extra figures (traffic, moves...).
    """

    index: int
    phy2log: np.ndarray
    bound: float
    status: str
    objective: float
    bound_source: str
    info: dict[str, float] = field(default_factory=dict)


def _spread_colocated(row: np.ndarray, G: int, spg: int) -> np.ndarray:
    """``[P]`` EPLB row -> ``[G, spg]`` without two replicas of one expert on a GPU.

    A co-located duplicate is swapped with a replica on another GPU where neither clashes.
    """
    phy = row.reshape(G, spg).copy()
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


def _canonical(phy: np.ndarray) -> np.ndarray:
    """Experts in slot order within each GPU (a plan's readable, deterministic form)."""
    return np.sort(phy, axis=1)


def solve_layer(task: LayerTask) -> LayerSolution:
    """Place one layer: bound, start points, local search, exact model when small, traffic."""
    G, _spg = task.num_gpus, task.slots_per_gpu
    w = scaled_loads(task.shares, G)
    node_limited = (task.max_nodes_per_token is not None
                    and task.max_nodes_per_token < task.num_nodes)
    if task.tokens is not None or node_limited:
        from placement.solver.traffic import solve_traffic_layer

        return solve_traffic_layer(task, w)
    bal = balance_layer(task, w)
    return LayerSolution(task.index, _canonical(bal.phy).reshape(-1), bal.bound, bal.status,
                         bal.value, bal.bound_source)


@dataclass(frozen=True)
class BalanceResult:
    """Balance-only placement of a layer: ``phy [G, spg]``, its robust even-split imbalance,
    a valid bound, status and where the bound came from."""

    phy: np.ndarray
    value: float
    bound: float
    status: str
    bound_source: str


def exact_model_applies(task: LayerTask, num_experts: int, max_count: int | None = None) -> bool:
    """Whether a layer is small enough for step 4's exact CP-SAT models."""
    G, spg = task.num_gpus, task.slots_per_gpu
    max_count = G if max_count is None else max_count
    K = min(max_count, G * spg - num_experts + 1)
    return (configuration_count(num_experts, spg) <= task.effort.exact_max_patterns
            or num_experts * G * K <= task.effort.exact_max_vars)


def balance_layer(task: LayerTask, w: np.ndarray, *, max_count: int | None = None) -> BalanceResult:
    """Steps 1-5 of the module docstring for one layer, balance only."""
    G, spg = task.num_gpus, task.slots_per_gpu
    P = G * spg
    E = w.shape[1]
    max_count = G if max_count is None else max_count
    timed_out = False

    # 1. lower bound
    bound = count_bound(w, P, max_count, task.robust)
    bound_source = "counts"

    # 2. start points
    cnt = robust_counts(w, P, max_count, task.robust)
    if spg == 2:  # a GPU is a pair of replicas: counts that make good pairs, not light replicas
        cnt = pair_counts(w, cnt, max_count, task.robust)
    starts = [LayerState.build(w, lpt_assign(w, cnt, G, spg, task.robust), task.robust,
                               max_count)]
    if task.warm is not None:
        warm = _spread_colocated(np.asarray(task.warm), G, spg)
        if warm.size:
            starts.append(LayerState.build(w, warm, task.robust, max_count))
    st = min(starts, key=lambda s: s.key())

    # 3. iterated local search
    st = improve(st, rounds=task.effort.rounds, max_moves=task.effort.max_moves,
                 seed=task.seed, deadline=task.deadline)
    if time.monotonic() > task.deadline:
        timed_out = True
    best = st.phy
    value = st.objective()
    status = "FEASIBLE"

    # 4. exact model for small layers: the pattern model when GPUs hold few experts, else the
    #    assignment model
    use_patterns = configuration_count(E, spg) <= task.effort.exact_max_patterns
    if exact_model_applies(task, E, max_count) and not timed_out:
        left = task.deadline - time.monotonic()
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
    if timed_out:
        status = "TIME_LIMIT"
    return BalanceResult(best, value, min(bound, value), status, bound_source)


def _token_data(problem: ProblemData, layer: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    from placement.metrics import source_gpus

    G = problem.cluster.num_gpus
    out = []
    assert problem.token_traces is not None
    for t in problem.token_traces:
        ids = np.asarray(t.topk_ids[:, layer, :])
        out.append((ids, source_gpus(ids.shape[0], t.source_rank, G)))
    return tuple(out)


SHRINK_PER_EXPERT = 20.0
"""Prior strength of :func:`shrunk_shares`, in routed tokens per expert."""


def shrunk_shares(counts: np.ndarray, per_expert: float) -> np.ndarray:
    """``counts [S, L, E]`` -> ``[S, L, E]`` shares, each scenario shrunk toward the pooled one.

    A scenario with ``n`` routed tokens in a layer keeps weight ``n / (n + per_expert * E)`` on
    its own shares and puts the rest on the shares pooled over all scenarios: a short window's
    shares are mostly sampling noise (a few tokens per expert), and planning for the worst
    window's noise does not balance the next tokens. Windows with many tokens per expert
    (aggregated counts) are left nearly as they are. Empty scenarios stay empty.
    """
    c = np.asarray(counts, dtype=np.float64)
    E = c.shape[-1]
    n = c.sum(axis=-1, keepdims=True)  # [S, L, 1]
    pooled = c.sum(axis=0, keepdims=True)
    ptot = pooled.sum(axis=-1, keepdims=True)
    pooled = np.divide(pooled, ptot, out=np.zeros_like(pooled), where=ptot > 0)
    prior = per_expert * E
    out = (c + prior * pooled) / np.maximum(n + prior, 1e-300)
    return np.where(n > 0, out, 0.0)


def optimize(problem: ProblemData, options: SolveOptions, progress: Progress | None = None,
             *, effort: Effort | None = None) -> Plan:
    """Place every layer of ``problem`` (see the module docstring); returns the :class:`Plan`."""
    from placement.solver import _make_plan
    from placement.solver.baselines import eplb_phy2log

    start = time.perf_counter()
    deadline = time.monotonic() + options.time_limit
    effort = effort or Effort()
    c = problem.cluster
    L = problem.num_layers
    E = problem.num_experts
    c.check_fits(E)
    M = options.max_nodes_per_token
    groups = options.groups_for(E)
    if M is not None and M < c.num_nodes:
        if E > c.num_slots:  # pragma: no cover - check_fits above
            raise InputError("too few slots")
        if groups % c.num_nodes != 0 or E % groups != 0:
            raise InputError(
                f"--max-nodes-per-token {M} keeps every expert group on one node, so num_groups "
                f"({groups}) must be a multiple of the {c.num_nodes} nodes and divide the {E} "
                f"experts; set --groups."
            )
        per_node = E // c.num_nodes
        slots = c.gpus_per_node * c.slots_per_gpu
        if per_node > slots:
            raise InputError(
                f"--max-nodes-per-token {M}: a node's {per_node} experts need more than its "
                f"{slots} slots (short by {per_node - slots})."
            )
        if per_node * c.gpus_per_node < slots:
            raise InputError(
                f"--max-nodes-per-token {M}: a node's {per_node} experts, at most one replica "
                f"per GPU, fill only {per_node * c.gpus_per_node} of its {slots} slots; use "
                f"fewer slots per GPU or more GPUs per node."
            )
    shares = problem.scenario_shares()  # [S, L, E]
    # token-level windows are short: plan on shares shrunk toward the pool (reported objectives
    # and bounds stay on the plain shares)
    plan_shares = (shrunk_shares(problem.scenario_counts, SHRINK_PER_EXPERT)
                   if problem.is_token_level else None)
    try:
        warm = eplb_phy2log(problem, options, global_policy=True)
    except InputError:
        warm = None
    tasks = [
        LayerTask(
            index=i,
            shares=shares[:, i, :],
            plan_shares=None if plan_shares is None else plan_shares[:, i, :],
            num_nodes=c.num_nodes,
            gpus_per_node=c.gpus_per_node,
            slots_per_gpu=c.slots_per_gpu,
            robust=options.robust,
            seed=options.seed * 1_000_003 + i,
            warm=None if warm is None else warm[i],
            deadline=deadline,
            effort=effort,
            tokens=_token_data(problem, i) if problem.is_token_level else None,
            balance_tolerance=options.balance_tolerance,
            max_nodes_per_token=M,
            num_groups=groups,
        )
        for i in range(L)
    ]
    sols = _run(tasks, options.jobs, progress)
    phy2log = np.stack([s.phy2log for s in sols]).astype(np.int64)
    statuses = [s.status for s in sols]
    if all(s == "OPTIMAL" for s in statuses):
        status = "OPTIMAL"
    elif any(s == "TIME_LIMIT" for s in statuses):
        status = "TIME_LIMIT"
    else:
        status = "FEASIBLE"
    settings = {
        "robust": options.robust,
        "seed": options.seed,
        "balance_tolerance": options.balance_tolerance,
        "max_nodes_per_token": M,
        "num_groups": groups,
        "time_limit": options.time_limit,
        "layer_status": statuses,
        "bound_source": [s.bound_source for s in sols],
    }
    extra = {k for s in sols for k in s.info}
    for k in sorted(extra):
        settings[k] = [float(s.info.get(k, float("nan"))) for s in sols]
    return _make_plan(problem, phy2log, options, "optimizer", start,
                      lower_bound=[float(s.bound) for s in sols], status=status,
                      settings=settings)


def _run(tasks: list[LayerTask], jobs: int, progress: Progress | None) -> list[LayerSolution]:
    """Solve the layers, ``jobs`` at a time; results in layer order."""
    total = len(tasks)
    out: list[LayerSolution | None] = [None] * total
    if progress is not None:
        progress(0, total)
    jobs = max(1, min(jobs, total, os.cpu_count() or 1))
    if jobs == 1:
        for k, t in enumerate(tasks):
            out[t.index] = solve_layer(t)
            if progress is not None:
                progress(k + 1, total)
    else:
        done = 0
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            pending: set[Future[LayerSolution]] = {pool.submit(solve_layer, t) for t in tasks}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    try:
                        sol = f.result()
                    except Exception as exc:  # a worker died: a bug, not the user's doing
                        raise SolverError(f"a layer's solve failed: {exc!r}") from exc
                    out[sol.index] = sol
                    done += 1
                    if progress is not None:
                        progress(done, total)
    return [s for s in out if s is not None]
