"""``solve(traces, cluster, options)``: traces in, a plan out, next to EPLB's on the same input."""

from __future__ import annotations

from collections.abc import Sequence

from placement.cluster import Cluster
from placement.errors import InputError
from placement.plan import Plan
from placement.routing_traces.trace import Trace
from placement.solver.problem import ProblemData, SolveOptions, resolve_model
from placement.solver.registry import BASELINES, Progress, get_method
from placement.solver.result import SolveResult

__all__ = ["baseline_plan", "solve"]


def baseline_plan(problem: ProblemData, options: SolveOptions, method: str) -> Plan:
    """A plan by one of the baselines (:data:`placement.solver.BASELINES`)."""
    if method not in BASELINES:
        raise InputError(f"Not a baseline: {method!r}; choose one of: {', '.join(BASELINES)}.")
    return get_method(method).solve(problem, options, None)


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
            "traffic unknown: the traces hold aggregated counts only, so the plan balances load "
            "(the predicted time is compute only); cross-node traffic needs token-level traces."
        )
    if options.method == "optimizer" and options.objective in ("time", "traffic"):
        model, source = resolve_model(options, problem)
        if source == "default" and options.objective == "time":
            messages.append(
                f"model unknown: the predicted time uses {model.name}'s expert shape (hidden "
                f"{model.hidden_size}, expert FFN {model.moe_intermediate_size}); give --model."
            )
    plan = get_method(options.method).solve(problem, options, progress)
    if options.dispatch == "lp":  # the layers that balance best after the engine's LP split
        from placement.solver.lp_dispatch import plan_for_lp

        plan = plan_for_lp(problem, options, plan)
    reference: dict[str, list[float]] = {}
    if options.method != "eplb":
        reference = dict(baseline_plan(problem, options, "eplb").objectives)
    return SolveResult(plan=plan, reference=reference, messages=tuple(messages))
