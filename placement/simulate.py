"""Plans over time: periodic EPLB, one static plan, and budgeted re-plans, window by window.

Serving engines re-run DeepSeek's EPLB every N steps on the counts they recorded since the last
run (SGLang ``--enable-eplb --eplb-rebalance-num-iterations``, vLLM ``--enable-eplb``, TensorRT-LLM
``layer_updates_per_iter``), moving expert weights each time. :func:`simulate` replays a trace
window by window under three policies and says what each achieves and what it moves:

* ``eplb``: DeepSeek's EPLB re-planned every ``every`` windows from the counts of the last
  ``every`` windows (``eplb_history``), as the engines do;
* ``static``: the optimizer's plan (:func:`placement.solver.solve`), made once from the first
  ``warmup`` windows and never changed;
* ``replan``: the static plan, then every ``every`` windows :func:`placement.solver.replan.replan`
  from the counts of the last ``history`` windows (default: as many as the static plan saw)
  within ``max_moves`` moves per re-plan (default: 10 % of the slots).

Timeline: windows ``0 .. warmup-1`` are the start-up data; every policy has its first plan in
force at window ``warmup`` (that initial placement is not counted as moves); a re-plan at window
``t`` (``t = warmup + every, warmup + 2 * every, ...``) sees only windows before ``t`` and is in
force from ``t`` on. Each window ``w >= warmup`` is replayed against the plan in force
(:func:`placement.validation.replay`; the static dispatch rule for token-level traces, the even
split for counts). Figures, per layer and window, then:

* ``mean imbalance``: the mean over windows of the window's imbalance (mean over layers);
* ``worst-window imbalance``: per layer the maximum over windows, then the mean over layers
  (the figures vocabulary);
* the same two for cross-node sends per token (token-level traces);
* moves: expert weights received by GPUs that did not hold them (:mod:`placement.moves`), summed
  over re-plans, the same count for every policy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placement._util import Progress
from placement.cluster import Cluster
from placement.errors import InputError
from placement.moves import count_moves
from placement.parallel import Backend
from placement.plan import Plan
from placement.routing_traces.trace import Trace
from placement.solver import ProblemData, SolveOptions, baseline_plan, solve
from placement.solver.replan import ReplanOptions, replan
from placement.validation import replay

__all__ = ["POLICIES", "PolicyRun", "SimulateOptions", "SimulationResult", "format_simulation",
           "simulate"]

POLICIES: tuple[str, ...] = ("eplb", "static", "replan")



@dataclass(frozen=True)
class SimulateOptions:
    """Settings of :func:`simulate`.

    Args:
        every: K, re-plan every K windows (EPLB and ``replan``).
        warmup: windows the first plans are made from (default: a quarter of the windows, at
            least ``every``).
        max_moves: ``replan``'s budget per re-plan, expert weights in total (default: 10 % of
            the slots of all layers).
        history: windows a ``replan`` re-plan sees (default: ``warmup``).
        eplb_history: windows an EPLB re-plan sees (default: ``every``, as the engines do).
        eplb_method: ``"eplb"`` (hierarchical where the groups divide into nodes) or
            ``"eplb-global"``.
        policies: which policies to run.
        solve_options: the static plan's optimizer settings (default: the optimizer with a time
            limit of a day, so that it never binds and the run is deterministic).
        replan_target: let every re-plan also search toward the optimizer's plan (slower).
        jobs: CPU processes for the solves (the result does not depend on it).
        backend: where the solves' per-layer work runs (:mod:`placement.parallel`); None:
            ``jobs`` processes. The result does not depend on it.
    """

    every: int = 1
    warmup: int | None = None
    max_moves: int | None = None
    history: int | None = None
    eplb_history: int | None = None
    eplb_method: str = "eplb"
    policies: tuple[str, ...] = POLICIES
    solve_options: SolveOptions | None = None
    replan_target: bool = False
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    backend: Backend | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("every", "warmup", "history", "eplb_history"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer)
                                  or v < 1):
                raise InputError(f"Expected {name} >= 1 (an integer), got {v!r}.")
        if self.max_moves is not None and (isinstance(self.max_moves, bool)
                                           or not isinstance(self.max_moves, int | np.integer)
                                           or self.max_moves < 0):
            raise InputError(f"Expected max_moves >= 0 (an integer), got {self.max_moves!r}.")
        if self.eplb_method not in ("eplb", "eplb-global"):
            raise InputError(f"Expected eplb_method 'eplb' or 'eplb-global', got "
                             f"{self.eplb_method!r}.")
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise InputError(f"Expected policies among {', '.join(POLICIES)}, got "
                             f"{', '.join(self.policies) or 'none'}.")
        if self.jobs < 1:
            raise InputError(f"Expected jobs >= 1, got {self.jobs}.")


@dataclass(frozen=True)
class PolicyRun:
    """What one policy did over the judged windows.

    Attributes:
        policy: ``"eplb"``, ``"static"`` or ``"replan"``.
        label: a readable name with its settings.
        windows: ``[W']`` the judged windows.
        imbalance: ``[W', L]`` per window and layer.
        sends: ``[W', L]`` cross-node sends per token, or None (counts).
        replan_windows: windows at which the policy re-planned.
        moves: ``[R]`` moves of every re-plan (all layers).
        cross_node_moves: ``[R]`` of those, cross-node.
    """

    policy: str
    label: str
    windows: np.ndarray
    imbalance: np.ndarray
    sends: np.ndarray | None
    replan_windows: tuple[int, ...]
    moves: np.ndarray
    cross_node_moves: np.ndarray

    @property
    def mean_imbalance(self) -> float:
        """Mean over windows of the window's imbalance (mean over layers)."""
        return float(self.imbalance.mean(axis=1).mean())

    @property
    def worst_window_imbalance(self) -> float:
        """Per layer the worst window, then the mean over layers."""
        return float(self.imbalance.max(axis=0).mean())

    @property
    def mean_sends(self) -> float | None:
        """Mean over windows of the cross-node sends per token (mean over layers)."""
        return None if self.sends is None else float(self.sends.mean(axis=1).mean())

    @property
    def worst_window_sends(self) -> float | None:
        """Per layer the worst window's sends per token, then the mean over layers."""
        return None if self.sends is None else float(self.sends.max(axis=0).mean())

    @property
    def total_moves(self) -> int:
        """Moves over all re-plans."""
        return int(self.moves.sum())


@dataclass(frozen=True)
class SimulationResult:
    """A simulation: the policies side by side (see the module docstring).

    Attributes:
        trace_name: the trace's label.
        cluster: the cluster.
        options: the settings (``every``, ``warmup``, budgets resolved).
        num_windows: W, windows of the trace.
        rule: ``"static"`` (token-level) or ``"even"`` (counts): the dispatch rule of the figures.
        num_slots: slots of all layers (``P * L``).
        runs: one :class:`PolicyRun` per policy.
    """

    trace_name: str
    cluster: Cluster
    options: SimulateOptions
    num_windows: int
    rule: str
    num_slots: int
    runs: tuple[PolicyRun, ...]

    def run(self, policy: str) -> PolicyRun:
        """The run of one policy."""
        for r in self.runs:
            if r.policy == policy:
                return r
        raise KeyError(policy)

    def summary(self) -> str:
        """A readable summary (see :func:`format_simulation`)."""
        return format_simulation(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings and, per policy, its figures and per-window series."""
        o = self.options
        eplb = next((r for r in self.runs if r.policy == "eplb"), None)
        runs = []
        for r in self.runs:
            runs.append({
                "policy": r.policy,
                "label": r.label,
                f"mean_imbalance_{self.rule}": r.mean_imbalance,
                f"worst_window_imbalance_{self.rule}": r.worst_window_imbalance,
                "mean_cross_node_sends_per_token": r.mean_sends,
                "worst_window_cross_node_sends_per_token": r.worst_window_sends,
                "replans": len(r.replan_windows),
                "replan_windows": list(r.replan_windows),
                "moves": r.total_moves,
                "cross_node_moves": int(r.cross_node_moves.sum()),
                "moves_per_replan": r.moves.tolist(),
                "moves_vs_eplb": None if eplb is None or not eplb.total_moves
                else r.total_moves / eplb.total_moves,
                "windows": [
                    {"window": int(w), f"imbalance_{self.rule}": float(r.imbalance[i].mean()),
                     "cross_node_sends_per_token": None if r.sends is None
                     else float(r.sends[i].mean())}
                    for i, w in enumerate(r.windows.tolist())
                ],
            })
        return {
            "trace": self.trace_name,
            "cluster": self.cluster.shape,
            "num_windows": self.num_windows,
            "every": o.every,
            "warmup": o.warmup,
            "history": o.history,
            "eplb_history": o.eplb_history,
            "max_moves_per_replan": o.max_moves,
            "slots": self.num_slots,
            "dispatch": self.rule,
            "policies": runs,
        }


def _pooled(trace: Trace, windows: list[int]) -> Trace:
    """``windows`` of ``trace`` as one window: their tokens (token-level) or the sum of their
    counts."""
    if trace.is_token_level:
        part = trace.select_windows(windows)
        return Trace(num_experts=trace.num_experts, topk_ids=part.topk_ids,
                     source_rank=part.source_rank, layer_ids=trace.layer_ids, model=trace.model,
                     num_hidden_layers=trace.num_hidden_layers)
    counts = trace.window_counts()[windows].sum(axis=0)  # [L, E]
    return Trace(num_experts=trace.num_experts, counts=counts, layer_ids=trace.layer_ids,
                 model=trace.model, num_hidden_layers=trace.num_hidden_layers, top_k=trace.top_k)


def _judge(plan: Plan, window: Trace, rule: str) -> tuple[np.ndarray, np.ndarray | None]:
    r = replay(plan, window, dispatch=rule, device="cpu")
    sends = r.cross_node_sends_per_token
    return np.asarray(r.imbalance), None if sends is None else np.asarray(sends)


def simulate(trace: Trace, cluster: Cluster, options: SimulateOptions | None = None, *,
             trace_name: str = "", progress: Progress | None = None) -> SimulationResult:
    """Replay ``trace`` window by window under periodic EPLB, a static plan and budgeted
    re-plans (see the module docstring).

    Raises :class:`InputError` when the trace has too few windows for the settings.
    """
    o = options or SimulateOptions()
    W = trace.num_windows
    K = o.every
    warmup = o.warmup if o.warmup is not None else max(K, W // 4)
    if W < warmup + 1:
        raise InputError(f"the trace has {W} window(s): too few to plan from {warmup} and judge "
                         "on the rest (it needs at least warmup + 1; use --warmup or a trace "
                         "with more windows).")
    cluster.check_fits(trace.num_experts)
    L = trace.num_layers
    P = cluster.num_slots
    budget = o.max_moves if o.max_moves is not None else math.ceil(0.1 * P * L)
    history = o.history if o.history is not None else warmup
    eplb_history = o.eplb_history if o.eplb_history is not None else K
    o = SimulateOptions(every=K, warmup=warmup, max_moves=budget, history=history,
                        eplb_history=eplb_history, eplb_method=o.eplb_method,
                        policies=o.policies, solve_options=o.solve_options,
                        replan_target=o.replan_target, jobs=o.jobs, backend=o.backend)
    rule = "static" if trace.is_token_level else "even"
    decisions = list(range(warmup, W, K))  # the first is the initial plan
    judged = list(range(warmup, W))
    windows = [trace.select_windows([w]) for w in judged]
    steps = len(decisions) * len(o.policies) + len(judged) * len(o.policies)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps)

    sopts = o.solve_options or SolveOptions(time_limit=24 * 3600.0, jobs=o.jobs,
                                            backend=o.backend)
    static: Plan | None = None
    if "static" in o.policies or "replan" in o.policies:
        start = trace.select_windows(list(range(warmup)))
        static = solve(ProblemData.from_traces(start, cluster), options=sopts).plan

    runs: list[PolicyRun] = []
    for policy in o.policies:
        plans: dict[int, Plan] = {}
        moves: list[int] = []
        cross: list[int] = []
        current: Plan | None = None
        for t in decisions:
            if policy == "static" and current is not None:
                plans[t] = current
                tick()
                continue
            if policy == "eplb":
                seen = list(range(max(0, t - eplb_history), t))
                prob = ProblemData.from_traces(_pooled(trace, seen), cluster)
                new = baseline_plan(prob, SolveOptions(method=o.eplb_method), o.eplb_method)
            elif current is None:
                assert static is not None
                new = static
            else:
                seen = list(range(max(0, t - history), t))
                new = replan(current, _pooled(trace, seen),
                             ReplanOptions(max_moves=budget, target=o.replan_target,
                                           jobs=o.jobs, backend=o.backend)).plan
            if current is not None:
                mc = count_moves(np.asarray(current.phy2log), np.asarray(new.phy2log), cluster,
                                 trace.num_experts)
                moves.append(mc.total)
                cross.append(mc.total_cross_node)
            current = new
            plans[t] = new
            tick()
        imb = np.zeros((len(judged), L))
        snd: np.ndarray | None = np.zeros((len(judged), L)) if rule == "static" else None
        in_force: Plan | None = None
        for i, w in enumerate(judged):
            in_force = plans.get(w, in_force)
            assert in_force is not None
            a, s = _judge(in_force, windows[i], rule)
            imb[i] = a
            if snd is not None and s is not None:
                snd[i] = s
            tick()
        label = {
            "eplb": f"EPLB every {K} window(s) (last {eplb_history})",
            "static": f"static optimizer plan (first {warmup} windows)",
            "replan": f"replan every {K} window(s), <= {budget} moves (last {history})",
        }[policy]
        runs.append(PolicyRun(
            policy=policy, label=label, windows=np.asarray(judged), imbalance=imb, sends=snd,
            replan_windows=tuple(decisions[1:]) if policy != "static" else (),
            moves=np.asarray(moves, dtype=np.int64), cross_node_moves=np.asarray(cross,
                                                                               dtype=np.int64),
        ))
    return SimulationResult(trace_name=trace_name, cluster=cluster, options=o, num_windows=W,
                            rule=rule, num_slots=P * L, runs=tuple(runs))


def format_simulation(result: SimulationResult) -> str:
    """Text: the setting, then a row per policy (figures over the judged windows, moves)."""
    r = result
    o = r.options
    assert o.warmup is not None
    judged = r.num_windows - o.warmup
    head = f"{r.trace_name}: " if r.trace_name else ""
    lines = [
        f"{head}{r.num_windows} windows on {r.cluster.summary()}",
        f"plans made from windows 0-{o.warmup - 1}, judged on windows {o.warmup}-"
        f"{r.num_windows - 1} ({judged}); re-plans every {o.every} window(s)",
        f"figures per window (imbalance ({r.rule}), the plan in force), then over windows: "
        "mean, and worst window per layer (mean over layers)",
    ]
    eplb = next((x for x in r.runs if x.policy == "eplb"), None)
    has_sends = any(x.sends is not None for x in r.runs)
    hdr = f"{'policy':<48} {'mean imb.':>9} {'worst-w.':>9}"
    if has_sends:
        hdr += f" {'sends':>7} {'worst-w.':>8}"
    hdr += f" {'re-plans':>8} {'moves':>8} {'vs EPLB':>8}"
    lines.append(hdr)
    for x in r.runs:
        row = f"{x.label:<48} {x.mean_imbalance:>9.4f} {x.worst_window_imbalance:>9.4f}"
        if has_sends:
            ms, ws = x.mean_sends, x.worst_window_sends
            row += (f" {ms:>7.4f} {ws:>8.4f}" if ms is not None and ws is not None
                    else f" {'-':>7} {'-':>8}")
        vs = ("-" if eplb is None or not eplb.total_moves
              else f"{x.total_moves / eplb.total_moves:.3f}")
        row += f" {len(x.replan_windows):>8} {x.total_moves:>8} {vs:>8}"
        lines.append(row)
    lines.append(f"moves: expert weights a GPU received that it did not hold, summed over "
                 f"re-plans ({r.num_slots} slots in all)")
    return "\n".join(lines)
