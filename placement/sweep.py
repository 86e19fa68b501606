"""Deployment sweep: how many redundant experts, on which cluster, at what $ per million tokens.

For every cluster shape (nodes x GPUs per node) and every number of redundant experts ``R``
(``P = E + R`` physical slots per layer, ``P / G`` per GPU), :func:`sweep`:

1. skips the point when ``P`` does not divide over the ``G`` GPUs (the engines need equal slots
   per GPU) or when the weights alone do not fit in the GPU's memory;
2. plans it with every method asked for (the optimizer and DeepSeek's EPLB, through
   :func:`placement.solver.solve`) from the planning traces;
3. judges every plan on the held-out traces (:func:`placement.validation.replay`: the static
   rule on token-level traces, the even split on aggregated counts): imbalance, cross-node sends
   per token (token-level traces only; aggregated counts get an estimate from the GPU loads);
4. costs the full serving step with the held-out imbalance and traffic
   (:func:`placement.cost.estimate_step`): KV cache left after the weights and the redundant
   experts, the batch that memory (and a per-user speed target, if any) allows at the context
   length, the step time, tokens/s and $ per million tokens.

The best point is the feasible one with the lowest $ per million tokens (the highest tokens/s
per GPU at one price). :func:`write_sweep` writes ``sweep.md``, ``sweep.json``, the two figures
and the best point's plan, each file atomically.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import atomic_write_bytes, atomic_write_text
from placement._util import Progress, format_si
from placement.cluster import Cluster
from placement.cost.step import (
    Efficiency,
    MoeLoad,
    StepEstimate,
    Workload,
    estimate_step,
)
from placement.errors import InputError
from placement.hardware import GPU, gpu_preset
from placement.models import ModelShape
from placement.parallel import process_pool
from placement.plan import Plan
from placement.routing_traces.trace import Trace
from placement.solver import METHODS, ProblemData, SolveOptions, solve
from placement.validation import ValidationResult, replay

__all__ = [
    "SWEEP_FILES",
    "SweepOptions",
    "SweepPoint",
    "SweepResult",
    "format_sweep",
    "format_sweep_markdown",
    "sweep",
    "sweep_figures",
    "write_sweep",
]

SWEEP_FILES: tuple[str, ...] = ("sweep.md", "sweep.json", "tokens_per_s.png",
                                "usd_per_million_tokens.png", "best-plan.json")
"""What :func:`write_sweep` writes (the plan only when some point is feasible)."""



@dataclass(frozen=True)
class SweepOptions:
    """Settings of :func:`sweep`.

    Args:
        redundant: numbers of redundant experts ``R = P - E`` to try.
        nodes: node counts to try.
        gpus_per_node: GPUs per node to try.
        gpu: the GPU (a :data:`~placement.hardware.GPU_PRESETS` name or a
            :class:`~placement.hardware.GPU`).
        methods: planners to compare (``"optimizer"``, ``"eplb"``, ...).
        workload: phase, context length, speed target, runtime reserve of the cost model.
        solve: the solver's settings for every point (``method`` and ``jobs`` are set per point).
        jobs: points solved at the same time, in separate processes (1: one after the other).
        efficiency: kernel efficiencies of the cost model (default
            :class:`~placement.cost.step.Efficiency`).
        usd_per_gpu_hour: price (default: the GPU's).
    """

    redundant: tuple[int, ...] = (0, 8, 16, 32, 64)
    nodes: tuple[int, ...] = (2, 4, 8)
    gpus_per_node: tuple[int, ...] = (8,)
    gpu: str | GPU = "h800"
    methods: tuple[str, ...] = ("optimizer", "eplb")
    workload: Workload = field(default_factory=lambda: Workload("decode", context=4096))
    solve: SolveOptions = field(default_factory=lambda: SolveOptions(jobs=1))
    jobs: int = 1
    efficiency: Efficiency | None = None
    usd_per_gpu_hour: float | None = None

    def __post_init__(self) -> None:
        for name in ("redundant", "nodes", "gpus_per_node", "methods"):
            v = tuple(getattr(self, name))
            if not v:
                raise InputError(f"Expected at least one value in {name}.")
            if len(set(v)) != len(v):
                raise InputError(f"Expected distinct values in {name}, got {list(v)}.")
            object.__setattr__(self, name, v)
        for name, low in (("redundant", 0), ("nodes", 1), ("gpus_per_node", 1)):
            for x in getattr(self, name):
                if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < low:
                    raise InputError(f"Expected every {name} value >= {low} (an integer), got "
                                     f"{x!r}.")
        for m in self.methods:
            if m not in METHODS:
                raise InputError(f"Unknown method {m!r}; choose from: {', '.join(METHODS)}.")
        if isinstance(self.gpu, str):
            gpu_preset(self.gpu)
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise InputError(f"Expected jobs >= 1, got {self.jobs!r}.")
        p = self.usd_per_gpu_hour
        if p is not None and not (math.isfinite(p) and p >= 0):
            raise InputError(f"Expected usd_per_gpu_hour >= 0, got {p!r}.")

    @property
    def gpu_spec(self) -> GPU:
        """The GPU."""
        return self.gpu if isinstance(self.gpu, GPU) else gpu_preset(self.gpu)


@dataclass(frozen=True)
class SweepPoint:
    """One (cluster shape, redundant experts, method) point.

    Attributes:
        nodes, gpus_per_node, redundant, method: the point.
        slots_per_gpu: ``(E + R) / G`` (0 when it does not divide).
        status: ``"ok"``, ``"skipped"`` (slots do not divide over the GPUs), ``"no memory"``
            (the weights do not fit) or ``"infeasible"`` (no batch fits, or the speed target
            cannot be met).
        reason: why the status is not ``"ok"``.
        imbalance: held-out max/mean tokens per GPU (mean over layers, then over the held-out
            traces), by ``imbalance_rule``.
        imbalance_rule: ``"static"`` (token-level traces) or ``"even"`` (aggregated counts).
        sends_per_token, copies_per_token: held-out cross-node sends and copies per token
            (token-level traces only).
        estimated_sends_per_token: the cost model's sends per token when they are estimated from
            the GPU loads (aggregated counts), else None.
        step: the cost model's step (None when skipped or out of memory).
        solve_s: seconds the plan took.
        plan: the plan (kept for :func:`write_sweep`; not in the JSON).
    """

    nodes: int
    gpus_per_node: int
    redundant: int
    method: str
    slots_per_gpu: int
    status: str
    reason: str = ""
    imbalance: float | None = None
    imbalance_rule: str = ""
    sends_per_token: float | None = None
    copies_per_token: float | None = None
    estimated_sends_per_token: float | None = None
    step: StepEstimate | None = field(default=None, repr=False)
    solve_s: float = 0.0
    plan: Plan | None = field(default=None, repr=False, compare=False)

    @property
    def num_gpus(self) -> int:
        """G."""
        return self.nodes * self.gpus_per_node

    @property
    def shape(self) -> str:
        """``"4x8"``."""
        return f"{self.nodes}x{self.gpus_per_node}"

    @property
    def feasible(self) -> bool:
        """Whether the point can serve at all."""
        return self.status == "ok"

    def _s(self, name: str) -> float | None:
        if self.step is None or not self.step.feasible:
            return None
        return float(getattr(self.step, name))

    @property
    def tokens_per_s(self) -> float | None:
        """Predicted tokens/s of the cluster (None when not feasible)."""
        return self._s("tokens_per_s")

    @property
    def tokens_per_s_per_gpu(self) -> float | None:
        """Predicted tokens/s per GPU."""
        return self._s("tokens_per_s_per_gpu")

    @property
    def usd_per_million_tokens(self) -> float | None:
        """Predicted $ per million tokens."""
        return self._s("usd_per_million_tokens")

    @property
    def kv_cache_gb(self) -> float | None:
        """GB per GPU left for the KV cache."""
        return None if self.step is None else float(self.step.memory["KV cache"])

    @property
    def kv_tokens(self) -> float | None:
        """Tokens the KV cache of one GPU holds."""
        return None if self.step is None else float(self.step.kv_tokens)

    @property
    def batch(self) -> int | None:
        """Feasible batch per GPU (decode: sequences; prefill: new tokens)."""
        return None if self.step is None or not self.step.feasible else self.step.batch

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (snake_case labels of ``briefs/figures.md``)."""
        s = self.step
        out: dict[str, Any] = {
            "nodes": self.nodes, "gpus_per_node": self.gpus_per_node, "num_gpus": self.num_gpus,
            "redundant_experts": self.redundant, "slots_per_gpu": self.slots_per_gpu,
            "method": self.method, "status": self.status, "reason": self.reason,
            f"imbalance_{self.imbalance_rule or 'even'}": self.imbalance,
            "cross_node_sends_per_token": self.sends_per_token,
            "cross_node_copies_per_token": self.copies_per_token,
            "estimated_cross_node_sends_per_token": self.estimated_sends_per_token,
            "kv_cache_gb_per_gpu": self.kv_cache_gb, "kv_cache_tokens_per_gpu": self.kv_tokens,
            "batch_per_gpu": self.batch,
            "batch_limit": None if s is None or not s.feasible else s.batch_limit,
            "step_ms": None if s is None or not s.feasible else s.step_s * 1e3,
            "tokens_per_s_per_user": None if s is None else s.tokens_per_s_per_user,
            "tokens_per_s": self.tokens_per_s, "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "usd_per_million_tokens": self.usd_per_million_tokens, "solve_s": self.solve_s,
        }
        return out


@dataclass(frozen=True)
class SweepResult:
    """Every point of a sweep.

    Attributes:
        points: the points, by GPUs per node, nodes, redundant experts, method.
        options: the settings.
        model: the model costed.
        planned_from, heldout: names of the planning and the held-out traces.
        token_level: whether the held-out traces are token-level (sends measured).
        wall_time: seconds for the whole sweep.
    """

    points: tuple[SweepPoint, ...]
    options: SweepOptions
    model: ModelShape
    planned_from: tuple[str, ...]
    heldout: tuple[str, ...]
    token_level: bool
    wall_time: float

    @property
    def best(self) -> SweepPoint | None:
        """The feasible point with the lowest $ per million tokens (ties: fewer GPUs, fewer
        redundant experts, the first method), or None."""
        ok = [p for p in self.points if p.usd_per_million_tokens is not None]
        if not ok:
            return None
        order = {m: i for i, m in enumerate(self.options.methods)}
        return min(ok, key=lambda p: (round(p.usd_per_million_tokens or 0.0, 12), p.num_gpus,
                                      p.redundant, order[p.method]))

    def near_best(self, tolerance: float = 0.01) -> list[SweepPoint]:
        """Feasible points other than the best whose $ per million tokens is within
        ``tolerance`` (a fraction) of the best's."""
        b = self.best
        if b is None or b.usd_per_million_tokens is None:
            return []
        limit = b.usd_per_million_tokens * (1.0 + tolerance)
        return [p for p in self.points if p is not b and p.usd_per_million_tokens is not None
                and p.usd_per_million_tokens <= limit]

    def best_of(self, method: str) -> SweepPoint | None:
        """The best point of one method."""
        ok = [p for p in self.points if p.method == method and p.usd_per_million_tokens is not None]
        return min(ok, key=lambda p: (round(p.usd_per_million_tokens or 0.0, 12), p.num_gpus,
                                      p.redundant)) if ok else None

    def summary(self) -> str:
        """A readable summary (see :func:`format_sweep`)."""
        return format_sweep(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, every point and the best one."""
        o, w = self.options, self.options.workload
        b = self.best
        return {
            "model": self.model.name, "gpu": o.gpu_spec.name,
            "phase": w.phase, "context": w.context,
            "min_tokens_per_s_per_user": w.min_tokens_per_s_per_user,
            "cache_hit_rate": w.cache_hit_rate, "overlap": w.overlap,
            "methods": list(o.methods), "redundant": list(o.redundant), "nodes": list(o.nodes),
            "gpus_per_node": list(o.gpus_per_node), "planned_from": list(self.planned_from),
            "heldout": list(self.heldout), "token_level": self.token_level,
            "wall_time": self.wall_time,
            "best": None if b is None else self.points.index(b),
            "points": [p.to_dict() for p in self.points],
        }


# -------------------------------------------------------------------------------------------
# the sweep
# -------------------------------------------------------------------------------------------
def _combine_loads(loads: list[MoeLoad]) -> MoeLoad:
    if len(loads) == 1:
        return loads[0]
    return MoeLoad(
        imbalance=np.mean([m.imbalance for m in loads], axis=0),
        sends=np.mean([m.sends for m in loads], axis=0),
        copies=np.mean([m.copies for m in loads], axis=0),
        intra=np.mean([m.intra for m in loads], axis=0),
        mean_sends_per_token=float(np.mean([m.mean_sends_per_token for m in loads])),
        source=loads[0].source,
    )


def _mean_or_none(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return float(np.mean([v for v in values if v is not None]))


_WORKER: dict[str, Any] = {}


def _init_worker(traces: Sequence[Trace], heldout: Sequence[Trace], model: ModelShape,
                 options: SweepOptions) -> None:
    _WORKER.update(traces=traces, heldout=heldout, model=model, options=options)


def _run_point(nodes: int, gpn: int, redundant: int, method: str) -> SweepPoint:
    w = _WORKER
    return _point(w["traces"], w["heldout"], w["model"], w["options"], nodes, gpn, redundant,
                  method)


def _point(traces: Sequence[Trace], heldout: Sequence[Trace], model: ModelShape,
           options: SweepOptions, nodes: int, gpn: int, redundant: int,
           method: str) -> SweepPoint:
    """Plan, judge and cost one point (see the module docstring)."""
    E = traces[0].num_experts
    G = nodes * gpn
    P = E + redundant
    base: dict[str, Any] = dict(nodes=nodes, gpus_per_node=gpn, redundant=redundant, method=method)
    # 1. skip what cannot be deployed
    if P % G:
        return SweepPoint(slots_per_gpu=0, status="skipped", reason=(
            f"{P} slots do not divide over {G} GPUs"), **base)
    slots = P // G
    g = options.gpu_spec
    # the solver's predicted time and the cost below use the same figures of this GPU
    cluster = Cluster.for_gpu(g, nodes, gpn, slots, name=f"{nodes}x{gpn}",
                              precision=model.matmul_precision, efficiency=options.efficiency)
    weights = (model.non_routed_weight_bytes + slots * model.num_moe_layers * model.expert_bytes)
    usable = (g.memory_gb - options.workload.reserve_gb(g)) * 1e9
    if weights > usable:
        return SweepPoint(slots_per_gpu=slots, status="no memory", reason=(
            f"weights take {weights / 1e9:.1f} GB of the {usable / 1e9:.1f} GB usable "
            f"({slots} slots/GPU)"), **base)
    # 2. plan
    start = time.perf_counter()
    problem = ProblemData.from_traces(list(traces), cluster)
    result = solve(problem, options=replace(options.solve, method=method, jobs=1))
    plan = result.plan
    solve_s = time.perf_counter() - start
    # 3. judge held-out
    reps: list[ValidationResult] = []
    for t in heldout:
        rule = "static" if t.is_token_level else "even"
        reps.append(replay(plan, t, dispatch=rule, device="cpu", hidden_size=model.hidden_size,
                           dispatch_bytes_per_element=model.dispatch_bytes_per_element,
                           combine_bytes_per_element=model.combine_bytes_per_element))
    token_level = all(r.has_traffic for r in reps)
    moe = _combine_loads([MoeLoad.from_replay(r, model.top_k) for r in reps])
    # 4. cost
    step = estimate_step(model, cluster, options.workload, gpu=g, efficiency=options.efficiency,
                         moe=moe, usd_per_gpu_hour=options.usd_per_gpu_hour)
    return SweepPoint(
        slots_per_gpu=slots, status="ok" if step.feasible else "infeasible", reason=step.reason,
        imbalance=float(np.mean([r.mean_imbalance for r in reps])),
        imbalance_rule="static" if token_level else "even",
        sends_per_token=_mean_or_none([r.mean_cross_node_sends_per_token for r in reps]),
        copies_per_token=_mean_or_none([r.mean_cross_node_copies_per_token for r in reps]),
        estimated_sends_per_token=None if token_level else moe.mean_sends_per_token,
        step=step, solve_s=solve_s, plan=plan, **base,
    )


def sweep(
    traces: Trace | Sequence[Trace],
    heldout: Trace | Sequence[Trace],
    model: ModelShape,
    options: SweepOptions | None = None,
    *,
    planned_from: Sequence[str] | None = None,
    heldout_names: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    """Plan, judge held-out and cost every (cluster shape, redundant experts, method) point.

    Args:
        traces: the traces plans are made from.
        heldout: the traces plans are judged on (never the same data).
        model: the model (its attention shape must be known for the cost).
        options: see :class:`SweepOptions`.
        planned_from, heldout_names: labels for the report.
        progress: called with ``(points done, points total)``.
    """
    start = time.perf_counter()
    options = options or SweepOptions()
    tr = [traces] if isinstance(traces, Trace) else list(traces)
    ho = [heldout] if isinstance(heldout, Trace) else list(heldout)
    # 1. inputs
    if not tr:
        raise InputError("Expected at least one trace to plan from.")
    if not ho:
        raise InputError("Expected at least one held-out trace to judge the plans on.")
    model.require_attention()
    E = tr[0].num_experts
    for t in (*tr, *ho):
        if t.num_experts != E:
            raise InputError(f"Expected every trace to have {E} experts, got {t.num_experts}.")
    if model.num_experts != E:
        raise InputError(f"model {model.name} has {model.num_experts} experts but the traces "
                         f"have {E}.")
    tasks = [(n, gpn, r, m) for gpn in options.gpus_per_node for n in options.nodes
             for r in options.redundant for m in options.methods]
    total = len(tasks)
    done = 0
    results: dict[tuple[int, int, int, str], SweepPoint] = {}
    if progress is not None:
        progress(0, total)
    # 2. the points: one after the other, or in worker processes
    jobs = max(1, min(options.jobs, total, os.cpu_count() or 1))
    if jobs == 1:
        for task in tasks:
            results[task] = _point(tr, ho, model, options, *task)
            done += 1
            if progress is not None:
                progress(done, total)
    else:
        # spawn, not fork: the replays use torch, whose thread pools do not survive a fork
        ctx = multiprocessing.get_context("spawn")
        with process_pool(jobs, mp_context=ctx, initializer=_init_worker,
                          initargs=(tr, ho, model, options)) as pool:
            pending: dict[Future[SweepPoint], tuple[int, int, int, str]] = {
                pool.submit(_run_point, *task): task for task in tasks
            }
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for f in finished:
                    results[pending.pop(f)] = f.result()
                    done += 1
                    if progress is not None:
                        progress(done, total)
    points = tuple(results[t] for t in tasks)
    return SweepResult(
        points=points, options=options, model=model,
        planned_from=tuple(planned_from) if planned_from is not None
        else tuple(f"trace {i + 1}" for i in range(len(tr))),
        heldout=tuple(heldout_names) if heldout_names is not None
        else tuple(f"held-out {i + 1}" for i in range(len(ho))),
        token_level=all(t.is_token_level for t in ho),
        wall_time=time.perf_counter() - start,
    )


# -------------------------------------------------------------------------------------------
# text and figures
# -------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _header(result: SweepResult) -> list[str]:
    o, w, m = result.options, result.options.workload, result.model
    g = o.gpu_spec
    tokens = "input" if w.phase == "prefill" else "output"
    price = g.usd_per_gpu_hour if o.usd_per_gpu_hour is None else o.usd_per_gpu_hour
    lines = [
        f"sweep of {m.name} on {g.name} ({g.memory_gb:g} GB, ${price:g}/GPU-hour): "
        f"{len(result.points)} points ({len(o.redundant)} redundancy levels x "
        f"{len(o.nodes) * len(o.gpus_per_node)} cluster shapes x {len(o.methods)} methods) "
        f"in {result.wall_time:.1f} s",
        f"workload: {w.summary()}; tokens/s and $ count {tokens} tokens",
        f"planned from {', '.join(result.planned_from)}; judged held-out on "
        f"{', '.join(result.heldout)}",
    ]
    if not result.token_level:
        lines.append("held-out traces are aggregated counts: cross-node sends are estimated "
                     "from the GPU loads (independent routing), not measured")
    return lines


_COLUMNS = ("cluster", "redundant", "slots/GPU", "method", "imbalance", "sends/token",
            "KV cache tokens/GPU", "batch/GPU", "tokens/s", "tokens/s/GPU", "$/1M tokens")


def _cells(result: SweepResult, p: SweepPoint) -> list[str]:
    best = result.best
    sends = _f(p.sends_per_token, ".3f") if p.sends_per_token is not None else (
        _f(p.estimated_sends_per_token, ".3f") + " (est.)"
        if p.estimated_sends_per_token is not None else "n/a")
    if not p.feasible and p.step is None:
        tail = [p.status + ": " + p.reason] + [""] * 6
        return [p.shape, str(p.redundant), str(p.slots_per_gpu or "-"), p.method, *tail]
    mark = " (best)" if p is best else ""
    return [
        p.shape, str(p.redundant), str(p.slots_per_gpu), p.method,
        f"{_f(p.imbalance, '.4f')} ({p.imbalance_rule})", sends, format_si(p.kv_tokens),
        str(p.batch) if p.batch is not None else p.status,
        format_si(p.tokens_per_s), format_si(p.tokens_per_s_per_gpu),
        _f(p.usd_per_million_tokens, ".4f") + mark,
    ]


def _verdict(result: SweepResult) -> list[str]:
    b = result.best
    if b is None:
        return ["no point of the sweep can serve (see the reasons in the table)."]
    out = [
        f"best: {b.shape} {b.method} with {b.redundant} redundant experts ({b.slots_per_gpu} "
        f"slots/GPU): {format_si(b.tokens_per_s_per_gpu)} tokens/s per GPU, "
        f"${_f(b.usd_per_million_tokens, '.4f')} per 1M tokens (batch {b.batch} per GPU, "
        f"set by {b.step.batch_limit if b.step else 'n/a'})"
    ]
    near = result.near_best()
    if near:
        out.append("within 1 % of it: " + ", ".join(
            f"{p.shape} {p.method} with {p.redundant} redundant" for p in near))
    for m in result.options.methods:
        if m == b.method:
            continue
        other = result.best_of(m)
        if other is not None and other.tokens_per_s_per_gpu and b.tokens_per_s_per_gpu:
            out.append(
                f"best with {m}: {other.shape}, {other.redundant} redundant: "
                f"{format_si(other.tokens_per_s_per_gpu)} tokens/s per GPU "
                f"({b.tokens_per_s_per_gpu / other.tokens_per_s_per_gpu:.3f}x for {b.method})"
            )
    return out


def format_sweep(result: SweepResult) -> str:
    """Text for a terminal: the settings, one row per point, the best point."""
    rows = [list(_COLUMNS)] + [_cells(result, p) for p in result.points]
    full = [r for r in rows if r[5] or r is rows[0]]  # rows with figures set the widths
    widths = [max(len(r[i]) for r in full) for i in range(len(_COLUMNS))]
    lines = _header(result)
    for r in rows:
        if not r[5] and r is not rows[0]:  # a point that was not costed: its reason
            head = "  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:4]))
            lines.append(f"{head}  {r[4]}")
            continue
        lines.append("  ".join(c.ljust(widths[i]) if i < 4 else c.rjust(widths[i])
                               for i, c in enumerate(r)).rstrip())
    return "\n".join(lines + _verdict(result))


def format_sweep_markdown(result: SweepResult, figures: Sequence[str] = ()) -> str:
    """``sweep.md``: settings, the table, the best point, the figures and the cost model's
    assumptions."""
    parts = ["# Deployment sweep", ""]
    parts += [f"- {ln}" for ln in _header(result)]
    parts += ["", "| " + " | ".join(_COLUMNS) + " |", "|---|---:|---:|---|" + "---:|" * 7]
    for p in result.points:
        parts.append("| " + " | ".join(_cells(result, p)) + " |")
    parts += ["", "Imbalance, sends per token: held-out (mean over layers, then over the held-out "
              "traces). Batch: decode sequences / prefill new tokens per GPU that memory (and "
              "the speed target) allow. tokens/s: predicted by the full-step cost model.", ""]
    parts += [f"- **{ln}**" if i == 0 else f"- {ln}" for i, ln in enumerate(_verdict(result))]
    parts.append("")
    for f in figures:
        parts += [f"![{f}]({f})", ""]
    b = result.best or next((p for p in result.points if p.step is not None), None)
    if b is not None and b.step is not None:
        parts += ["## The cost model at the best point", "", "```", b.step.summary(), "```", ""]
    return "\n".join(parts)


def sweep_figures(result: SweepResult) -> dict[str, bytes]:
    """PNG figures: tokens/s per GPU and $ per 1M tokens against redundant experts, one line per
    cluster shape and method, the best point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(p.gpus_per_node, p.nodes) for p in result.points})
    styles = {m: s for m, s in zip(result.options.methods, ("-", "--", ":", "-."), strict=False)}
    best = result.best
    out: dict[str, bytes] = {}
    for name, attr, label in (("tokens_per_s.png", "tokens_per_s_per_gpu", "tokens/s per GPU"),
                              ("usd_per_million_tokens.png", "usd_per_million_tokens",
                               "$ per 1M tokens")):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (gpn, n) in enumerate(shapes):
            for m in result.options.methods:
                pts = [p for p in result.points if (p.gpus_per_node, p.nodes) == (gpn, n)
                       and p.method == m and getattr(p, attr) is not None]
                if not pts:
                    continue
                ax.plot([p.redundant for p in pts], [getattr(p, attr) for p in pts],
                        styles.get(m, "-"), marker="o", color=colors[i % len(colors)],
                        label=f"{n}x{gpn} {m}")
        if best is not None:
            ax.plot([best.redundant], [getattr(best, attr)], marker="*", markersize=18,
                    color="gold", markeredgecolor="black", linestyle="none",
                    label=f"best: {best.shape} {best.method}, R={best.redundant}")
        ax.set_xlabel("redundant experts (P - E)")
        ax.set_ylabel(label)
        w = result.options.workload
        ax.set_title(f"{result.model.name} {w.phase} on {result.options.gpu_spec.name}, "
                     f"context {w.context:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


def write_sweep(result: SweepResult, out_dir: str | Path, *,
                plan_settings: dict[str, Any] | None = None) -> list[Path]:
    """Write ``sweep.md``, ``sweep.json``, the figures and the best point's plan (atomically).

    ``plan_settings`` are added to the best plan's ``settings`` (the CLI records the planning
    traces there as ``inputs``, as ``placement solve`` does, for ``placement compare``)."""
    out = Path(out_dir)
    figs = sweep_figures(result)
    paths: list[Path] = []
    for name, png in figs.items():
        atomic_write_bytes(out / name, png)
        paths.append(out / name)
    atomic_write_text(out / "sweep.json", json.dumps(result.to_dict(), indent=1) + "\n")
    paths.append(out / "sweep.json")
    b = result.best
    if b is not None and b.plan is not None:
        plan = b.plan if not plan_settings else \
            replace(b.plan, settings={**b.plan.settings, **plan_settings})
        plan.save(out / "best-plan.json")
        paths.append(out / "best-plan.json")
    atomic_write_text(out / "sweep.md", format_sweep_markdown(result, list(figs)))
    paths.append(out / "sweep.md")
    return paths
