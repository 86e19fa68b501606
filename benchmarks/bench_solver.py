"""Solver benchmark: held-out quality and speed of the optimizer against DeepSeek's EPLB.

Two families of cases, each in an importable function (a full benchmark suite reuses them):

* :func:`deepseek_leave_one_out`: DeepSeek-V3 SGLang counts (12 workloads, 58 MoE layers,
  256 experts). For every workload, plan from the OTHER workloads of the same phase (each one a
  scenario), judge on the left-out one with every expert's tokens split evenly over its replicas;
  mean over layers of max/mean tokens per GPU, averaged over left-out workloads. Three clusters of
  288 slots: 4 nodes x 8 GPUs, 18 x 8, 1 x 72.
* :func:`token_level_cases`: token-level traces (shared FLAME-MoE and Mixtral, synthetic
  presets) split by window into a planning half and a held-out half; judged on the held-out half
  under the engines' static dispatch rule: cross-node sends per token, imbalance and the
  predicted MoE layer time (:func:`placement.moe_time.layer_times` on the replay).
* :func:`token_instance_speed`: the full token-level DeepSeek-V3 instance (``bundled:deepseek-v3``
  on ``deepseek-prefill``), solved with one and two jobs: seconds, status, same plan.

Run: ``python benchmarks/bench_solver.py [--quick]`` (prints tables; exit status 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from placement.cluster import Cluster
from placement.metrics import even_gpu_loads, imbalance, source_gpus, token_traffic
from placement.models import ModelShape
from placement.moe_time import layer_times
from placement.plan import Plan, static_dispatch
from placement.routing_traces.trace import Trace
from placement.solver import METHODS, SolveOptions, baseline_plan, solve
from placement.solver.problem import ProblemData, resolve_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEEPSEEK_DIR = SHARED / "traces" / "deepseek_v3_sglang"

DEEPSEEK_SHAPES = ((4, 8, 9), (18, 8, 2), (1, 72, 4))
TARGETS = {"4x8x9": 1.08, "18x8x2": 1.30, "1x72x4": 1.12}


# ----------------------------------------------------------------------------------------------
# DeepSeek-V3 leave-one-out
# ----------------------------------------------------------------------------------------------
def load_deepseek(directory: Path = DEEPSEEK_DIR) -> dict[str, Trace]:
    """Every workload's counts trace by name (``prefill_in512`` ...)."""
    from placement.routing_traces import load_trace

    return {p.stem: load_trace(p) for p in sorted(directory.glob("*.json"))}


@dataclass
class LooRow:
    """One left-out workload on one cluster: held-out imbalance and solve time per method."""

    cluster: str
    heldout: str
    imbalance: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def heldout_even_imbalance(phy2log: np.ndarray, trace: Trace, cluster: Cluster) -> float:
    """Mean over layers of max/mean tokens per GPU, tokens split evenly over replicas."""
    counts = trace.counts()
    active = counts.sum(axis=1) > 0
    imb = imbalance(even_gpu_loads(phy2log, counts, cluster))
    return float(imb[active].mean())


def deepseek_leave_one_out(
    shapes: tuple[tuple[int, int, int], ...] = DEEPSEEK_SHAPES,
    *,
    phases: tuple[str, ...] = ("prefill", "decode"),
    limit: int | None = None,
    options: SolveOptions | None = None,
    methods: tuple[str, ...] = METHODS,
    traces: dict[str, Trace] | None = None,
    echo: bool = True,
) -> list[LooRow]:
    """Leave-one-out per phase on the DeepSeek-V3 counts; one row per (cluster, left-out)."""
    traces = traces if traces is not None else load_deepseek()
    options = options or SolveOptions()
    rows: list[LooRow] = []
    for nodes, gpn, spg in shapes:
        cluster = Cluster(nodes, gpn, spg)
        for phase in phases:
            names = [n for n in traces if n.startswith(phase)]
            for held in names[:limit]:
                others = [traces[n] for n in names if n != held]
                problem = ProblemData.from_traces(others, cluster)
                row = LooRow(cluster.shape, held)
                for m in methods:
                    t0 = time.perf_counter()
                    if m == "optimizer":
                        plan = solve(problem, options=options).plan
                    else:
                        plan = baseline_plan(problem, options, m)
                    row.seconds[m] = time.perf_counter() - t0
                    row.imbalance[m] = heldout_even_imbalance(plan.phy2log, traces[held],
                                                              cluster)
                rows.append(row)
                if echo:
                    figs = "  ".join(f"{m} {row.imbalance[m]:.4f}" for m in methods)
                    print(f"  {cluster.shape:>7} {held:<24} {figs}", flush=True)
    return rows


