"""The trade-off between balance and traffic, held out: one input solved at several trade-offs.

A single plan is one point; the frontier shows what the others cost. :func:`frontier` solves the
planning traces with the optimizer at several settings (``balance``; ``traffic`` at several
``balance_tolerance``; the default ``time``), makes the baselines (EPLB, EPLB's global policy,
the engines' contiguous default) from the same input, replays every plan on the held-out traces
(:func:`placement.validation.replay`, the engines' static rule) and returns their cross-node
sends per token, imbalance and predicted MoE layer time (:func:`placement.moe_time.layer_times`,
at the cluster's hardware figures: :meth:`placement.cluster.Cluster.figures`) side by side.
:func:`frontier_figure` draws sends against imbalance.

    from placement import Cluster, load_trace
    from placement.frontier import format_frontier, frontier, frontier_figure

    trace = load_trace("trace.npz")
    fr = frontier(trace.select_windows([0, 1]), trace.select_windows([2, 3]),
                  Cluster.preset("deepseek-prefill"))
    print(format_frontier(fr))
    frontier_figure(fr).savefig("frontier.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from placement.cluster import Cluster
from placement.errors import InputError
from placement.hardware import HardwareFigures
from placement.models import ModelShape
from placement.moe_time import layer_times
from placement.plan import Plan
from placement.routing_traces.sharded import ShardedTrace
from placement.routing_traces.trace import Trace
from placement.solver import BASELINES, SolveOptions, baseline_plan, solve
from placement.solver.problem import ProblemData, resolve_model
from placement.solver.registry import Progress

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_TOLERANCES",
    "Frontier",
    "FrontierPoint",
    "format_frontier",
    "frontier",
    "frontier_figure",
]

DEFAULT_TOLERANCES: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
"""``balance_tolerance`` values of the ``traffic`` points."""



@dataclass(frozen=True)
class FrontierPoint:
    """One plan of the frontier, judged on the held-out traces (means over layers).

    Attributes:
        label: ``"optimizer (traffic, tolerance 0.05)"``, ``"eplb"``...
        method: the solver method.
        objective: the optimizer's objective (None for baselines).
        balance_tolerance: the optimizer's tolerance, where one was set.
        imbalance: max/mean tokens per GPU under the engines' static rule.
        sends: cross-node sends per token (distinct remote nodes).
        copies: cross-node copies per token (remote experts).
        predicted_time: predicted MoE layer time, seconds (static loads and traffic).
        plan: the plan.
    """

    label: str
    method: str
    objective: str | None
    balance_tolerance: float | None
    imbalance: float
    sends: float
    copies: float
    predicted_time: float
    plan: Plan = field(repr=False)

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINES


@dataclass(frozen=True)
class Frontier:
    """The points of :func:`frontier`, baselines included.

    Attributes:
        points: every plan, optimizer points first (in the order solved), then baselines.
        cluster: the cluster.
        model: the model shape of the predicted time.
        overlap: its overlap mode.
        heldout_tokens: tokens of the held-out traces.
        dispatch: the dispatch rule of the held-out replays (:data:`placement.validation.RULES`).
    """

    points: tuple[FrontierPoint, ...]
    cluster: Cluster
    model: ModelShape
    overlap: str
    heldout_tokens: int
    dispatch: str = "static"

    def point(self, label: str) -> FrontierPoint:
        """The point called ``label``."""
        for p in self.points:
            if p.label == label:
                return p
        raise KeyError(label)

    def summary(self) -> str:
        """A readable table (:func:`format_frontier`)."""
        return format_frontier(self)

    @property
    def figures(self) -> HardwareFigures:
        """The hardware figures of the predicted times (the cluster's at the model's
        precision: the solver's and the cost model's numbers)."""
        return self.cluster.figures(self.model.matmul_precision)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (no plans)."""
        return {
            "cluster": self.cluster.shape,
            "model": self.model.name,
            "overlap": self.overlap,
            "hardware": self.figures.to_dict(),
            "heldout_tokens": self.heldout_tokens,
            "points": [
                {"label": p.label, "method": p.method, "objective": p.objective,
                 "balance_tolerance": p.balance_tolerance,
                 f"imbalance_{self.dispatch}": p.imbalance,
                 "cross_node_sends_per_token": p.sends,
                 "cross_node_copies_per_token": p.copies,
                 "predicted_moe_layer_time": p.predicted_time}
                for p in self.points
            ],
        }


