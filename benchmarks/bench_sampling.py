"""Benchmark of planning from statistics: held-out quality of plans made from a bounded token
sample (512, 4,096, 65,536 tokens) vs from every token.

Usage::

    python benchmarks/bench_sampling.py            # FLAME-MoE (shared) and synthetic DeepSeek-V3
    python benchmarks/bench_sampling.py --quick    # fewer tokens and layers

For every case the trace is split by window: the first half is planned from
(:func:`placement.routing_traces.statistics.gather_statistics` with ``sample_tokens`` N, then
:meth:`ProblemData.from_statistics`: exact counts, N sampled tokens for traffic; "all" plans from
the trace itself), the second half judges the plan: cross-node sends per token, static-rule
imbalance and the predicted MoE layer time (``bench_solver``'s held-out figures). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_solver import heldout_time, heldout_token_figures, split_half  # noqa: E402

from placement.cluster import Cluster  # noqa: E402
from placement.routing_traces.trace import Trace  # noqa: E402

SHARED = ROOT.parent / "shared" / "traces"
SAMPLES = (512, 4096, 65_536)


def cases(quick: bool) -> list[tuple[str, Trace, Cluster]]:
    from placement.routing_traces.native import read_native
    from placement.routing_traces.synth import synthesize

    out: list[tuple[str, Trace, Cluster]] = []
    flame = SHARED / "flame_moe_290m_tokens.npz"
    if not flame.exists():
        raise SystemExit(f"missing shared trace {flame}")
    out.append(("flame-moe-290m", read_native(flame), Cluster(4, 2, 10)))
    out.append(("synthetic deepseek-v3", synthesize(
        "deepseek-v3", num_tokens=16_384 if quick else 196_608, num_windows=4,
        num_source_ranks=32, num_layers=2 if quick else 4, seed=3), Cluster(4, 8, 9)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Fewer tokens and layers.")
    args = ap.parse_args(argv)
    from placement.routing_traces.statistics import gather_statistics
    from placement.solver import ProblemData, SolveOptions, solve
    from placement.solver.problem import resolve_model

    options = SolveOptions(jobs=1)
    rows: list[tuple[str, ...]] = []
    for name, trace, cluster in cases(args.quick):
        plan_half, held = split_half(trace)
        T = int(plan_half.num_tokens or 0)
        for n in (*SAMPLES, None):
            if n is not None and n >= T and n != SAMPLES[0]:
                continue  # the sample would hold every token: the "all" row
            start = time.perf_counter()
            if n is None:
                problem = ProblemData.from_traces(plan_half, cluster)
            else:
                stats = gather_statistics(plan_half, sample_tokens=n, coactivation=False)
                problem = ProblemData.from_statistics(stats, cluster)
            plan = solve(problem, options).plan
            secs = time.perf_counter() - start
            model = resolve_model(options, problem)[0]
            sends, _copies, static, _even = heldout_token_figures(plan.phy2log, held, cluster)
            t = heldout_time(plan, held, model, options.overlap)
            used = T if n is None else min(T, sum(len(x.topk_ids) for x in
                                                  problem.token_traces or ()))
            rows.append((name, f"{T:,}", "all" if n is None else f"{n:,}", f"{used:,}",
                         f"{sends:.3f}", f"{static:.3f}", f"{t * 1e6:.1f}", f"{secs:.1f}"))
            print("  " + " ".join(rows[-1]), file=sys.stderr, flush=True)
    print("| case | planning tokens | --sample-tokens | sampled | held-out sends/token "
          "| held-out imbalance (static) | predicted layer time us | solve s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