def format_loo(rows: list[LooRow], methods: tuple[str, ...] = METHODS) -> str:
    """Table: per cluster, mean held-out imbalance per method, ratio to EPLB, target, times."""
    lines = [
        "DeepSeek-V3 leave-one-out (held-out, even split, mean over layers then workloads)",
        f"{'cluster':<8}{'n':>3}" + "".join(f"{m:>13}" for m in methods)
        + f"{'opt/eplb':>10}{'opt/glob':>10}{'target':>8}{'t_opt s':>9}{'t_eplb s':>9}",
    ]
    for shape in dict.fromkeys(r.cluster for r in rows):
        sub = [r for r in rows if r.cluster == shape]
        mean = {m: float(np.mean([r.imbalance[m] for r in sub])) for m in methods}
        secs = {m: float(np.mean([r.seconds[m] for r in sub])) for m in methods}
        line = f"{shape:<8}{len(sub):>3}" + "".join(f"{mean[m]:>13.4f}" for m in methods)
        if "optimizer" in mean and "eplb" in mean:
            line += f"{mean['optimizer'] / mean['eplb']:>10.3f}"
            line += f"{mean['optimizer'] / mean.get('eplb-global', np.nan):>10.3f}"
            line += f"{TARGETS.get(shape, float('nan')):>8.2f}"
            line += f"{secs['optimizer']:>9.2f}{secs['eplb']:>9.2f}"
        lines.append(line)
        for phase in ("prefill", "decode"):
            ph = [r for r in sub if r.heldout.startswith(phase)]
            if ph and len(ph) < len(sub):
                pm = "".join(f"{np.mean([r.imbalance[m] for r in ph]):>13.4f}" for m in methods)
                lines.append(f"  {phase:<6}{len(ph):>3}" + pm)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# token-level
# ----------------------------------------------------------------------------------------------
@dataclass
class TokenRow:
    """One token-level case: held-out figures per method."""

    case: str
    cluster: str
    sends: dict[str, float] = field(default_factory=dict)
    copies: dict[str, float] = field(default_factory=dict)
    imbalance_static: dict[str, float] = field(default_factory=dict)
    imbalance_even: dict[str, float] = field(default_factory=dict)
    time: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    gap_exact_max: float = float("nan")
    fell_back: int = 0
    layers: int = 0
    model: str = ""