def _judge(plan: Plan, heldout: Sequence[Trace | ShardedTrace], model: ModelShape,
           overlap: str, dispatch: str = "static") -> tuple[float, float, float, float]:
    """``(imbalance, sends, copies, predicted time)`` of ``plan`` on the held-out traces:
    every trace replayed (a sharded one shard by shard), the figures weighted by its tokens."""
    from placement.validation import replay

    imb, sends, copies, times, weights = [], [], [], [], []
    for t in heldout:
        res = replay(plan, t, dispatch=dispatch)  # a sharded trace shard by shard
        traffic = res.per_gpu_traffic()
        s = res.mean_cross_node_sends_per_token
        cp = res.mean_cross_node_copies_per_token
        if traffic is None or s is None or cp is None:
            raise InputError("the frontier needs token-level held-out traces (traffic).")
        _, _, _, layer = layer_times(res.gpu_loads, plan.cluster, model, traffic=traffic,
                                     overlap=overlap)
        imb.append(res.mean_imbalance)
        sends.append(s)
        copies.append(cp)
        times.append(float(layer.mean()))
        weights.append(float(t.num_tokens or 0))
    w = np.asarray(weights) / max(sum(weights), 1.0)
    return (float(np.dot(w, imb)), float(np.dot(w, sends)), float(np.dot(w, copies)),
            float(np.dot(w, times)))


def frontier(
    plan_from: Trace | Sequence[Trace],
    heldout: Trace | ShardedTrace | Sequence[Trace | ShardedTrace],
    cluster: Cluster,
    *,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    options: SolveOptions | None = None,
    baselines: Sequence[str] = BASELINES,
    progress: Progress | None = None,
    dispatch: str = "static",
) -> Frontier:
    """Solve ``plan_from`` at several trade-offs and judge every plan on ``heldout``.

    Args:
        plan_from: the token-level traces the plans are made from.
        heldout: token-level traces of other windows (never the planning ones); a sharded
            trace is replayed shard by shard.
        cluster: the cluster.
        tolerances: ``balance_tolerance`` of the ``traffic`` points (``balance`` and the
            default ``time`` are always solved).
        options: the other solve settings (model, overlap, seed, jobs...).
        baselines: baselines made from the same input.
        progress: ``progress(done, total)`` after every plan.
        dispatch: the rule of the held-out replays (``static``, ``lp``...:
            :data:`placement.validation.RULES`).
    Returns:
        A :class:`Frontier`.
    """
    plan_traces = [plan_from] if isinstance(plan_from, Trace) else list(plan_from)
    held: list[Trace | ShardedTrace] = (
        [heldout] if isinstance(heldout, (Trace, ShardedTrace)) else list(heldout))
    if not held or not all(t.is_token_level for t in held + plan_traces):
        raise InputError("the frontier needs token-level planning and held-out traces.")
    for tol in tolerances:
        if not (np.isfinite(tol) and tol >= 0):
            raise InputError(f"Expected tolerances >= 0, got {tol}.")
    for b in baselines:
        if b not in BASELINES:
            raise InputError(f"Unknown baseline {b!r}; choose from: {', '.join(BASELINES)}.")
    base = options or SolveOptions()
    problem = ProblemData.from_traces(plan_traces, cluster)
    model = resolve_model(base, problem)[0]
    settings: list[tuple[str, dict[str, Any]]] = [
        ("optimizer (balance)", {"objective": "balance", "balance_tolerance": None}),
        *[(f"optimizer (traffic, tolerance {tol:g})",
           {"objective": "traffic", "balance_tolerance": float(tol)}) for tol in tolerances],
        ("optimizer (time)", {"objective": "time", "balance_tolerance": None}),
    ]
    total = len(settings) + len(baselines)
    points: list[FrontierPoint] = []
    for label, kw in settings:
        opts = SolveOptions(**{**_fields(base), "method": "optimizer", **kw})
        plan = solve(problem, options=opts).plan
        imb, s, cp, t = _judge(plan, held, model, base.overlap, dispatch)
        points.append(FrontierPoint(label, "optimizer", kw["objective"], kw["balance_tolerance"],
                                    imb, s, cp, t, plan))
        if progress is not None:
            progress(len(points), total)
    for name in baselines:
        plan = baseline_plan(problem, base, name)
        imb, s, cp, t = _judge(plan, held, model, base.overlap, dispatch)
        points.append(FrontierPoint(name, name, None, None, imb, s, cp, t, plan))
        if progress is not None:
            progress(len(points), total)
    return Frontier(tuple(points), cluster, model, base.overlap,
                    int(sum(t.num_tokens or 0 for t in held)), dispatch)


