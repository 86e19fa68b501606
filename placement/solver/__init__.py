"""Solvers: the optimizer and the baselines it is measured against.

``solve(traces, cluster, options)`` turns traces into a :class:`~placement.plan.Plan`; the
methods it can use are in :mod:`placement.solver.registry`.
"""

from __future__ import annotations

from typing import Any

from placement.solver.api import baseline_plan, solve
from placement.solver.problem import OBJECTIVES, ProblemData, SolveOptions
from placement.solver.registry import BASELINES, METHODS, SolverMethod, get_method
from placement.solver.result import SolveResult, format_solve_result

__all__ = [
    "BASELINES",
    "METHODS",
    "OBJECTIVES",
    "ProblemData",
    "SolveOptions",
    "SolveResult",
    "SolverMethod",
    "baseline_plan",
    "format_solve_result",
    "get_method",
    "rebalance_experts",
    "solve",
]


def __getattr__(name: str) -> Any:
    if name == "rebalance_experts":  # DeepSeek's EPLB needs torch: import it when asked for
        from placement.solver.eplb import rebalance_experts

        return rebalance_experts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
