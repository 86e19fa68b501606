"""In-sample objective values of a placement on the problem it was made from."""

from __future__ import annotations

import numpy as np

from placement.metrics import even_gpu_loads, imbalance, source_gpus, token_traffic
from placement.solver.problem import ProblemData

__all__ = ["evaluate_phy2log"]


def evaluate_phy2log(
    phy2log: np.ndarray, dispatch: np.ndarray | None, problem: ProblemData, robust: str = "max"
) -> dict[str, list[float]]:
    """Per-layer objective values of a placement on the problem's scenarios.

    Args:
        phy2log: ``[L, P]``.
        dispatch: ``[L, G, E]`` the plan's dispatch table (token-level traffic), or None.
    Returns:
        ``imbalance`` (max/mean tokens per GPU, even split over replicas, combined over scenarios
        by ``robust``: worst case or mean), ``imbalance_mean`` and ``imbalance_worst``; with
        token-level scenarios and a dispatch table also ``cross_node_sends_per_token`` and
        ``cross_node_copies_per_token`` (all scenarios' tokens together) and ``imbalance_static``
        (loads under the dispatch table, all tokens together).
    """
    c = problem.cluster
    loads = even_gpu_loads(phy2log, problem.scenario_counts, c)  # [S, L, G]
    imb = imbalance(loads)  # [S, L]
    active = problem.scenario_counts.sum(-1) > 0  # [S, L]
    worst = np.where(active, imb, 1.0).max(axis=0)
    mean = np.where(active, imb, 0.0).sum(0) / np.maximum(active.sum(0), 1)
    out: dict[str, list[float]] = {
        "imbalance": (worst if robust == "max" else mean).tolist(),
        "imbalance_mean": mean.tolist(),
        "imbalance_worst": worst.tolist(),
    }
    if problem.token_traces is not None and dispatch is not None:
        L = problem.num_layers
        sends = np.zeros(L)
        copies = np.zeros(L)
        sloads = np.zeros((L, c.num_gpus))
        ntok = 0
        for t in problem.token_traces:
            ids = t.topk_ids
            src = source_gpus(ids.shape[0], t.source_rank, c.num_gpus)
            s, cp, ld = token_traffic(dispatch, ids, src, c)
            sends += s
            copies += cp
            sloads += ld
            ntok += ids.shape[0]
        out["cross_node_sends_per_token"] = (sends / max(ntok, 1)).tolist()
        out["cross_node_copies_per_token"] = (copies / max(ntok, 1)).tolist()
        out["imbalance_static"] = imbalance(sloads).tolist()
    return out