def _fields(options: SolveOptions) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(options, f.name) for f in fields(options)}


def format_frontier(fr: Frontier) -> str:
    """One line per point: held-out imbalance, sends, copies, predicted time, and the ratios of
    sends and time to EPLB's."""
    from placement.solver.result import format_seconds

    ref = next((p for p in fr.points if p.label == "eplb"), None)
    head = (f"held-out ({fr.heldout_tokens} tokens, {fr.dispatch} dispatch), {fr.cluster.shape}, "
            f"model {fr.model.name}, {fr.overlap} overlap")
    cols = (f"{'plan':<38}{f'imbalance ({fr.dispatch})':>19}{'sends/token':>13}{'copies/token':>14}"
            f"{'MoE layer time':>16}")
    if ref is not None:
        cols += f"{'sends/eplb':>12}{'time/eplb':>11}"
    lines = [head, cols]
    for p in fr.points:
        row = (f"{p.label:<38}{p.imbalance:>19.4f}{p.sends:>13.4f}{p.copies:>14.4f}"
               f"{format_seconds(p.predicted_time):>16}")
        if ref is not None:
            row += (f"{p.sends / ref.sends if ref.sends else float('nan'):>12.3f}"
                    f"{p.predicted_time / ref.predicted_time if ref.predicted_time else float('nan'):>11.3f}")
        lines.append(row)
    return "\n".join(lines)


def frontier_figure(fr: Frontier, ax: Axes | None = None, *, title: str | None = None) -> Figure:
    """Cross-node sends per token against imbalance (held out): the ``traffic`` points joined
    in order of tolerance, ``balance`` and ``time`` marked, the baselines as labelled markers.

    Draws on ``ax`` when given (its figure is returned), else on a new figure (Agg backend).
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    trade = [p for p in fr.points if p.objective == "traffic"]
    trade.sort(key=lambda p: p.balance_tolerance or 0.0)
    if trade:
        ax.plot([p.imbalance for p in trade], [p.sends for p in trade], "-o", color="tab:blue",
                label="optimizer, traffic at tolerance 0 ... " f"{trade[-1].balance_tolerance:g}")
        # one label per distinct point ("0, 0.02" where two tolerances give the same plan)
        spots: dict[tuple[float, float], list[str]] = {}
        for p in trade:
            spots.setdefault((round(p.imbalance, 6), round(p.sends, 6)), []).append(
                f"{p.balance_tolerance:g}")
        for (x, y), names in spots.items():
            ax.annotate(", ".join(names), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color="tab:blue")
    marks = {"balance": ("s", "tab:green"), "time": ("*", "tab:red")}
    for p in fr.points:
        if p.objective in marks:
            m, c = marks[p.objective]
            ax.plot([p.imbalance], [p.sends], m, color=c, markersize=10 if m == "*" else 7,
                    label=p.label)
    colors = {"eplb": "black", "eplb-global": "tab:gray", "sglang-vec": "tab:olive",
              "contiguous": "tab:brown"}
    for p in fr.points:
        if p.is_baseline:
            ax.plot([p.imbalance], [p.sends], "x", color=colors.get(p.method, "black"),
                    markersize=8, mew=2, label=p.label)
    ax.set_xlabel(f"imbalance ({fr.dispatch}), held out")
    ax.set_ylabel("cross-node sends per token, held out")
    ax.set_title(title or f"{fr.cluster.shape}, {fr.model.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    assert fig is not None
    fig.tight_layout()
    return fig
