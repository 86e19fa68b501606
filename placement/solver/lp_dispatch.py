"""Planning for SGLang's ``lp`` dispatch (``solve --dispatch lp``).

Under ``--ep-dispatch-algorithm lp`` the engine splits every replicated expert's tokens over its
replicas per batch by an LP (:mod:`placement.lplb`), so a placement is judged
by the busiest GPU after that split, not after the static table.

:func:`lp_layer_scores` scores candidate placements of one layer that way (every scenario one
batch); :func:`plan_for_lp` is the solver's hook: per layer it keeps, among the method's own
placement and the baselines' (EPLB, EPLB-global, SGLang's deepseek_vec, contiguous: under lp a
layout with many experts replicated across GPUs gives the LP room), the one whose worst (or mean,
``--robust``) scenario has the least busiest GPU under lp, the method's own on ties.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from placement.cluster import Cluster
from placement.plan import Plan
from placement.solver.problem import ProblemData, SolveOptions

__all__ = ["DISPATCH_RULES", "LP_CANDIDATES", "lp_layer_scores", "plan_for_lp"]

DISPATCH_RULES: tuple[str, ...] = ("static", "lp")
"""The rules ``solve --dispatch`` plans for (SGLang's ``--ep-dispatch-algorithm``)."""

LP_CANDIDATES: tuple[str, ...] = ("eplb", "eplb-global", "sglang-vec", "contiguous")
"""The baselines whose layers compete with the method's own under ``--dispatch lp``."""


def lp_layer_scores(rows: np.ndarray, counts: np.ndarray, cluster: Cluster,
                    num_experts: int, robust: str = "max") -> np.ndarray:
    """``[C]`` score of ``C`` candidate placements of one layer under lp dispatch.

    Args:
        rows: ``[C, P]`` candidate ``phy2log`` rows of the layer.
        counts: ``[S, E]`` the layer's tokens per expert in every scenario (each one batch).
        robust: ``"max"`` (worst scenario) or ``"mean"`` over scenarios.
    Returns:
        per candidate, the worst (mean) over scenarios of busiest GPU / mean GPU load after the
        lp split (1.0 for a scenario without tokens).
    """
    from placement.lplb import lp_gpu_loads

    rows = np.asarray(rows, dtype=np.int64)
    c = np.asarray(counts, dtype=np.float64)
    S = c.shape[0]
    out = np.empty(rows.shape[0])
    for i, row in enumerate(rows):
        # the scenarios as the "layers" of one block-diagonal LP
        loads = lp_gpu_loads(c, np.tile(row, (S, 1)), cluster, num_experts)  # [S, G]
        mean = loads.mean(axis=1)
        imb = np.divide(loads.max(axis=1), mean, out=np.ones(S), where=mean > 0)
        out[i] = imb.max() if robust == "max" else imb.mean()
    return out


def plan_for_lp(problem: ProblemData, options: SolveOptions, plan: Plan) -> Plan:
    """``plan`` for the lp rule: per layer the best of its own placement and the
    :data:`LP_CANDIDATES` baselines' by :func:`lp_layer_scores` (the method's own on ties);
    the settings record ``dispatch: "lp"`` and where every layer came from. A baseline's plan
    is returned as it is (only the rule recorded)."""
    from placement.solver.api import baseline_plan
    from placement.solver.evaluate import make_plan

    settings = {**plan.settings, "dispatch": "lp"}
    if plan.method != "optimizer":
        return dataclasses.replace(plan, settings=settings)
    start = time.perf_counter()
    names = [plan.method, *LP_CANDIDATES]
    cands = [np.asarray(plan.phy2log)] + [
        np.asarray(baseline_plan(problem, options, m).phy2log) for m in LP_CANDIDATES]
    p2l = cands[0].copy()
    chosen: list[str] = []
    for layer in range(problem.num_layers):
        rows = np.stack([c[layer] for c in cands])
        scores = lp_layer_scores(rows, problem.scenario_counts[:, layer], problem.cluster,
                                 problem.num_experts, options.robust)
        best = int(np.argmin(scores))
        if scores[best] >= scores[0] * (1 - 1e-9):
            best = 0
        p2l[layer] = rows[best]
        chosen.append(names[best])
    settings["lp_layer_source"] = chosen
    new = make_plan(problem, p2l, options, plan.method, start, status=plan.status,
                    settings=settings, allow_colocated=True)
    return dataclasses.replace(new, wall_time=plan.wall_time + new.wall_time)
