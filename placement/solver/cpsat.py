"""Exact CP-SAT model of one layer's robust balance problem (small instances).

Variables (``E`` experts, ``G`` GPUs, ``K`` most replicas of one expert, ``S`` scenarios):

* ``z[e, k]``: expert ``e`` has exactly ``k`` replicas (one ``k`` per expert);
* ``y[e, g, k]``: GPU ``g`` holds a replica of ``e`` and ``e`` has ``k`` replicas
  (``sum_g y[e, g, k] = k * z[e, k]``; at most one replica of ``e`` per GPU by construction);
* every GPU fills its ``spg`` slots: ``sum_{e,k} y[e, g, k] = spg``;
* ``load[s, g] = sum_{e,k} round(SCALE * w[s, e] / k) * y[e, g, k]``;
* ``"max"``: minimise ``T >= load[s, g]``; ``"mean"``: minimise ``sum_s T_s``, ``T_s >= load[s, g]``.

GPUs are interchangeable for balance, so scenario 0's loads are ordered (symmetry breaking).
Coefficients are rounded to integers; the bound returned is corrected by the largest possible
rounding error, so it stays valid for the real-valued objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

__all__ = ["ExactResult", "configuration_count", "solve_exact", "solve_patterns"]

SCALE = 1_000_000


@dataclass(frozen=True)
class ExactResult:
    """Outcome of :func:`solve_exact`.

    Attributes:
        phy: ``[G, spg]`` best placement found, or None when none was found.
        bound: valid lower bound of the objective (real-valued loads).
        optimal: whether CP-SAT proved the placement optimal.
        status: CP-SAT's status name.
    """

    phy: np.ndarray | None
    bound: float
    optimal: bool
    status: str


def solve_exact(
    w: np.ndarray,
    num_gpus: int,
    spg: int,
    *,
    robust: str = "max",
    max_count: int | None = None,
    hint: np.ndarray | None = None,
    seed: int = 0,
    max_deterministic_time: float = 5.0,
    max_time: float | None = None,
) -> ExactResult:
    """Solve one layer exactly (or as far as the limits allow).

    Args:
        w: ``[S, E]`` scaled loads (mean GPU load 1 per scenario).
        hint: ``[G, spg]`` a placement to start from (CP-SAT solution hint).
        max_deterministic_time: CP-SAT work limit (deterministic: same answer on every machine).
        max_time: wall-clock safety limit, seconds (only when the whole solve runs out of time).
    """
    S, E = w.shape
    G = num_gpus
    P = G * spg
    K = min(G, P - E + 1) if max_count is None else min(max_count, G, P - E + 1)
    m = cp_model.CpModel()
    z = [[m.new_bool_var(f"z{e}_{k}") for k in range(1, K + 1)] for e in range(E)]
    y = [[[m.new_bool_var(f"y{e}_{g}_{k}") for k in range(1, K + 1)] for g in range(G)]
         for e in range(E)]
    for e in range(E):
        m.add_exactly_one(z[e])
        for ki, k in enumerate(range(1, K + 1)):
            m.add(sum(y[e][g][ki] for g in range(G)) == k * z[e][ki])
            for g in range(G):
                m.add_implication(y[e][g][ki], z[e][ki])
    m.add(sum(k * z[e][ki] for e in range(E) for ki, k in enumerate(range(1, K + 1))) == P)
    for g in range(G):
        m.add(sum(y[e][g][ki] for e in range(E) for ki in range(K)) == spg)
    coef = np.rint(SCALE * w[:, :, None] / np.arange(1, K + 1)[None, None, :]).astype(np.int64)
    ub = int(coef[:, :, 0].sum(axis=1).max()) + 1
    loads = [[sum(int(coef[s, e, ki]) * y[e][g][ki] for e in range(E) for ki in range(K))
              for g in range(G)] for s in range(S)]
    load_vars = [[m.new_int_var(0, ub, f"l{s}_{g}") for g in range(G)] for s in range(S)]
    for s in range(S):
        for g in range(G):
            m.add(load_vars[s][g] == loads[s][g])
    # symmetry: GPUs are interchangeable for balance
    for g in range(G - 1):
        m.add(load_vars[0][g] >= load_vars[0][g + 1])
    if robust == "max":
        T = m.new_int_var(0, ub, "T")
        for s in range(S):
            for v in load_vars[s]:
                m.add(T >= v)
        # the GPU that holds a replica of e carries at least w[s, e] / k (helps the LP bound)
        heaviest = coef.max(axis=0)  # [E, K]
        for e in range(E):
            m.add(T >= sum(int(heaviest[e, ki]) * z[e][ki] for ki in range(K)))
        m.minimize(T)
    else:
        Ts = [m.new_int_var(0, ub, f"T{s}") for s in range(S)]
        for s in range(S):
            for v in load_vars[s]:
                m.add(Ts[s] >= v)
        m.minimize(sum(Ts))
    if hint is not None:
        _add_hint(m, hint, w, coef, z, y, load_vars, K)
    solver, status, name, bound = _run_cp_sat(m, seed=seed, work=max_deterministic_time,
                                              max_time=max_time, spg=spg, robust=robust, S=S)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return ExactResult(None, max(bound, 0.0), False, name)
    phy = np.zeros((G, spg), dtype=np.int64)
    for g in range(G):
        held = [e for e in range(E) for ki in range(K) if solver.boolean_value(y[e][g][ki])]
        phy[g] = sorted(held)
    return ExactResult(phy, bound, status == cp_model.OPTIMAL, name)


def _add_hint(m: cp_model.CpModel, hint: np.ndarray, w: np.ndarray, coef: np.ndarray,
              z: list, y: list, load_vars: list, K: int) -> None:
    """Hint a placement ``[G, spg]`` (GPUs reordered to satisfy the symmetry breaking)."""
    E = w.shape[1]
    G = hint.shape[0]
    cnt = np.bincount(hint.reshape(-1), minlength=E)
    if cnt.max() > K:
        return
    l0 = np.array([sum(int(coef[0, e, cnt[e] - 1]) for e in hint[g]) for g in range(G)])
    order = np.argsort(-l0, kind="stable")
    h = hint[order]
    for e in range(E):
        for ki in range(K):
            m.add_hint(z[e][ki], int(cnt[e] == ki + 1))
            for g in range(G):
                m.add_hint(y[e][g][ki], int(cnt[e] == ki + 1 and e in h[g]))
    S = w.shape[0]
    for s in range(S):
        for g in range(G):
            m.add_hint(load_vars[s][g], sum(int(coef[s, e, cnt[e] - 1]) for e in h[g]))


def configuration_count(num_experts: int, spg: int) -> int:
    """Number of GPU configurations (sets of ``spg`` distinct experts) the pattern model lists."""
    import math

    return math.comb(num_experts, spg)


def solve_patterns(
    w: np.ndarray,
    num_gpus: int,
    spg: int,
    *,
    robust: str = "max",
    max_count: int | None = None,
    hint: np.ndarray | None = None,
    seed: int = 0,
    max_deterministic_time: float = 5.0,
    max_time: float | None = None,
) -> ExactResult:
    """Exact pattern (configuration) model of one layer, for few experts per GPU.

    GPUs are interchangeable for balance, so a placement is a multiset of GPU configurations
    (sets of ``spg`` distinct experts). Variables: ``n[j]`` GPUs with configuration ``j``,
    ``u[j] = (n[j] >= 1)``, ``z[e, k]`` expert ``e`` has ``k`` replicas
    (``sum_j n[j] [e in j] = sum_k k z[e, k]``). A used configuration's load in every scenario,
    ``sum_{e in j} sum_k round(SCALE * w[s, e] / k) z[e, k]``, is at most ``T`` (``"max"``) or
    ``T_s`` (``"mean"``). No symmetry between GPUs is left, which makes proofs quick.
    """
    import itertools

    S, E = w.shape
    G = num_gpus
    P = G * spg
    K = min(G, P - E + 1) if max_count is None else min(max_count, G, P - E + 1)
    configs = list(itertools.combinations(range(E), spg))
    m = cp_model.CpModel()
    z = [[m.new_bool_var(f"z{e}_{k}") for k in range(1, K + 1)] for e in range(E)]
    n = [m.new_int_var(0, G, f"n{j}") for j in range(len(configs))]
    u = [m.new_bool_var(f"u{j}") for j in range(len(configs))]
    m.add(sum(n) == G)
    members: list[list[int]] = [[] for _ in range(E)]
    for j, cfg in enumerate(configs):
        m.add(n[j] >= 1).only_enforce_if(u[j])
        m.add(n[j] == 0).only_enforce_if(u[j].negated())
        for e in cfg:
            members[e].append(j)
    for e in range(E):
        m.add_exactly_one(z[e])
        m.add(sum(n[j] for j in members[e]) == sum(k * z[e][k - 1] for k in range(1, K + 1)))
    coef = np.rint(SCALE * w[:, :, None] / np.arange(1, K + 1)[None, None, :]).astype(np.int64)
    ub = int(coef[:, :, 0].sum(axis=1).max()) + 1
    # per-replica load of every expert in every scenario, as an integer variable
    rep = [[m.new_int_var(int(coef[s, e].min()), int(coef[s, e].max()), f"r{s}_{e}")
            for e in range(E)] for s in range(S)]
    for s in range(S):
        for e in range(E):
            m.add(rep[s][e] == sum(int(coef[s, e, k]) * z[e][k] for k in range(K)))
    if robust == "max":
        T = m.new_int_var(0, ub, "T")
        Ts = [T] * S
        m.minimize(T)
    else:
        Ts = [m.new_int_var(0, ub, f"T{s}") for s in range(S)]
        m.minimize(sum(Ts))
    for j, cfg in enumerate(configs):
        for s in range(S):
            m.add(sum(rep[s][e] for e in cfg) <= Ts[s]).only_enforce_if(u[j])
    if hint is not None:
        cnt = np.bincount(hint.reshape(-1), minlength=E)
        if cnt.max() <= K:
            index = {cfg: j for j, cfg in enumerate(configs)}
            used = np.zeros(len(configs), dtype=np.int64)
            for g in range(hint.shape[0]):
                used[index[tuple(sorted(int(x) for x in hint[g]))]] += 1
            for j in range(len(configs)):
                m.add_hint(n[j], int(used[j]))
                m.add_hint(u[j], int(used[j] > 0))
            for e in range(E):
                for k in range(K):
                    m.add_hint(z[e][k], int(cnt[e] == k + 1))
    solver, status, name, bound = _run_cp_sat(m, seed=seed, work=max_deterministic_time,
                                              max_time=max_time, spg=spg, robust=robust, S=S)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return ExactResult(None, max(bound, 0.0), False, name)
    rows: list[tuple[int, ...]] = []
    for j, cfg in enumerate(configs):
        rows.extend([cfg] * int(solver.value(n[j])))
    phy = np.array(rows, dtype=np.int64).reshape(G, spg)
    return ExactResult(phy, bound, status == cp_model.OPTIMAL, name)


def _run_cp_sat(m: cp_model.CpModel, *, seed: int, work: float, max_time: float | None,
                spg: int, robust: str, S: int) -> tuple[cp_model.CpSolver, Any, str, float]:
    """Solve ``m`` deterministically (one worker, a seed, a deterministic work limit) and return
    the solver, its status and status name, and the objective bound in load units.

    The bound is lowered by the rounding error: each GPU load is a sum of ``spg`` rounded terms,
    each off by at most 1/2 of a unit of ``1 / SCALE``.
    """
    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.num_workers = 1
    prm.random_seed = int(seed)
    prm.max_deterministic_time = float(work)
    if max_time is not None:
        prm.max_time_in_seconds = max(0.01, float(max_time))
    status = solver.solve(m)
    err = spg * 0.5 / SCALE
    div = 1.0 if robust == "max" else float(S)
    bound = float(solver.best_objective_bound) / SCALE / div - err
    return solver, status, solver.status_name(status), bound
