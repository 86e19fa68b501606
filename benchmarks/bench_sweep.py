"""Benchmark of the deployment sweep, and the cost model's reference inputs.

Usage::

    python benchmarks/bench_sweep.py [--jobs 2] [--time-limit 60] [--quick]
    python benchmarks/bench_sweep.py --reference

Sweep (the target: 5 redundancy levels x 3 cluster shapes on the full DeepSeek-V3 counts in
under 10 minutes on 2 cores): plans from three of the four DeepSeek-V3 SGLang decode workloads
(``../shared/traces/deepseek_v3_sglang``, 58 MoE layers x 256 experts, aggregated counts) with
the optimizer and EPLB, judges every plan on the fourth, and costs it as decode on H200 at 4096
tokens of context. The levels 0, 64, 128, 192, 256 and the shapes 2, 4 and 8 nodes of 8 GPUs
make every one of the 15 points deployable (``E + R`` divides over 16, 32 and 64 GPUs, and the
weights fit in 141 GB), so all 30 plans are made. The same points with EPLB alone are timed in
the same run (the machine is shared: read the ratio).

``--reference``: measures again the EPLB held-out imbalance the DeepSeek reference comparison
assumes (:data:`placement.cost.DEEPSEEK_IMBALANCE`), prints the reference table, and how the
predicted/published ratios move with each assumption.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from placement.cluster import Cluster  # noqa: E402
from placement.cost import (  # noqa: E402
    DEEPSEEK_IMBALANCE,
    CostOptions,
    Efficiency,
    Workload,
    deepseek_reference_comparison,
    format_reference_comparison,
)
from placement.models import model_preset  # noqa: E402
from placement.routing_traces import load_trace  # noqa: E402
from placement.solver import SolveOptions, solve  # noqa: E402
from placement.sweep import SweepOptions, format_sweep, sweep  # noqa: E402
from placement.validation import replay  # noqa: E402

DATA = ROOT.parent / "shared" / "traces" / "deepseek_v3_sglang"
TARGET_S = 600.0
PLAN_ON = ("decode_in1000out1000.json", "decode_in2000out100.json", "decode_in500out1500.json")
HELD_OUT = ("decode_in1800out100.json",)


def _require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"error: shared data missing: {path}")
    return path


def bench_sweep(jobs: int, time_limit: float, quick: bool) -> None:
    plan_on = [load_trace(_require(DATA / f)) for f in PLAN_ON]
    held = [load_trace(_require(DATA / f)) for f in HELD_OUT]
    model = model_preset("deepseek-v3")
    levels = (0, 64) if quick else (0, 64, 128, 192, 256)
    nodes = (2, 4) if quick else (2, 4, 8)
    runs = {}
    for methods in (("optimizer", "eplb"), ("eplb",)):
        opts = SweepOptions(redundant=levels, nodes=nodes, gpus_per_node=(8,), gpu="h200",
                            methods=methods, workload=Workload("decode", context=4096),
                            solve=SolveOptions(time_limit=time_limit, jobs=1), jobs=jobs)
        start = time.perf_counter()
        res = sweep(plan_on, held, model, opts, planned_from=PLAN_ON, heldout_names=HELD_OUT)
        runs[methods] = (time.perf_counter() - start, res)
    wall, res = runs[("optimizer", "eplb")]
    eplb_wall, _ = runs[("eplb",)]
    print(format_sweep(res))
    print()
    solved = sum(1 for p in res.points if p.step is not None)
    n_points = len(levels) * len(nodes)
    print(f"points: {n_points} ({len(levels)} redundancy levels x {len(nodes)} cluster shapes), "
          f"{solved} plans made and costed of {len(res.points)} (point x method)")
    print(f"sweep wall time, optimizer + EPLB, jobs {jobs}: {wall:.1f} s "
          f"(target < {TARGET_S:.0f} s: {'met' if wall < TARGET_S else 'NOT met'}); "
          f"{wall / n_points:.1f} s per point")
    print(f"sweep wall time, EPLB alone, same points: {eplb_wall:.1f} s "
          f"(optimizer + EPLB / EPLB alone: {wall / eplb_wall:.1f}x)")
    solve_s = [p.solve_s for p in res.points if p.method == "optimizer" and p.step is not None]
    if solve_s:
        print(f"optimizer solve per point: mean {np.mean(solve_s):.1f} s, max {max(solve_s):.1f} s")


def _eplb_held_out(phase: str, shape: tuple[int, int, int]) -> tuple[float, float]:
    files = sorted(glob.glob(str(_require(DATA) / f"{phase}_*.json")))
    traces = [load_trace(f) for f in files]
    c = Cluster(*shape)
    held, ins = [], []
    for i, t in enumerate(traces):
        plan = solve(t, c, SolveOptions(method="eplb")).plan
        for j, u in enumerate(traces):
            (ins if i == j else held).append(replay(plan, u, dispatch="even").mean_imbalance)
    return float(np.mean(held)), float(np.mean(ins))


def bench_reference() -> None:
    for phase, shape in (("prefill", (4, 8, 9)), ("decode", (18, 8, 2))):
        held, ins = _eplb_held_out(phase, shape)
        print(f"{phase} {shape[0]}x{shape[1]}x{shape[2]}: EPLB imbalance held-out {held:.4f} "
              f"(assumed {DEEPSEEK_IMBALANCE[phase]}), in-sample {ins:.4f}")
    print()
    base = deepseek_reference_comparison()
    print(format_reference_comparison(base))
    print()
    print("sensitivity: predicted / published tokens/s per node (prefill, decode)")

    def row(label: str, **kw: object) -> None:
        pts = deepseek_reference_comparison(**kw)  # type: ignore[arg-type]
        print(f"  {label:<58} {pts[0].ratio:5.2f} {pts[1].ratio:5.2f}")

    row("as assumed")
    row("imbalance 1.0 (perfect balance)", imbalance=1.0)
    row("imbalance in-sample (1.20 prefill, 1.16 decode)",
        imbalance={"prefill": 1.20, "decode": 1.16})
    row("imbalance 2.0", imbalance=2.0)
    row("no overlap", options=CostOptions(overlap="none"))
    for name, factor in (("all kernel efficiencies x 0.8", 0.8), ("x 1.2 (capped at 1)", 1.2)):
        e = Efficiency()
        scaled = Efficiency(*(min(1.0, v * factor) for v in (e.gemm, e.attention, e.memory,
                                                              e.kv_read, e.network, e.nvlink)),
                            comm_sms=e.comm_sms)
        row(name, efficiency=scaled)
    row("network at 0.6 of the NIC", efficiency=Efficiency(network=0.6))
    row("GEMMs at 0.45 of peak", efficiency=Efficiency(gemm=0.45))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=SolveOptions().time_limit,
                    help="the solver's safety net (its search is bounded by work, not time)")
    ap.add_argument("--quick", action="store_true", help="2 levels x 2 shapes")
    ap.add_argument("--reference", action="store_true",
                    help="the reference comparison's inputs and sensitivity instead")
    args = ap.parse_args()
    if args.reference:
        bench_reference()
    else:
        bench_sweep(args.jobs, args.time_limit, args.quick)


if __name__ == "__main__":
    main()
