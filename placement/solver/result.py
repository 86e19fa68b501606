"""The result of a solve: the plan, and how it compares with EPLB on the same input.

The summary names every figure as the figures vocabulary does (``imbalance (static)``,
``worst-window imbalance (even)``, ``cross-node sends per token``, ``predicted MoE layer
time``...), so ``placement solve T`` and ``placement validate plan.json T`` print the same
number under the same label for the same trace (in-sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placement.plan import Plan

__all__ = [
    "FIGURES",
    "SolveResult",
    "bounded_layers",
    "format_seconds",
    "format_solve_result",
    "hardware_line",
    "solve_figures",
    "summary_figures",
]

FIGURES: tuple[tuple[str, str], ...] = (
    ("predicted_moe_layer_time", "predicted MoE layer time"),
    ("imbalance_static", "imbalance (static)"),
    ("imbalance_even", "imbalance (even)"),
    ("worst_window_imbalance_even", "worst-window imbalance (even)"),
    ("mean_window_imbalance_even", "mean-window imbalance (even)"),
    ("cross_node_sends_per_token", "cross-node sends per token"),
    ("cross_node_copies_per_token", "cross-node copies per token"),
)
"""``(key, label)`` of the figures a solve reports, in the summary's order."""

_LABELS = dict(FIGURES)


@dataclass(frozen=True)
class SolveResult:
    """A plan and the figures a user checks after solving.

    Attributes:
        plan: the plan (its ``objectives``, ``lower_bound``, ``status`` and ``wall_time`` are
            the solve's; ``settings`` records the objective, fallbacks and layer statuses).
        reference: per-layer in-sample figures of EPLB on the same input, by figure name
            (empty when the method is EPLB itself).
        reference_method: the method of ``reference``.
        messages: notes for the user (e.g. "traffic unknown: aggregated counts only").
    """

    plan: Plan
    reference: dict[str, list[float]] = field(default_factory=dict)
    reference_method: str = "eplb"
    messages: tuple[str, ...] = ()

    def summary(self) -> str:
        """A readable summary (see :func:`format_solve_result`)."""
        return format_solve_result(self)

    @property
    def fell_back(self) -> list[int]:
        """Layer ids whose placement is EPLB's (the search did not beat it)."""
        flags = self.plan.settings.get("fell_back") or []
        return [int(lid) for lid, f in zip(self.plan.layer_ids.tolist(), flags, strict=False) if f]

    @property
    def guard_fell_back(self) -> list[int]:
        """Layer ids where the drift rule kept a plain plan (EPLB's, EPLB-global's, the
        balance-only plan): no traffic-aware plan was admitted on the drift scenarios or beat
        the plain ones there."""
        flags = self.plan.settings.get("guard_fell_back") or []
        return [int(lid) for lid, f in zip(self.plan.layer_ids.tolist(), flags, strict=False)
                if f == 1.0]

    @property
    def cut_layers(self) -> list[int]:
        """Layer ids the time limit cut."""
        st = self.plan.settings.get("layer_status") or []
        return [int(lid) for lid, s in zip(self.plan.layer_ids.tolist(), st, strict=False)
                if s == "TIME_LIMIT"]

    def objective_ratio(self) -> float | None:
        """Mean over layers of the plan's objective figure over EPLB's, as the optimizer scored
        them (None: not an optimizer plan). Never above 1 on any layer."""
        mine = self.plan.settings.get("objective_value")
        ref = self.plan.settings.get("eplb_objective_value")
        if not mine or not ref or not np.nanmean(ref):
            return None
        return float(np.nanmean(mine) / np.nanmean(ref))

    def time_ratio(self) -> float | None:
        """Mean predicted MoE layer time of the plan over EPLB's (None: unknown)."""
        mine = self.plan.objectives.get("predicted_moe_layer_time")
        ref = self.reference.get("predicted_moe_layer_time")
        if not mine or not ref or not np.mean(ref):
            return None
        return float(np.mean(mine) / np.mean(ref))


def format_seconds(x: float) -> str:
    """``612.3 us``, ``1.234 ms``, ``2.10 s``."""
    if not np.isfinite(x):
        return "n/a"
    if abs(x) < 1e-3:
        return f"{x * 1e6:.1f} us"
    if abs(x) < 1.0:
        return f"{x * 1e3:.3f} ms"
    return f"{x:.2f} s"


def _mean(v: list[float] | None) -> float | None:
    return None if not v else float(np.mean(v))


def bounded_layers(plan: Plan) -> list[int]:
    """Indices of the layers whose lower bound means something: CP-SAT's, or a replica-count
    (or group) bound above 1."""
    if plan.lower_bound is None:
        return []
    src = plan.settings.get("bound_source") or ["counts"] * plan.num_layers
    return [i for i, (b, s) in enumerate(zip(plan.lower_bound, src, strict=False))
            if s == "exact" or b > 1.0 + 1e-9]


