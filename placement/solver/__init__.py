"""Solvers: the optimizer and the baselines it is measured against.

``solve(traces, cluster, options)`` turns traces into a :class:`~placement.plan.Plan`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from placement.cluster import Cluster
from placement.plan import Plan, static_dispatch
from placement.routing_traces.trace import Trace
from placement.solver.baselines import contiguous_phy2log, eplb_phy2log
from placement.solver.eplb import rebalance_experts
from placement.solver.evaluate import evaluate_phy2log
from placement.solver.problem import ProblemData, SolveOptions
from placement.solver.result import SolveResult, format_solve_result

__all__ = [
    "METHODS",
    "ProblemData",
    "SolveOptions",
    "SolveResult",
    "baseline_plan",
    "format_solve_result",
    "rebalance_experts",
    "solve",
]

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as layers finish."""

METHODS: tuple[str, ...] = ("optimizer", "eplb", "eplb-global", "contiguous")


def _make_plan(
    problem: ProblemData,
    phy2log: np.ndarray,
    options: SolveOptions,
    method: str,
    start: float,
    *,
    dispatch: np.ndarray | None = None,
    lower_bound: list[float] | None = None,
    status: str = "HEURISTIC",
    settings: dict | None = None,
) -> Plan:
    c = problem.cluster
    if dispatch is None:
        dispatch = static_dispatch(phy2log, c, problem.num_experts)
    objectives = evaluate_phy2log(phy2log, dispatch, problem, options.robust)
    return Plan(
        cluster=c,
        num_experts=problem.num_experts,
        layer_ids=problem.layer_ids,
        phy2log=phy2log,
        dispatch=dispatch,
        num_hidden_layers=problem.num_hidden_layers,
        model=problem.model,
        method=method,
        settings=settings if settings is not None else {},
        objectives=objectives,
        lower_bound=lower_bound,
        status=status,
        wall_time=time.perf_counter() - start,
        allow_colocated_replicas=method in ("eplb", "eplb-global"),
    )


def baseline_plan(problem: ProblemData, options: SolveOptions, method: str) -> Plan:
    """A plan by one of the baselines: ``"eplb"``, ``"eplb-global"`` or ``"contiguous"``."""
    start = time.perf_counter()
    if method == "contiguous":
        p2l = contiguous_phy2log(problem.num_experts, problem.cluster, problem.num_layers)
        settings: dict = {}
    elif method in ("eplb", "eplb-global"):
        glob = method == "eplb-global"
        p2l = eplb_phy2log(problem, options, global_policy=glob)
        groups = 1 if glob else options.groups_for(problem.num_experts)
        hier = (not glob) and groups % problem.cluster.num_nodes == 0
        settings = {"num_groups": groups, "policy": "hierarchical" if hier else "global"}
    else:
        raise ValueError(f"not a baseline: {method}")
    return _make_plan(problem, p2l, options, method, start, status="BASELINE", settings=settings)


def solve(
    traces: Trace | Sequence[Trace] | ProblemData,
    cluster: Cluster | None = None,
    options: SolveOptions | None = None,
    *,
    progress: Progress | None = None,
) -> SolveResult:
    """Make a plan for ``cluster`` from ``traces`` with ``options.method``.

    Every window of every trace is a scenario the plan must hold up on. The result carries EPLB's
    in-sample figures on the same input for comparison.
    """
    options = options or SolveOptions()
    if isinstance(traces, ProblemData):
        problem = traces
    else:
        if cluster is None:
            raise TypeError("solve() needs a cluster when given traces.")
        problem = ProblemData.from_traces(traces, cluster)
    messages: list[str] = []
    if not problem.is_token_level:
        messages.append(
            "traffic unknown: the traces hold aggregated counts only, so the plan balances load; "
            "cross-node traffic needs token-level traces."
        )
    if options.method == "optimizer":
        from placement.solver.optimizer import optimize

        plan = optimize(problem, options, progress=progress)
    else:
        plan = baseline_plan(problem, options, options.method)
        if progress is not None:
            progress(problem.num_layers, problem.num_layers)
    reference: dict[str, list[float]] = {}
    if options.method != "eplb":
        reference = dict(baseline_plan(problem, options, "eplb").objectives)
    return SolveResult(plan=plan, reference=reference, messages=tuple(messages))
