"""Baselines: the engines' contiguous default and DeepSeek's EPLB (hierarchical and global)."""

from __future__ import annotations

import time

import numpy as np

from placement.cluster import Cluster
from placement.errors import InputError
from placement.plan import Plan
from placement.solver.problem import ProblemData, SolveOptions
from placement.solver.registry import Progress

__all__ = [
    "contiguous_phy2log",
    "eplb_phy2log",
    "eplb_weight",
    "solve_contiguous",
    "solve_eplb",
    "solve_eplb_global",
]



def contiguous_phy2log(num_experts: int, cluster: Cluster, num_layers: int) -> np.ndarray:
    """The engines' default placement: ``[L, P]``.

    Expert ``e`` sits on GPU ``e // (E / G)`` (the first ``E mod G`` GPUs take one more when G does
    not divide E), in the first slots of its GPU; the remaining (redundant) slots are filled in
    slot order with experts ``0, 1, 2, ...`` round-robin, skipping an expert already on that GPU.
    """
    E, G, spg = num_experts, cluster.num_gpus, cluster.slots_per_gpu
    cluster.check_fits(E)
    per_gpu = np.full(G, E // G) + (np.arange(G) < E % G)
    row = np.empty(cluster.num_slots, dtype=np.int64)
    nxt = 0
    e = 0
    for g in range(G):
        own = list(range(e, e + int(per_gpu[g])))
        e += int(per_gpu[g])
        fill: list[int] = []
        held = set(own)
        while len(own) + len(fill) < spg:
            cand = nxt % E
            nxt += 1
            if cand in held:
                continue
            fill.append(cand)
            held.add(cand)
        row[g * spg:(g + 1) * spg] = own + fill
    return np.tile(row, (num_layers, 1))


def eplb_weight(problem: ProblemData) -> np.ndarray:
    """``[L, E]`` EPLB's input: the sum over scenarios of every scenario's per-layer shares."""
    return problem.scenario_shares().sum(axis=0)


def eplb_phy2log(problem: ProblemData, options: SolveOptions, *, global_policy: bool) -> np.ndarray:
    """``[L, P]`` DeepSeek EPLB's placement for the problem's scenarios.

    Hierarchical when ``num_groups % num_nodes == 0`` (and not ``global_policy``), else global.
    """
    c = problem.cluster
    E = problem.num_experts
    groups = options.groups_for(E)
    nodes = c.num_nodes
    if global_policy:
        groups, nodes = 1, 1
    elif groups % nodes == 0 and E % groups != 0:
        raise InputError(f"Expected the {E} experts to divide into num_groups={groups} groups.")
    import torch

    from placement.solver.eplb import rebalance_experts

    weight = torch.from_numpy(eplb_weight(problem)).float()
    phy2log, _, _ = rebalance_experts(weight, c.num_slots, groups, nodes, c.num_gpus)
    return phy2log.numpy().astype(np.int64)


def _done(problem: ProblemData, progress: Progress | None) -> None:
    if progress is not None:
        progress(problem.num_layers, problem.num_layers)


def _eplb(problem: ProblemData, options: SolveOptions, progress: Progress | None,
          glob: bool) -> Plan:
    from placement.solver.evaluate import make_plan

    start = time.perf_counter()
    p2l = eplb_phy2log(problem, options, global_policy=glob)
    groups = 1 if glob else options.groups_for(problem.num_experts)
    hier = (not glob) and groups % problem.cluster.num_nodes == 0
    settings = {"num_groups": groups, "policy": "hierarchical" if hier else "global"}
    _done(problem, progress)
    return make_plan(problem, p2l, options, "eplb-global" if glob else "eplb", start,
                     status="BASELINE", settings=settings, allow_colocated=True)


def solve_eplb(problem: ProblemData, options: SolveOptions,
               progress: Progress | None = None) -> Plan:
    """DeepSeek EPLB's plan, hierarchical policy when ``num_groups % num_nodes == 0``."""
    return _eplb(problem, options, progress, glob=False)


def solve_eplb_global(problem: ProblemData, options: SolveOptions,
                      progress: Progress | None = None) -> Plan:
    """DeepSeek EPLB's plan, global policy."""
    return _eplb(problem, options, progress, glob=True)


def solve_contiguous(problem: ProblemData, options: SolveOptions,
                     progress: Progress | None = None) -> Plan:
    """The engines' default placement (:func:`contiguous_phy2log`)."""
    from placement.solver.evaluate import make_plan

    start = time.perf_counter()
    p2l = contiguous_phy2log(problem.num_experts, problem.cluster, problem.num_layers)
    _done(problem, progress)
    return make_plan(problem, p2l, options, "contiguous", start, status="BASELINE")
