"""Benchmark of plans over time: show/diff speed, budgeted re-plans, and the simulation.

    python benchmarks/bench_over_time.py            # full run, about 15-25 minutes on 2 cores
    python benchmarks/bench_over_time.py --quick    # smoke run, a few minutes

Prints one markdown section (``## Plans over time``) on standard output and progress on standard
error; ``--json FILE`` writes the figures too. Three parts:

1. ``show`` and ``diff`` on a full DeepSeek-V3 plan (58 layers x 288 slots, EPLB on the
   ``deepseek-prefill`` cluster): the library call (read the file(s), describe or count, format)
   and the whole command in a fresh interpreter (``python -m placement ...``: start-up and the
   package's imports included), best of three. Target: under 2 s.
2. Re-planning on the DeepSeek-V3 SGLang workloads: deployed = EPLB of two prefill workloads,
   re-planned from three others, judged on the remaining three (held out: ``imbalance (even)``,
   the held-out workloads pooled, the figure ``placement validate`` prints). For budgets of 5,
   10 and 20 % of the slots, the share of the held-out gain of a full re-plan (the optimizer's
   plan from the same three workloads) that the budget recovers. Three rotations of the
   workloads. Target: at 10 % at least half. The in-sample objective must not rise with the
   budget (monotone) and, with a budget that covers the optimizer's moves, equal the
   optimizer's (checked on the first rotation).
3. The simulation (:func:`placement.simulate.simulate`): EPLB re-planned every window, the static
   optimizer plan, and replan every window within 10 % of the slots; on the FLAME-MoE trace (32
   windows of 64 tokens), a synthetic DeepSeek-V3 trace with drift, and the twelve DeepSeek-V3
   workloads taken in sequence. Target: static or replan at mean imbalance no worse than EPLB
   every window while moving at most a quarter of its expert weights.

Shared data is read from ``../shared/traces/``; a missing file is an error, never a silent skip.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from placement.cluster import Cluster  # noqa: E402
from placement.plan_diff import diff_plans, format_diff  # noqa: E402
from placement.plan_eval import plan_figures  # noqa: E402
from placement.plan_show import describe_plan, format_plan_view  # noqa: E402
from placement.plan_source import read_plan  # noqa: E402
from placement.routing_traces import load_trace, synthesize  # noqa: E402
from placement.routing_traces.trace import Trace  # noqa: E402
from placement.simulate import SimulateOptions, SimulationResult, simulate  # noqa: E402
from placement.solver import ProblemData, SolveOptions, baseline_plan, solve  # noqa: E402
from placement.solver.replan import ReplanOptions, replan  # noqa: E402

SHARED = ROOT.parent / "shared" / "traces"
DEEPSEEK = SHARED / "deepseek_v3_sglang"
PREFILL = ("prefill_in1000out1000", "prefill_in1024", "prefill_in1800out100",
           "prefill_in2000out100", "prefill_in2048", "prefill_in4096", "prefill_in500out1500",
           "prefill_in512")
ROTATIONS = (((0, 1), (2, 3, 4), (5, 6, 7)),
             ((5, 6), (0, 1, 2), (3, 4, 7)),
             ((3, 7), (4, 5, 6), (0, 1, 2)))
"""(deployed EPLB from, re-planned from, judged on): indices into PREFILL."""
BUDGETS = (0.05, 0.10, 0.20)
LONG = 24 * 3600.0  # a time limit that never binds: deterministic solves


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"error: shared data missing: {path}")
    return path


def _best(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------------------------------
# 1. show and diff speed
# ------------------------------------------------------------------------------------------
def speed(workdir: Path) -> dict[str, float]:
    """Seconds for ``show`` and ``diff`` on full DeepSeek-V3 plans (library and command)."""
    c = Cluster.preset("deepseek-prefill")
    tr = [load_trace(_require(DEEPSEEK / f"{w}.json")) for w in PREFILL]
    a = baseline_plan(ProblemData.from_traces(tr[:2], c), SolveOptions(method="eplb"), "eplb")
    b = baseline_plan(ProblemData.from_traces(tr[2:5], c), SolveOptions(method="eplb"), "eplb")
    pa, pb = workdir / "a.json", workdir / "b.json"
    a.save(pa)
    b.save(pb)

    def show() -> None:
        format_plan_view(describe_plan(read_plan(pa).plan, source=str(pa)))

    def show_layer() -> None:
        format_plan_view(describe_plan(read_plan(pa).plan, layer=30, source=str(pa)))

    def diff() -> None:
        format_diff(diff_plans(read_plan(pa).plan, read_plan(pb).plan))

    def cli(*args: str) -> Callable[[], None]:
        def run() -> None:
            subprocess.run([sys.executable, "-m", "placement", *args], check=True,
                           capture_output=True, cwd=ROOT)
        return run

    out = {
        "show_library_s": _best(show),
        "show_layer_library_s": _best(show_layer),
        "diff_library_s": _best(diff),
        "show_command_s": _best(cli("show", str(pa))),
        "diff_command_s": _best(cli("diff", str(pa), str(pb))),
        "import_placement_s": _best(lambda: subprocess.run(
            [sys.executable, "-c", "import placement.cli"], check=True, cwd=ROOT)),
        "plan_file_mb": pa.stat().st_size / 1e6,
    }
    log(f"speed: {out}")
    return out


# ------------------------------------------------------------------------------------------
# 2. re-planning on the DeepSeek-V3 workloads
# ------------------------------------------------------------------------------------------
def _pooled_counts(traces: list[Trace]) -> Trace:
    first = traces[0]
    return Trace(num_experts=first.num_experts, counts=sum(t.counts() for t in traces),
                 layer_ids=first.layer_ids, num_hidden_layers=first.num_hidden_layers)


def replan_rotations(quick: bool) -> list[dict[str, Any]]:
    """Held-out gain of budgeted re-plans, per rotation of the prefill workloads."""
    c = Cluster.preset("deepseek-prefill")
    traces = [load_trace(_require(DEEPSEEK / f"{w}.json")) for w in PREFILL]
    if quick:
        traces = [t.select_layers(list(range(0, 58, 6))) for t in traces]
    rows = []
    for k, (dep_i, plan_i, held_i) in enumerate(ROTATIONS[:1] if quick else ROTATIONS):
        t0 = time.perf_counter()
        dep = baseline_plan(ProblemData.from_traces([traces[i] for i in dep_i], c),
                            SolveOptions(method="eplb"), "eplb")
        now = [traces[i] for i in plan_i]
        problem = ProblemData.from_traces(now, c)
        held = _pooled_counts([traces[i] for i in held_i])
        full = solve(problem, options=SolveOptions(time_limit=LONG)).plan
        eplb_now = baseline_plan(problem, SolveOptions(method="eplb"), "eplb")
        f_dep = plan_figures(dep, held).mean_imbalance
        f_full = plan_figures(full, held).mean_imbalance
        f_eplb = plan_figures(eplb_now, held).mean_imbalance
        slots = c.num_slots * problem.num_layers
        row: dict[str, Any] = {
            "rotation": k,
            "deployed_from": [PREFILL[i] for i in dep_i],
            "replanned_from": [PREFILL[i] for i in plan_i],
            "judged_on": [PREFILL[i] for i in held_i],
            "layers": problem.num_layers,
            "heldout_deployed": f_dep,
            "heldout_full_replan": f_full,
            "heldout_eplb_replan": f_eplb,
            "budgets": [],
        }
        insample = []
        for frac in BUDGETS:
            budget = round(frac * slots)
            t1 = time.perf_counter()
            r = replan(dep, now, ReplanOptions(max_moves=budget), target_plan=full)
            f = plan_figures(r.plan, held).mean_imbalance
            share = (f_dep - f) / (f_dep - f_full) if f_dep > f_full else float("nan")
            insample.append(float(np.mean(r.objective_after)))
            row["budgets"].append({
                "fraction": frac, "max_moves": budget, "moves": r.total_moves,
                "heldout": f, "share_of_gain": share,
                "insample": insample[-1], "insample_before": float(np.mean(r.objective_before)),
                "insample_full": float(np.mean(r.objective_target))
                if r.objective_target is not None else None,
                "seconds": time.perf_counter() - t1,
            })
            log(f"rotation {k}: budget {frac:.0%} ({budget} moves): moved {r.total_moves}, "
                f"held-out {f_dep:.4f} -> {f:.4f} (full {f_full:.4f}), share {share:.3f}, "
                f"{time.perf_counter() - t1:.0f} s")
        row["monotone_insample"] = all(b <= a + 1e-12 for a, b in itertools.pairwise(insample))
        if k == 0:  # convergence: a budget that covers the moves to the optimizer's plan
            big = replan(dep, now, ReplanOptions(max_moves=slots), target_plan=full)
            row["converged"] = {
                "max_moves": slots, "moves": big.total_moves,
                "insample": float(np.mean(big.objective_after)),
                "insample_full": float(np.mean(big.objective_target))
                if big.objective_target is not None else None,
                "heldout": plan_figures(big.plan, held).mean_imbalance,
            }
            log(f"rotation {k}: convergence {row['converged']}")
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
# 3. the simulation
# ------------------------------------------------------------------------------------------
def sim_cases(quick: bool) -> list[tuple[str, Trace, Cluster]]:
    flame = load_trace(_require(SHARED / "flame_moe_290m_tokens.npz"))
    layers = 2 if quick else 4
    synth = synthesize("deepseek-v3", num_layers=layers, num_tokens=16 * 4096, num_windows=16,
                       drift=1.0, num_source_ranks=32, seed=0)
    files = sorted(DEEPSEEK.glob("*.json"))
    if len(files) != 12:
        raise SystemExit(f"error: expected 12 DeepSeek-V3 workloads in {DEEPSEEK}, "
                         f"found {len(files)}")
    seq = load_trace([str(f) for f in files])
    if quick:
        seq = seq.select_layers(list(range(0, 58, 6)))
    return [
        ("FLAME-MoE-290M, 32 windows of 64 tokens", flame, Cluster(4, 2, 10)),
        (f"synthetic DeepSeek-V3 ({layers} layers), 16 windows of 4096 tokens, drift 1.0", synth,
         Cluster.preset("deepseek-prefill")),
        ("DeepSeek-V3 SGLang workloads in sequence (decode x4, prefill x8)", seq,
         Cluster.preset("deepseek-prefill")),
    ]


def simulations(quick: bool) -> list[tuple[str, SimulationResult, float]]:
    out = []
    for name, trace, cluster in sim_cases(quick):
        t0 = time.perf_counter()
        r = simulate(trace, cluster, SimulateOptions(every=1), trace_name=name)
        secs = time.perf_counter() - t0
        log(f"simulate {name}: {secs:.0f} s\n{r.summary()}")
        out.append((name, r, secs))
    return out


def sim_verdict(r: SimulationResult) -> dict[str, Any]:
    eplb = r.run("eplb")
    best = min((r.run("static"), r.run("replan")), key=lambda x: x.mean_imbalance)
    ok_moves = best.total_moves <= 0.25 * eplb.total_moves
    ok = [x.policy for x in (r.run("static"), r.run("replan"))
          if x.mean_imbalance <= eplb.mean_imbalance + 1e-12
          and x.total_moves <= 0.25 * eplb.total_moves]
    return {"best": best.policy, "best_mean_imbalance": best.mean_imbalance,
            "eplb_mean_imbalance": eplb.mean_imbalance, "moves_ok": ok_moves, "meets": ok}


# ------------------------------------------------------------------------------------------
# markdown
# ------------------------------------------------------------------------------------------
def markdown(sp: dict[str, float], rot: list[dict[str, Any]],
             sims: list[tuple[str, SimulationResult, float]]) -> str:
    L: list[str] = ["## Plans over time", ""]
    L += ["### show and diff on a full DeepSeek-V3 plan",
          "",
          f"58 layers x 288 slots (EPLB plan file, {sp['plan_file_mb']:.1f} MB); best of three; "
          "target under 2 s.",
          "",
          "| what | library (read, compute, format) | command (`python -m placement ...`) |",
          "|---|---:|---:|",
          f"| `show PLAN` | {sp['show_library_s']:.3f} s | {sp['show_command_s']:.2f} s |",
          f"| `show PLAN --layer 30` | {sp['show_layer_library_s']:.3f} s | |",
          f"| `diff OLD NEW` | {sp['diff_library_s']:.3f} s | {sp['diff_command_s']:.2f} s |",
          "",
          f"The command's time includes starting Python and importing what the command needs "
          f"(`import placement.cli` alone: {sp['import_placement_s']:.2f} s; the package "
          "imports torch only when a replay runs).",
          ""]
    L += ["### Re-planning within a move budget (DeepSeek-V3 workloads, deepseek-prefill)",
          "",
          "Deployed: EPLB of two prefill workloads. Re-planned from three others; judged on the "
          "remaining three, pooled (`imbalance (even)`, held out). Full re-plan: the optimizer "
          "from the same three workloads, whatever it moves. Share: the part of the full "
          "re-plan's held-out gain that the budget recovers (target at 10 %: at least half).",
          "",
          "| rotation | deployed | EPLB re-plan | full re-plan | 5 % | 10 % | 20 % | share at "
          "5 / 10 / 20 % | in-sample monotone |",
          "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rot:
        b = row["budgets"]
        L.append(f"| {row['rotation']} | {row['heldout_deployed']:.4f} | "
                 f"{row['heldout_eplb_replan']:.4f} | {row['heldout_full_replan']:.4f} | "
                 + " | ".join(f"{x['heldout']:.4f}" for x in b) + " | "
                 + " / ".join(f"{x['share_of_gain']:.2f}" for x in b) + " | "
                 + ("yes" if row["monotone_insample"] else "NO") + " |")
    shares = [row["budgets"][1]["share_of_gain"] for row in rot]
    L += ["",
          f"At 10 % of the slots: share of the gain {np.mean(shares):.2f} on average, "
          f"{min(shares):.2f} at worst ({'met' if min(shares) >= 0.5 else 'NOT met'} in every "
          "rotation)." if rot else ""]
    for row in rot:
        L.append(f"- rotation {row['rotation']}: deployed from {', '.join(row['deployed_from'])}; "
                 f"re-planned from {', '.join(row['replanned_from'])}; judged on "
                 f"{', '.join(row['judged_on'])} ({row['seconds']:.0f} s)")
    conv = rot[0].get("converged") if rot else None
    if conv:
        L += ["",
              f"Convergence (rotation 0, budget {conv['max_moves']} moves): in-sample "
              f"{conv['insample']:.4f} vs the optimizer's {conv['insample_full']:.4f} "
              f"({conv['moves']} moves); held out {conv['heldout']:.4f}."]
    L += ["", "### Over time: periodic EPLB vs a static plan vs budgeted re-plans", "",
          "Every policy plans from the first quarter of the windows and is judged on every later "
          "window with the plan in force then; EPLB and replan re-plan every window (EPLB from "
          "the last window's counts, as the engines do; replan from the last quarter, within "
          "10 % of the slots). Mean: over windows of the window's imbalance (mean over layers); "
          "worst window: per layer, then mean over layers. Moves: expert weights received by a "
          "GPU that did not hold them, summed over re-plans.", ""]
    for name, r, secs in sims:
        v = sim_verdict(r)
        L += [f"**{name}** ({r.cluster.shape}, `imbalance ({r.rule})`, {secs:.0f} s)", "",
              "| policy | mean imbalance | worst window | mean sends/token | moves | vs EPLB |",
              "|---|---:|---:|---:|---:|---:|"]
        eplb = r.run("eplb")
        for x in r.runs:
            sends = "-" if x.mean_sends is None else f"{x.mean_sends:.4f}"
            vs = f"{x.total_moves / eplb.total_moves:.3f}" if eplb.total_moves else "-"
            L.append(f"| {x.label} | {x.mean_imbalance:.4f} | {x.worst_window_imbalance:.4f} | "
                     f"{sends} | {x.total_moves} | {vs} |")
        meets = ", ".join(v["meets"]) or "neither"
        L += ["", f"Target (no worse than EPLB every window, at most a quarter of its moves): "
                  f"met by {meets}.", ""]
    return "\n".join(L).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Fewer layers and one rotation.")
    ap.add_argument("--json", type=Path, default=None, help="Write the figures to this file.")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sp = speed(Path(tmp))
    rot = replan_rotations(args.quick)
    sims = simulations(args.quick)
    print(markdown(sp, rot, sims))
    if args.json is not None:
        args.json.write_text(json.dumps({
            "speed": sp, "replan": rot,
            "simulations": [{"name": n, "seconds": s, **r.to_dict(), "verdict": sim_verdict(r)}
                            for n, r, s in sims],
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
