"""Held-out balance on the shared aggregated counts of other models (MoE-Lens, Qwen3-30B-A3B).

Plan on some domains (datasets), judge on the others: leave one domain out for the MoE-Lens
traces (7 text domains), leave one dataset out (both languages together) for Qwen3-30B-A3B.
Imbalance is max/mean tokens per GPU with an expert's tokens split evenly over its replicas,
averaged over layers and folds. Two cluster shapes per model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from placement import Cluster
from placement.metrics import even_gpu_loads, imbalance
from placement.routing_traces import Trace, read_native
from placement.solver import SolveOptions, solve

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"

FILES = {
    "deepseek-moe-16b (base)": "moelens_deepseek-base_domain_counts.npz",
    "deepseek-moe-16b (chat)": "moelens_deepseek-chat_domain_counts.npz",
    "olmoe-1b-7b": "moelens_olmoe_domain_counts.npz",
    "qwen1.5-moe-a2.7b": "moelens_qwen_domain_counts.npz",
    "qwen3-30b-a3b": "qwen3_30b_a3b_activation_rates.npz",
}


@dataclass(frozen=True)
class CaseResult:
    """One (model, cluster, method) row: mean held-out imbalance and solve seconds."""

    model: str
    cluster: str
    method: str
    imbalance: float
    folds: int
    solve_seconds: float


def clusters_for(num_experts: int) -> list[Cluster]:
    """Two shapes: 2 nodes x 4 GPUs and 2 nodes x 8 GPUs, with about 25 % redundant slots."""
    out = []
    for nodes, gpn in ((2, 4), (2, 8)):
        g = nodes * gpn
        out.append(Cluster(nodes, gpn, max(math.ceil(num_experts * 1.25 / g), 2)))
    return out


def folds_for(trace: Trace) -> list[list[int]]:
    """Held-out window sets: one per domain; Qwen3's ``{dataset}__{lang}`` grouped by dataset."""
    names = trace.window_names
    if all("__" in n for n in names):
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault(n.split("__")[0], []).append(i)
        return list(groups.values())
    return [[i] for i in range(trace.num_windows)]


def run_model(
    label: str,
    trace: Trace,
    methods: Sequence[str],
    *,
    options: dict | None = None,
    max_folds: int | None = None,
    log: Callable[[str], None] = print,
) -> list[CaseResult]:
    """Leave-out evaluation of every method on both cluster shapes for one model."""
    folds = folds_for(trace)[: max_folds or None]
    rows = []
    for cluster in clusters_for(trace.num_experts):
        for method in methods:
            imbs, secs = [], 0.0
            for held in folds:
                keep = [w for w in range(trace.num_windows) if w not in held]
                t0 = time.perf_counter()
                res = solve(trace.select_windows(keep), cluster,
                            SolveOptions(method=method, **(options or {})))
                secs += time.perf_counter() - t0
                counts = trace.select_windows(held).counts()
                imbs.append(float(imbalance(even_gpu_loads(res.plan.phy2log, counts, cluster)).mean()))
            row = CaseResult(label, cluster.shape, method, float(np.mean(imbs)), len(folds), secs)
            log(f"  {label:<26} {cluster.shape:<8} {method:<12} imbalance {row.imbalance:.3f} "
                f"({row.folds} folds, {secs:.1f} s)")
            rows.append(row)
    return rows


def run(
    methods: Sequence[str], *, quick: bool = False, log: Callable[[str], None] = print
) -> list[CaseResult]:
    """Every shared aggregated model; ``quick`` keeps two folds of two models."""
    rows: list[CaseResult] = []
    items = list(FILES.items())
    if quick:
        items = [items[0]]
    for label, name in items:
        path = SHARED / name
        if not path.is_file():
            raise FileNotFoundError(f"shared trace missing: {path}")
        rows += run_model(label, read_native(path), methods, max_folds=2 if quick else None, log=log)
    return rows


if __name__ == "__main__":
    run(["eplb", "eplb-global", "contiguous"], quick=True)
