"""The result of a solve: the plan, and how it compares with EPLB on the same input."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from placement.plan import Plan

__all__ = ["SolveResult", "format_solve_result"]


@dataclass(frozen=True)
class SolveResult:
    """A plan and the figures a user checks after solving.

    Attributes:
        plan: the plan (its ``objectives``, ``lower_bound``, ``status`` and ``wall_time`` are
            the solve's).
        reference: per-layer in-sample objectives of EPLB on the same input, by objective name
            (empty when the method is EPLB itself).
        messages: notes for the user (e.g. "traffic unknown: aggregated counts only").
    """

    plan: Plan
    reference: dict[str, list[float]] = field(default_factory=dict)
    reference_method: str = "eplb"
    messages: tuple[str, ...] = ()

    def summary(self) -> str:
        """A readable summary (see :func:`format_solve_result`)."""
        return format_solve_result(self)


def _mean(v: list[float] | None) -> float | None:
    return None if not v else float(np.mean(v))


def format_solve_result(result: SolveResult, *, per_layer: bool = False) -> str:
    """Text summary: method, status, time; per-objective means next to EPLB's; bound and gap."""
    p = result.plan
    lines = [
        f"method {p.method}: {p.num_layers} layer(s) x {p.num_experts} experts on "
        f"{p.cluster.summary()}",
        f"status {p.status}, wall time {p.wall_time:.2f} s",
    ]
    names = [k for k in ("imbalance", "imbalance_mean", "imbalance_worst", "imbalance_static",
                         "cross_node_sends_per_token", "cross_node_copies_per_token")
             if k in p.objectives]
    if names:
        ref = result.reference
        header = f"{'objective (mean over layers)':<32}{'plan':>10}"
        if ref:
            header += f"{result.reference_method:>10}{'ratio':>8}"
        lines.append(header)
        for k in names:
            mine = _mean(p.objectives[k])
            row = f"{k:<32}{mine:>10.4f}"
            theirs = _mean(ref.get(k))
            if ref and theirs is not None and mine is not None:
                ratio = mine / theirs if theirs else float("nan")
                row += f"{theirs:>10.4f}{ratio:>8.3f}"
            lines.append(row)
    if p.lower_bound is not None:
        gap = p.gap
        lines.append(f"lower bound of imbalance (mean over layers): {float(np.mean(p.lower_bound)):.4f}")
        if gap is not None:
            g = np.asarray(gap, dtype=float)
            lines.append(f"gap to bound: mean {np.nanmean(g) * 100:.2f} %, max {np.nanmax(g) * 100:.2f} %")
    if per_layer and names:
        ref_key = "imbalance" if "imbalance" in result.reference else None
        extra = []
        if p.lower_bound is not None:
            extra += ["bound", "gap"]
        if ref_key:
            extra.append(f"{result.reference_method}:imbalance")
        lines.append("per layer: " + "  ".join(names + extra))
        gaps = p.gap
        for i, lid in enumerate(p.layer_ids.tolist()):
            vals = [f"{p.objectives[k][i]:.4f}" for k in names]
            if p.lower_bound is not None:
                vals.append(f"{p.lower_bound[i]:.4f}")
                gi = None if gaps is None else gaps[i]
                vals.append("-" if gi is None or not np.isfinite(gi) else f"{gi * 100:.2f}%")
            if ref_key:
                vals.append(f"{result.reference[ref_key][i]:.4f}")
            lines.append(f"  layer {lid}: " + " ".join(vals))
    lines.extend(result.messages)
    return "\n".join(lines)