def _gaps(plan: Plan, rows: list[int]) -> tuple[str, list[float]]:
    key = str(plan.settings.get("bound_of", "worst_window_imbalance_even"))
    vals = plan.objectives.get(key) or []
    assert plan.lower_bound is not None
    gaps = [(vals[i] - plan.lower_bound[i]) / vals[i] if vals and vals[i] > 0 else float("nan")
            for i in rows]
    return key, gaps


def _figure(key: str, x: float | None) -> str:
    if x is None:
        return "-"
    return format_seconds(x) if key == "predicted_moe_layer_time" else f"{x:.4f}"


def _span(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids[:12]) + (", ..." if len(ids) > 12 else "")


def summary_figures(result: SolveResult) -> list[str]:
    """The figure keys the summary shows (the robust one only with several scenarios)."""
    p = result.plan
    robust = str(p.settings.get("bound_of", "worst_window_imbalance_even"))
    several = bool(p.settings.get("scenarios", 2) > 1)
    keys = []
    for k, _ in FIGURES:
        if k not in p.objectives:
            continue
        if k.endswith("window_imbalance_even") and (k != robust or not several):
            continue
        keys.append(k)
    return keys


def hardware_line(plan: Plan) -> str | None:
    """``hardware of the predicted time: h800 1187 TFLOP/s fp8, NVLink 160 GB/s, network 40
    GB/s (where from)``, from the plan's ``settings["hardware"]``; None when the plan has no
    predicted time."""
    hw = plan.settings.get("hardware")
    if "predicted_moe_layer_time" not in plan.objectives or not isinstance(hw, dict):
        return None
    summary = hw.get("summary")
    return f"hardware of the predicted time: {summary}" if isinstance(summary, str) else None


def format_solve_result(result: SolveResult, *, per_layer: bool = False) -> str:
    """Text summary: method, objective, status, time; the in-sample figures next to EPLB's;
    fallbacks, time-limit cuts, and the bound where it means something."""
    p = result.plan
    s = p.settings
    lines = [
        f"method {p.method}: {p.num_layers} layer(s) x "
        f"{p.num_experts} experts on {p.cluster.summary()}",
    ]
    if "objective" in s:
        what = {"time": "predicted MoE layer time", "balance": "peak GPU load",
                "traffic": "cross-node sends"}.get(str(s["objective"]), str(s["objective"]))
        line = f"objective {s['objective']} ({what})"
        if s.get("model"):
            line += f"; model {s['model']} ({s.get('model_source', 'given')})"
        if s.get("overlap"):
            line += f", {s['overlap']} overlap"
        if s.get("balance_tolerance") is not None:
            line += f"; balance tolerance {float(s['balance_tolerance']):g}"
        lines.append(line)
    lines.append(f"status {p.status}, wall time {p.wall_time:.2f} s")
    hw = hardware_line(p)
    if hw is not None:
        lines.append(hw)
    keys = summary_figures(result)
    ref = result.reference
    if keys:
        header = f"{'in-sample, mean over layers':<34}{'plan':>12}"
        if ref:
            header += f"{result.reference_method:>12}{'ratio':>8}"
        lines.append(header)
        for k in keys:
            label = _LABELS[k]
            if k == "predicted_moe_layer_time" and s.get("overlap"):
                label = f"{label} ({s['overlap']})"
            mine = _mean(p.objectives[k])
            row = f"{label:<34}{_figure(k, mine):>12}"
            theirs = _mean(ref.get(k))
            if ref and theirs is not None and mine is not None:
                ratio = mine / theirs if theirs else float("nan")
                row += f"{_figure(k, theirs):>12}{ratio:>8.3f}"
            lines.append(row)
    obj_ratio = result.objective_ratio()
    if obj_ratio is not None:
        window = "worst" if s.get("robust", "max") == "max" else "mean"
        time_what = ("predicted MoE layer time of the expected loads" if s.get("token_level")
                     else f"predicted compute time of the {window} window")
        what = {"time": time_what,
                "balance": f"{_LABELS.get(str(s.get('bound_of')), 'robust imbalance')}",
                "traffic": "cross-node sends per token"}.get(str(s.get("objective")), "objective")
        adm = [bool(x) for x in s.get("eplb_admissible") or []]
        L = p.num_layers
        if all(adm):
            tail = "no layer worse"
        else:
            tail = (f"no layer worse where EPLB's meets the balance tolerance ({sum(adm)} of "
                    f"{L} layer(s))")
        lines.append(f"objective ({what}): {obj_ratio:.3f} x EPLB's, {tail}")
    fb = result.fell_back
    if "fell_back" in s:
        lines.append(f"fell back to EPLB's placement: {len(fb)} of {p.num_layers} layer(s)"
                     + (f" ({_span(fb)}): the search did not beat it" if fb else ""))
    if s.get("drift_summary"):
        lines.append(f"drift: {s['drift_summary']}")
    if "guard_fell_back" in s:
        lines.extend(drift_rule_lines(result))
    rows = bounded_layers(p)
    if rows and p.lower_bound is not None:
        key, gaps = _gaps(p, rows)
        g = np.maximum(np.asarray(gaps, dtype=float), 0.0)  # an exact layer's bound may exceed
        # its value by a rounding error (-1e-16): no plan beats its bound, so that gap is 0
        lb = float(np.mean([p.lower_bound[i] for i in rows]))
        lines.append(
            f"lower bound of {_LABELS.get(key, key)}: mean {lb:.4f} on {len(rows)} of "
            f"{p.num_layers} layer(s); gap mean {np.nanmean(g) * 100:.2f} %, "
            f"max {np.nanmax(g) * 100:.2f} %"
        )
    cut = result.cut_layers
    if cut:
        lines.append(
            f"time limit: cut {len(cut)} of {p.num_layers} layer(s) ({_span(cut)}); they hold "
            "the best placement found by then, so the plan may differ between machines"
        )
    if per_layer and keys:
        lines.extend(_per_layer_lines(result, keys, rows))
    lines.extend(result.messages)
    return "\n".join(lines)


