"""Held-out figures of the optimizer against EPLB on the token-level cases (issue 9's targets).

    python benchmarks/bench_heldout.py                 # every case, at 400 and 1187 TFLOP/s
    python benchmarks/bench_heldout.py --quick         # FLAME, Mixtral, synth DeepSeek-V3, fewer tokens
    python benchmarks/bench_heldout.py --tflops 400    # one GPU speed

For FLAME-MoE and Mixtral (shared traces, ``../shared/traces/``) and the synthetic DeepSeek-V3,
Qwen3-235B and Kimi-K2 presets (two windows), on the clusters ``benchmarks/run.py`` uses: plan
on the first half of the windows, judge on the second (static dispatch rule). Prints, as
markdown, the held-out imbalance, cross-node sends and predicted MoE layer time of EPLB and of
the optimizer (default objective ``time``), their ratios to EPLB, whether each of issue 9's
targets holds, and how many layers the drift rule sent back to the balance plan or
EPLB's. The GPU speed (``gpu_tflops``) is passed explicitly: 400 TFLOP/s (the H800 figure the
cost model used first) and 1187 TFLOP/s (an H800's effective FP8 throughput).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_solver  # noqa: E402
from run import token_cases  # noqa: E402

from placement.solver import SolveOptions, baseline_plan, solve  # noqa: E402
from placement.solver.problem import ProblemData, resolve_model  # noqa: E402

IMBALANCE_TARGET = 1.01
SENDS_TARGET = {"synth deepseek-v3": 0.92}
SENDS_TARGET_DEFAULT = 0.85
TIME_TARGET = 0.90
TFLOPS = (400.0, 1187.0)


def run(quick: bool, tflops: tuple[float, ...], only: set[str] | None = None
        ) -> list[dict[str, Any]]:
    """One row per (case, GPU speed): held-out figures of EPLB and the optimizer."""
    rows: list[dict[str, Any]] = []
    base = token_cases(quick)  # the token-level cases of benchmarks/run.py
    if only:
        base = [c for c in base if c[0] in only]
    for tf in tflops:
        chosen = [(name, trace, replace(cl, gpu_tflops=tf)) for name, trace, cl in base]
        for name, trace, cl in chosen:
            t0 = time.perf_counter()
            plan_half, held = bench_solver.split_half(trace)
            problem = ProblemData.from_traces([plan_half], cl)
            opts = SolveOptions()
            model = resolve_model(opts, problem)[0]
            row: dict[str, Any] = {"case": name, "cluster": cl.shape, "tflops": tf,
                                   "sends": {}, "imb": {}, "time": {}}
            for m in ("eplb", "optimizer"):
                plan = (solve(problem, options=opts).plan if m == "optimizer"
                        else baseline_plan(problem, opts, m))
                s, _, st, _ = bench_solver.heldout_token_figures(plan.phy2log, held, cl)
                row["sends"][m], row["imb"][m] = s, st
                row["time"][m] = bench_solver.heldout_time(plan, held, model, opts.overlap)
                if m == "optimizer":
                    row["fell_back"] = int(sum(plan.settings.get("fell_back", [])))
                    row["guard"] = int(np.nansum(plan.settings.get("guard_fell_back", [0.0])))
                    row["layers"] = problem.num_layers
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(f"  {name} {cl.shape} {tf:g} TFLOP/s: {row['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    return rows


def _ok(b: bool) -> str:
    return "yes" if b else "**no**"


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`run`'s rows."""
    out = [
        "| case | cluster | TFLOP/s | imb eplb | imb opt | imb / eplb | sends eplb | sends opt "
        "| sends / eplb | time / eplb | not worse on both | imb <= 1.01x | sends target "
        "| time <= 0.90x | fell back (eplb) | guard fell back |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|",
    ]
    for r in rows:
        imb = r["imb"]["optimizer"] / r["imb"]["eplb"]
        snd = r["sends"]["optimizer"] / max(r["sends"]["eplb"], 1e-12)
        tm = r["time"]["optimizer"] / r["time"]["eplb"]
        st = SENDS_TARGET.get(r["case"], SENDS_TARGET_DEFAULT)
        out.append(
            f"| {r['case']} | {r['cluster']} | {r['tflops']:g} | {r['imb']['eplb']:.3f} | "
            f"{r['imb']['optimizer']:.3f} | {imb:.3f} | {r['sends']['eplb']:.3f} | "
            f"{r['sends']['optimizer']:.3f} | {snd:.3f} | {tm:.3f} | "
            f"{_ok(not (imb > 1.0 and snd > 1.0))} | {_ok(imb <= IMBALANCE_TARGET)} | "
            f"{_ok(snd <= st)} ({st}) | {_ok(tm <= TIME_TARGET)} | "
            f"{r['fell_back']}/{r['layers']} | {r['guard']}/{r['layers']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="FLAME, Mixtral and synth DeepSeek-V3 only, fewer synthetic tokens")
    ap.add_argument("--tflops", default=",".join(f"{t:g}" for t in TFLOPS),
                    help="comma-separated GPU speeds, TFLOP/s (default 400,1187)")
    ap.add_argument("--cases", default="", help="comma-separated case names (default all)")
    args = ap.parse_args(argv)
    tflops = tuple(float(x) for x in args.tflops.split(",") if x)
    only = {c.strip() for c in args.cases.split(",") if c.strip()} or None
    t0 = time.perf_counter()
    rows = run(args.quick, tflops, only)
    print(f"`python benchmarks/bench_heldout.py{' --quick' if args.quick else ''}` "
          f"(plan on the first half, judge on the second, static rule; "
          f"{time.perf_counter() - t0:.0f} s)")
    print()
    print(render(rows))
    means = {k: float(np.mean([r[k]["optimizer"] / r[k]["eplb"] for r in rows]))
             for k in ("imb", "sends", "time")}
    print()
    print("mean ratios to EPLB: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
