"""In-sample figures of a placement on the problem it was made from, and the plan built from it.

The figures carry the names of ``docs/definitions.md`` and the figures vocabulary
(the same name means the same number in ``solve``, ``validate`` and ``compare``):

* ``imbalance_even``: max/mean tokens per GPU, every expert's tokens split evenly over its
  replicas, all scenarios' tokens pooled per layer;
* ``worst_window_imbalance_even`` / ``mean_window_imbalance_even``: the same per scenario
  (window), then the max / mean over scenarios per layer (the robust objective);
* token-level only: ``imbalance_static`` (the engines' static rule, all tokens pooled),
  ``cross_node_sends_per_token``, ``cross_node_copies_per_token``;
* ``predicted_moe_layer_time``: seconds of :func:`placement.moe_time.layer_times` for the
  pooled tokens (static loads and traffic; compute only for aggregated counts), at the
  cluster's hardware figures (:meth:`placement.cluster.Cluster.figures`, recorded in the plan's
  ``settings["hardware"]``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from placement.metrics import even_gpu_loads, imbalance
from placement.models import ModelShape
from placement.moe_time import layer_times
from placement.plan import Plan, static_dispatch
from placement.solver.objective import static_traffic
from placement.solver.problem import ProblemData, SolveOptions, resolve_model

__all__ = ["evaluate_phy2log", "make_plan", "robust_key"]


def robust_key(robust: str) -> str:
    """The figure a robust mode optimises (and a plan's lower bound bounds)."""
    return "worst_window_imbalance_even" if robust == "max" else "mean_window_imbalance_even"


def evaluate_phy2log(
    phy2log: np.ndarray,
    dispatch: np.ndarray | None,
    problem: ProblemData,
    *,
    model: ModelShape | None = None,
    overlap: str = "two-batch",
) -> dict[str, list[float]]:
    """Per-layer in-sample figures of a placement (see the module docstring).

    Args:
        phy2log: ``[L, P]``.
        dispatch: ``[L, G, E]`` the plan's dispatch table (token-level traffic), or None: the
            static rule of ``phy2log``.
        model: the model shape of ``predicted_moe_layer_time`` (None: not computed).
    """
    c = problem.cluster
    counts = problem.scenario_counts  # [S, L, E]
    loads = even_gpu_loads(phy2log, counts, c)  # [S, L, G]
    imb = imbalance(loads)  # [S, L]
    active = counts.sum(-1) > 0  # [S, L]
    worst = np.where(active, imb, 1.0).max(axis=0)
    mean = np.where(active, imb, 0.0).sum(0) / np.maximum(active.sum(0), 1)
    pooled = even_gpu_loads(phy2log, counts.sum(axis=0), c)  # [L, G]
    out: dict[str, list[float]] = {
        "imbalance_even": imbalance(pooled).tolist(),
        "worst_window_imbalance_even": worst.tolist(),
        "mean_window_imbalance_even": mean.tolist(),
    }
    L, G = problem.num_layers, c.num_gpus
    if problem.token_traces is None:
        if model is not None:
            _, _, _, layer = layer_times(pooled, c, model, overlap=overlap)
            out["predicted_moe_layer_time"] = layer.tolist()
        return out
    if dispatch is None:
        dispatch = static_dispatch(phy2log, c, problem.num_experts)
    sends = np.zeros(L)
    copies = np.zeros(L)
    sloads = np.zeros((L, G))
    traffic = {k: np.zeros((L, G)) for k in ("intra_send", "intra_recv", "net_send", "net_recv")}
    ntok = 0
    for t, src in zip(problem.token_traces, problem.token_sources(), strict=True):
        ids = np.asarray(t.topk_ids)
        for i in range(L):
            ld, tr, s, cp = static_traffic(phy2log[i], c, problem.num_experts, ids[:, i, :], src,
                                           dispatch=dispatch[i])
            sends[i] += s
            copies[i] += cp
            sloads[i] += ld
            for k in traffic:
                traffic[k][i] += tr[k]
        ntok += ids.shape[0]
    out["imbalance_static"] = imbalance(sloads).tolist()
    out["cross_node_sends_per_token"] = (sends / max(ntok, 1)).tolist()
    out["cross_node_copies_per_token"] = (copies / max(ntok, 1)).tolist()
    if model is not None:
        _, _, _, layer = layer_times(sloads, c, model, traffic=traffic, overlap=overlap)
        out["predicted_moe_layer_time"] = layer.tolist()
    return out


def make_plan(
    problem: ProblemData,
    phy2log: np.ndarray,
    options: SolveOptions,
    method: str,
    start: float,
    *,
    dispatch: np.ndarray | None = None,
    lower_bound: list[float] | None = None,
    status: str = "HEURISTIC",
    settings: dict[str, Any] | None = None,
    allow_colocated: bool = False,
    model: ModelShape | None = None,
) -> Plan:
    """The :class:`Plan` of ``phy2log [L, P]`` with its in-sample figures.

    ``start`` is the ``time.perf_counter()`` of the solve's start (the plan's wall time);
    ``model`` the shape of the predicted time (None: :func:`resolve_model` of the options).
    """
    c = problem.cluster
    if dispatch is None:
        dispatch = static_dispatch(phy2log, c, problem.num_experts)
    if model is None:
        model = resolve_model(options, problem)[0]
    objectives = evaluate_phy2log(phy2log, dispatch, problem, model=model,
                                  overlap=options.overlap)
    settings = dict(settings or {})
    settings.setdefault("bound_of", robust_key(options.robust))
    # the numbers of predicted_moe_layer_time (and of the time objective): the cluster's
    settings.setdefault("hardware", c.figures(model.matmul_precision).to_dict())
    settings.setdefault("scenarios", problem.num_scenarios)
    return Plan(
        cluster=c,
        num_experts=problem.num_experts,
        layer_ids=problem.layer_ids,
        phy2log=phy2log,
        dispatch=dispatch,
        num_hidden_layers=problem.num_hidden_layers,
        model=problem.model,
        method=method,
        settings=settings,
        objectives=objectives,
        lower_bound=lower_bound,
        status=status,
        wall_time=time.perf_counter() - start,
        allow_colocated_replicas=allow_colocated,
    )