def drift_rule_lines(result: SolveResult) -> list[str]:
    """The drift rule's lines of the summary: how many layers kept each kind of plan, and the
    kept plans' expected and worst-scenario figures against EPLB's under the drift model (means
    over the judged layers)."""
    s = result.plan.settings
    gfb = s.get("guard_fell_back") or []
    judged = [i for i, f in enumerate(gfb) if f == f]  # not NaN
    if not judged:
        return []
    if "drift_expected_time_ratio" not in s:  # the validation guard judged them
        gb = result.guard_fell_back
        return [f"validation guard: {len(gb)} of {len(judged)} layer(s) kept a plain plan"
                + (f" ({_span(gb)}): no traffic-aware plan beat EPLB's on the planning "
                   "tokens it was not fitted to" if gb else "")]
    kinds = s.get("drift_kept_kind") or []
    count: dict[str, int] = {}
    for i in judged:
        k = str(kinds[i]) if i < len(kinds) else "?"
        k = k if k in ("eplb", "eplb-spread", "balance", "eplb-global") else "traffic-aware"
        count[k] = count.get(k, 0) + 1
    kept = ", ".join(f"{k} {n}" for k, n in sorted(count.items(), key=lambda x: (-x[1], x[0])))

    def mean(key: str) -> float:
        v = np.asarray(s.get(key) or [np.nan] * len(gfb), dtype=float)[judged]
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    return [
        f"drift rule: {len(judged)} layer(s) judged on drift scenarios; kept {kept}",
        f"  kept plans vs EPLB under drift (mean over layers): expected time "
        f"{mean('drift_expected_time_ratio'):.3f} x, worst scenario "
        f"{mean('drift_worst_time_ratio'):.3f} x, imbalance "
        f"{mean('drift_expected_imbalance_ratio'):.3f} x, sends {mean('drift_sends_ratio'):.3f} x",
    ]


def _per_layer_lines(result: SolveResult, keys: list[str], rows: list[int]) -> list[str]:
    p = result.plan
    ref = result.reference
    key = str(p.settings.get("bound_of", "worst_window_imbalance_even"))
    head = list(keys)
    if rows:
        head += ["bound", "gap"]
    ref_keys = [k for k in ("predicted_moe_layer_time", "imbalance_static", key) if k in ref]
    head += [f"{result.reference_method}:{k}" for k in ref_keys]
    out = ["per layer: " + "  ".join(head)]
    fell = p.settings.get("fell_back") or [False] * p.num_layers
    for i, lid in enumerate(p.layer_ids.tolist()):
        vals = [_figure(k, p.objectives[k][i]) for k in keys]
        if rows and p.lower_bound is not None:
            if i in rows:
                b = p.lower_bound[i]
                v = p.objectives[key][i]
                vals += [f"{b:.4f}", f"{(v - b) / v * 100:.2f}%"]
            else:
                vals += ["-", "-"]
        vals += [_figure(k, ref[k][i]) for k in ref_keys]
        note = "  (eplb)" if fell[i] else ""
        out.append(f"  layer {lid}: " + " ".join(vals) + note)
    return out


def solve_figures(result: SolveResult) -> dict[str, Any]:
    """Means over layers of the plan's and EPLB's figures (JSON-ready)."""
    return {
        "plan": {k: _mean(v) for k, v in result.plan.objectives.items()},
        "reference": {k: _mean(v) for k, v in result.reference.items()},
    }