def split_half(trace: Trace) -> tuple[Trace, Trace]:
    """First half of the windows (planning) and the second half (held-out)."""
    W = trace.num_windows
    if W < 2:
        raise ValueError("a token-level case needs at least two windows")
    return trace.select_windows(range(W // 2)), trace.select_windows(range(W // 2, W))


def heldout_token_figures(phy2log: np.ndarray, held: Trace,
                          cluster: Cluster) -> tuple[float, float, float, float]:
    """``(sends per token, copies per token, static-rule imbalance, even-split imbalance)`` on
    ``held``, each the mean over layers that route tokens; the static rule is recomputed from
    ``phy2log``."""
    disp = static_dispatch(phy2log, cluster, held.num_experts)
    ids = held.topk_ids
    src = source_gpus(ids.shape[0], held.source_rank, cluster.num_gpus)
    sends, copies, loads = token_traffic(disp, ids, src, cluster)
    ok = (ids >= 0).any(axis=(0, 2))
    even = imbalance(even_gpu_loads(phy2log, held.counts(), cluster))
    T = ids.shape[0]
    return (float((sends / T)[ok].mean()), float((copies / T)[ok].mean()),
            float(imbalance(loads)[ok].mean()), float(even[ok].mean()))


def heldout_time(plan: Plan, held: Trace, model: ModelShape, overlap: str = "two-batch") -> float:
    """Predicted MoE layer time of ``plan`` on ``held`` (seconds, mean over layers): the
    replay's static loads and per-GPU traffic through :func:`placement.moe_time.layer_times`."""
    from placement.validation import replay

    res = replay(plan, held)
    traffic = res.per_gpu_traffic()
    assert traffic is not None
    return float(layer_times(res.gpu_loads, plan.cluster, model, traffic=traffic,
                             overlap=overlap)[3].mean())


def default_token_cases(quick: bool = False) -> list[tuple[str, Trace, Cluster]]:
    """The token-level cases: shared FLAME-MoE and Mixtral traces, synthetic presets."""
    from placement.routing_traces import read_native, synthesize

    cases: list[tuple[str, Trace, Cluster]] = []
    flame = SHARED / "traces" / "flame_moe_290m_tokens.npz"
    mixtral = SHARED / "traces" / "mixtral_8x7b_decode_tokens.npz"
    if flame.exists():
        cases.append(("flame-moe-290m", read_native(flame), Cluster(4, 2, 10)))
    if mixtral.exists():
        cases.append(("mixtral-8x7b", read_native(mixtral), Cluster(2, 2, 3)))
    n = 8192 if quick else 16384
    cases.append(("synth-deepseek-v3", synthesize("deepseek-v3", num_tokens=n, num_windows=8,
                                                  num_source_ranks=32, num_layers=4 if quick
                                                  else 8, seed=1), Cluster(4, 8, 9)))
    if not quick:
        cases.append(("synth-qwen3-30b", synthesize("qwen3-30b", num_tokens=n, num_windows=8,
                                                    num_source_ranks=16, num_layers=8, seed=2),
                      Cluster(4, 4, 9)))
        cases.append(("synth-olmoe", synthesize("olmoe", num_tokens=n, num_windows=8,
                                                num_source_ranks=8, num_layers=8, seed=3),
                      Cluster(2, 4, 10)))
    return cases


def token_level_cases(
    cases: list[tuple[str, Trace, Cluster]] | None = None,
    *,
    options: SolveOptions | None = None,
    methods: tuple[str, ...] = METHODS,
    quick: bool = False,
    echo: bool = True,
) -> list[TokenRow]:
    """Plan on the first half of every case's windows, judge on the second half."""
    cases = cases if cases is not None else default_token_cases(quick)
    options = options or SolveOptions()
    rows: list[TokenRow] = []
    for name, trace, cluster in cases:
        plan_half, held = split_half(trace)
        problem = ProblemData.from_traces([plan_half], cluster)
        model = resolve_model(options, problem)[0]
        row = TokenRow(name, cluster.shape, layers=problem.num_layers, model=model.name)
        for m in methods:
            t0 = time.perf_counter()
            if m == "optimizer":
                plan = solve(problem, options=options).plan
                gaps = plan.gap or []
                src = plan.settings.get("bound_source", [])
                ex = [g for g, s in zip(gaps, src, strict=False) if s == "exact"]
                row.gap_exact_max = float(max(ex)) if ex else float("nan")
                row.fell_back = int(sum(plan.settings.get("fell_back", [])))
            else:
                plan = baseline_plan(problem, options, m)
            row.seconds[m] = time.perf_counter() - t0
            s, cp, st, ev = heldout_token_figures(plan.phy2log, held, cluster)
            row.sends[m], row.copies[m] = s, cp
            row.imbalance_static[m], row.imbalance_even[m] = st, ev
            row.time[m] = heldout_time(plan, held, model, options.overlap)
        rows.append(row)
        if echo:
            figs = "  ".join(f"{m} {row.sends[m]:.3f}/{row.imbalance_static[m]:.3f}"
                             for m in methods)
            print(f"  {name:<20} {cluster.shape:>7} sends/imbalance: {figs}", flush=True)
    return rows


def format_token_rows(rows: list[TokenRow], methods: tuple[str, ...] = METHODS) -> str:
    """Table: held-out sends per token and static-rule imbalance per method; ratios to EPLB."""
    lines = [
        "Token-level (held-out second half of the windows, static dispatch rule)",
        f"{'case':<20}{'cluster':>8}  " + "".join(f"{m + ' snd/imb':>22}" for m in methods)
        + f"{'snd opt/eplb':>13}{'imb opt/eplb':>13}{'gap(exact)':>11}{'t_opt s':>8}",
    ]
    for r in rows:
        line = f"{r.case:<20}{r.cluster:>8}  " + "".join(
            f"{r.sends[m]:>13.3f}/{r.imbalance_static[m]:<8.3f}" for m in methods)
        if "optimizer" in r.sends and "eplb" in r.sends:
            line += f"{r.sends['optimizer'] / max(r.sends['eplb'], 1e-12):>13.3f}"
            line += f"{r.imbalance_static['optimizer'] / r.imbalance_static['eplb']:>13.3f}"
            g = r.gap_exact_max
            line += f"{'-' if np.isnan(g) else f'{g * 100:.2f}%':>11}"
            line += f"{r.seconds['optimizer']:>8.2f}"
        lines.append(line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# speed
# ----------------------------------------------------------------------------------------------
def full_instance_speed(traces: dict[str, Trace] | None = None) -> tuple[float, float, str]:
    """Seconds for the full DeepSeek-V3 instance (58 layers, 4 x 8 GPUs, 288 slots, 7 prefill
    scenarios) with default settings, EPLB's seconds on the same input, and the plan status."""
    traces = traces if traces is not None else load_deepseek()
    names = [n for n in traces if n.startswith("prefill")][:7]
    cluster = Cluster(4, 8, 9)
    problem = ProblemData.from_traces([traces[n] for n in names], cluster)
    t0 = time.perf_counter()
    res = solve(problem, options=SolveOptions())
    t_opt = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline_plan(problem, SolveOptions(), "eplb")
    t_eplb = time.perf_counter() - t0
    return t_opt, t_eplb, res.plan.status


@dataclass
class TokenSpeed:
    """The full token-level DeepSeek-V3 instance solved with one and two jobs."""

    seconds: dict[int, float]
    status: dict[int, str]
    same_plan: bool
    fell_back: int
    layers: int
    cut: int


def token_instance_speed(jobs: tuple[int, ...] = (2, 1)) -> TokenSpeed:
    """``bundled:deepseek-v3`` (4,096 tokens x 58 layers x top-8, 2 windows) on
    ``deepseek-prefill`` with the default settings, once per ``jobs``."""
    from placement.routing_traces import load_trace

    trace = load_trace("bundled:deepseek-v3")
    cluster = Cluster.preset("deepseek-prefill")
    secs: dict[int, float] = {}
    status: dict[int, str] = {}
    plans = []
    for j in jobs:
        t0 = time.perf_counter()
        plan = solve(trace, cluster, SolveOptions(jobs=j)).plan
        secs[j] = time.perf_counter() - t0
        status[j] = plan.status
        plans.append(plan)
    same = all(np.array_equal(plans[0].phy2log, p.phy2log) for p in plans[1:])
    st = plans[0].settings
    return TokenSpeed(secs, status, same, int(sum(st.get("fell_back", []))), plans[0].num_layers,
                      sum(1 for x in st.get("layer_status", []) if x == "TIME_LIMIT"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases (a smoke run)")
    ap.add_argument("--skip-deepseek", action="store_true")
    ap.add_argument("--skip-tokens", action="store_true")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    opts = SolveOptions() if args.jobs is None else SolveOptions(jobs=args.jobs)
    print(f"cores: {os.cpu_count()}, jobs: {opts.jobs}", flush=True)
    if not args.skip_deepseek:
        if not DEEPSEEK_DIR.exists():
            print(f"skipping DeepSeek cases: {DEEPSEEK_DIR} not found")
        else:
            traces = load_deepseek()
            t_opt, t_eplb, status = full_instance_speed(traces)
            print(f"full DeepSeek-V3 instance (58 layers, 4x8x9, 7 scenarios): optimizer "
                  f"{t_opt:.1f} s ({status}), EPLB {t_eplb:.2f} s, ratio {t_opt / t_eplb:.1f}",
                  flush=True)
            shapes = DEEPSEEK_SHAPES
            rows = deepseek_leave_one_out(shapes, traces=traces, options=opts,
                                          limit=2 if args.quick else None)
            print(format_loo(rows))
    if not args.skip_tokens:
        trows = token_level_cases(options=opts, quick=args.quick)
        print(format_token_rows(trows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
