"""Dispatch benchmark: every method under SGLang's static and lp dispatch, held out (issue 21).

* sglang-vec against SGLang's own outputs (``shared/reference/sglang_deepseek_vec_reference.npz``):
  every case of the port, and ``--method sglang-vec`` on the DeepSeek-V3 workloads the reference
  used as steps.
* DeepSeek-V3 counts, leave one workload out per phase (as ``bench_solver``): contiguous, EPLB,
  EPLB-global, sglang-vec, the optimizer made for static (``solve``) and for lp (``solve
  --dispatch lp``: the same optimizer plan through ``plan_for_lp``), each judged on the left-out
  workload under ``static`` (counts without source ranks: every expert's tokens split evenly
  over its replicas, the figure of ``bench_solver``) and ``lp`` (one LP over the workload's
  counts: one batch): mean over layers of max/mean tokens per GPU.
* FLAME-MoE and Mixtral token traces, first half of the windows planned, second half held out:
  imbalance and cross-node sends per token under static and lp (the held-out half is one lp
  batch: fewer than 4,096 tokens); a figure of imbalance vs sends per rule.
* lp replay speed: 100,000 tokens x 58 layers of a synthetic DeepSeek-V3 trace, batches of 4,096
  (the static replay of the same trace in the same run, for the ratio).

Run: ``python benchmarks/bench_dispatch.py [--quick]``; prints markdown (a companion of
``benchmarks/run.py``) and writes ``benchmarks/dispatch.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_solver  # noqa: E402

from placement.cluster import Cluster  # noqa: E402
from placement.metrics import even_gpu_loads, imbalance  # noqa: E402
from placement.routing_traces import read_native, synthesize  # noqa: E402
from placement.solver import SolveOptions, baseline_plan, solve  # noqa: E402
from placement.solver.lp_dispatch import plan_for_lp  # noqa: E402
from placement.solver.problem import ProblemData  # noqa: E402
from placement.solver.sglang_vec import rebalance_experts  # noqa: E402
from placement.validation import replay  # noqa: E402
from placement.validation.engine_rules import lp_gpu_loads  # noqa: E402

SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "sglang_deepseek_vec_reference.npz"
FIGURE = ROOT / "benchmarks" / "dispatch.png"
BASE = ("contiguous", "eplb", "eplb-global", "sglang-vec")
METHODS = (*BASE, "optimizer", "optimizer (lp)")
RULES = ("static", "lp")
LP_SPEED_TARGET = 30.0  # seconds for 100,000 tokens x 58 layers, batches of 4,096


def _require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"error: shared data missing: {path}")
    return path


def _f(x: float) -> str:
    return f"{x:.3f}"


# ----------------------------------------------------------------------------------------------
def reference_check(traces: dict[str, Any]) -> dict[str, Any]:
    """Every reference case through the port; the solver method on the DeepSeek cases."""
    with np.load(_require(REFERENCE), allow_pickle=False) as z:
        ref = {k: z[k] for k in z.files}
    cases = sorted({k.rsplit("__", 1)[0] for k in ref})
    port = {}
    for c in cases:
        P, local, groups, nodes, hier = (int(x) for x in ref[f"{c}__params"])
        p2l, l2p, cnt = rebalance_experts(ref[f"{c}__tokens_per_expert"], P, local, groups, nodes,
                                          bool(hier))
        port[c] = bool(np.array_equal(p2l, ref[f"{c}__phy2log"])
                       and np.array_equal(l2p, ref[f"{c}__log2phy"])
                       and np.array_equal(cnt, ref[f"{c}__logcnt"]))
    steps = {"prefill4": ["prefill_in512", "prefill_in1024", "prefill_in2048", "prefill_in4096"],
             "decode4": ["decode_in500out1500", "decode_in1000out1000", "decode_in1800out100",
                         "decode_in2000out100"]}
    method = {}
    for c in cases:
        workload = c.split("__")[0]
        if workload not in steps:
            continue
        P, local, groups, nodes, hier = (int(x) for x in ref[f"{c}__params"])
        cluster = Cluster(nodes, P // local // nodes, local)
        problem = ProblemData.from_traces([traces[n] for n in steps[workload]], cluster)
        opts = SolveOptions(num_groups=groups if hier else 1, jobs=1)
        plan = baseline_plan(problem, opts, "sglang-vec")
        G = cluster.num_gpus
        same_steps = np.array_equal(problem.scenario_counts, ref[f"{c}__tokens_per_expert"])
        # the plan keeps every GPU's experts; compare the GPUs' contents
        got = np.sort(np.asarray(plan.phy2log).reshape(-1, G, local), axis=-1)
        want = np.sort(ref[f"{c}__phy2log"].reshape(-1, G, local), axis=-1)
        method[c] = bool(same_steps and np.array_equal(got, want))
    return {"port": port, "method": method}


# ----------------------------------------------------------------------------------------------
def _lp_imbalance(phy2log: np.ndarray, counts: np.ndarray, cluster: Cluster) -> float:
    loads = lp_gpu_loads(counts, phy2log, cluster, counts.shape[1])
    active = counts.sum(axis=1) > 0
    return float(imbalance(loads)[active].mean())


def _even_imbalance(phy2log: np.ndarray, counts: np.ndarray, cluster: Cluster) -> float:
    active = counts.sum(axis=1) > 0
    return float(imbalance(even_gpu_loads(phy2log, counts, cluster))[active].mean())


def deepseek_loo(traces: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
    """One row per (cluster, left-out workload): imbalance per method and rule."""
    rows: list[dict[str, Any]] = []
    opts = SolveOptions()
    lp_opts = SolveOptions(dispatch="lp")
    shapes = bench_solver.DEEPSEEK_SHAPES
    for nodes, gpn, spg in shapes:
        cluster = Cluster(nodes, gpn, spg)
        for phase in ("prefill", "decode"):
            names = [n for n in traces if n.startswith(phase)]
            for held in names[:limit]:
                problem = ProblemData.from_traces([traces[n] for n in names if n != held],
                                                  cluster)
                plans = {m: baseline_plan(problem, opts, m) for m in BASE}
                t0 = time.perf_counter()
                plans["optimizer"] = solve(problem, options=opts).plan
                t1 = time.perf_counter()
                # solve --dispatch lp is this very call after the same optimizer run
                plans["optimizer (lp)"] = plan_for_lp(problem, lp_opts, plans["optimizer"])
                t2 = time.perf_counter()
                counts = traces[held].counts()
                row: dict[str, Any] = {"cluster": cluster.shape, "phase": phase, "heldout": held,
                                       "solve_s": t1 - t0, "plan_for_lp_s": t2 - t1}
                for m, p in plans.items():
                    row[f"{m}|static"] = _even_imbalance(p.phy2log, counts, cluster)
                    row[f"{m}|lp"] = _lp_imbalance(p.phy2log, counts, cluster)
                rows.append(row)
                print(f"  {cluster.shape:>7} {held:<24} "
                      + " ".join(f"{m} {row[m + '|static']:.3f}/{row[m + '|lp']:.3f}"
                                 for m in METHODS), file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
def token_cases() -> list[dict[str, Any]]:
    """FLAME-MoE and Mixtral halves: imbalance and sends per method and rule."""
    cases = [
        ("flame-moe-290m", read_native(_require(SHARED / "traces" / "flame_moe_290m_tokens.npz")),
         Cluster(4, 2, 10)),
        ("mixtral-8x7b",
         read_native(_require(SHARED / "traces" / "mixtral_8x7b_decode_tokens.npz")),
         Cluster(2, 2, 3)),
    ]
    out = []
    opts = SolveOptions()
    lp_opts = SolveOptions(dispatch="lp")
    for name, trace, cluster in cases:
        fit, held = bench_solver.split_half(trace)
        problem = ProblemData.from_traces(fit, cluster)
        plans = {m: baseline_plan(problem, opts, m) for m in BASE}
        plans["optimizer"] = solve(problem, options=opts).plan
        plans["optimizer (lp)"] = plan_for_lp(problem, lp_opts, plans["optimizer"])
        row: dict[str, Any] = {"case": name, "cluster": cluster.shape,
                               "heldout_tokens": int(held.num_tokens or 0)}
        for m, p in plans.items():
            for rule in RULES:
                r = replay(p, held, dispatch=rule, device="cpu")
                row[f"{m}|{rule}"] = r.mean_imbalance
                row[f"{m}|{rule}|sends"] = r.mean_cross_node_sends_per_token
        out.append(row)
        print(f"  {name}: " + " ".join(f"{m} {row[m + '|static']:.3f}/{row[m + '|lp']:.3f}"
                                       for m in METHODS), file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------------------------
def static_rules() -> list[str]:
    """Our static rule against SGLang's exact one (``sglang-static``) on the baselines' plans of
    the token-level halves and a synthetic DeepSeek-V3 trace: markdown table rows."""
    cases = [
        ("flame-moe-290m", read_native(_require(SHARED / "traces" / "flame_moe_290m_tokens.npz")),
         Cluster(4, 2, 10)),
        ("mixtral-8x7b",
         read_native(_require(SHARED / "traces" / "mixtral_8x7b_decode_tokens.npz")),
         Cluster(2, 2, 3)),
        ("synth deepseek-v3", synthesize("deepseek-v3", num_tokens=8192, num_windows=2,
                                         num_source_ranks=32, num_layers=8, seed=11),
         Cluster(4, 8, 9)),
    ]
    rows = ["| case | plan | imbalance static | sglang-static | ratio | sends static | "
            "sglang-static |", "|---|---|---|---|---|---|---|"]
    for name, trace, cluster in cases:
        fit, held = bench_solver.split_half(trace)
        problem = ProblemData.from_traces(fit, cluster)
        for m in BASE:
            plan = baseline_plan(problem, SolveOptions(jobs=1), m)
            a = replay(plan, held, dispatch="static", device="cpu")
            b = replay(plan, held, dispatch="sglang-static", device="cpu")
            rows.append(f"| {name} | {m} | {_f(a.mean_imbalance)} | {_f(b.mean_imbalance)} | "
                        f"{b.mean_imbalance / a.mean_imbalance:.4f} | "
                        f"{_f(a.mean_cross_node_sends_per_token or 0.0)} | "
                        f"{_f(b.mean_cross_node_sends_per_token or 0.0)} |")
    return rows


# ----------------------------------------------------------------------------------------------
def lp_speed(tokens: int) -> dict[str, float]:
    trace = synthesize("deepseek-v3", num_tokens=tokens, num_windows=1, num_source_ranks=32,
                       num_layers=58, seed=11)
    cluster = Cluster(4, 8, 9)
    plan = baseline_plan(ProblemData.from_traces(trace, cluster), SolveOptions(jobs=1), "eplb")
    out = {}
    for rule in ("static", "lp"):
        t0 = time.perf_counter()
        replay(plan, trace, dispatch=rule, device="cpu", batch_tokens=4096)
        out[rule] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------------------------
def figure(tok: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tok), figsize=(6 * len(tok), 4.5))
    colors = dict(zip(METHODS, ("tab:brown", "black", "tab:gray", "tab:olive", "tab:blue",
                                "tab:cyan"), strict=True))
    for ax, row in zip(np.atleast_1d(axes), tok, strict=True):
        for m in METHODS:
            for rule, mark in (("static", "o"), ("lp", "^")):
                ax.plot(row[f"{m}|{rule}"], row[f"{m}|{rule}|sends"], mark, color=colors[m],
                        markersize=8, label=f"{m}, {rule}")
        ax.set_title(f"{row['case']} ({row['cluster']}), held-out half")
        ax.set_xlabel("imbalance (max/mean tokens per GPU), held out")
        ax.set_ylabel("cross-node sends per token")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
def render(ref: dict[str, Any], loo: list[dict[str, Any]], tok: list[dict[str, Any]],
           speed: dict[str, float], tokens: int) -> str:
    out: list[str] = []
    ok_port = all(ref["port"].values())
    ok_method = all(ref["method"].values())
    out += ["**sglang-vec against SGLang's own outputs** "
            f"(`{REFERENCE.name}`): port {sum(ref['port'].values())}/{len(ref['port'])} cases "
            f"equal (phy2log, log2phy, logcnt); `--method sglang-vec` on the DeepSeek workloads "
            f"{sum(ref['method'].values())}/{len(ref['method'])} cases equal "
            f"({'met' if ok_port and ok_method else '**MISSED**'}).", ""]
    out += ["**DeepSeek-V3 counts, leave one workload out** (mean over layers of max/mean tokens "
            "per GPU on the left-out workload, mean over workloads; static = every expert's "
            "tokens split evenly over its replicas, as counts carry no source ranks; lp = one LP "
            "over the workload's counts). `optimizer (lp)` is `solve --dispatch lp`.", ""]
    head = "| cluster | phase | n | rule | " + " | ".join(METHODS) + " |"
    out += [head, "|" + "---|" * (4 + len(METHODS))]
    wins_vec, wins_eplb, lp_ok = [], [], []
    for shape in dict.fromkeys(r["cluster"] for r in loo):
        for phase in ("prefill", "decode"):
            sub = [r for r in loo if r["cluster"] == shape and r["phase"] == phase]
            if not sub:
                continue
            for rule in RULES:
                mean = {m: float(np.mean([r[f"{m}|{rule}"] for r in sub])) for m in METHODS}
                out.append(f"| {shape} | {phase} | {len(sub)} | {rule} | "
                           + " | ".join(_f(mean[m]) for m in METHODS) + " |")
                if rule == "static":
                    wins_vec.append(mean["optimizer"] < mean["sglang-vec"])
                    wins_eplb.append(mean["optimizer"] < mean["eplb"])
            lp_ok += [r["optimizer (lp)|lp"] <= r["optimizer|lp"] + 1e-12 for r in sub]
    out += ["", "**Token-level halves** (first half of the windows planned, second held out, "
            "under 4,096 tokens: one lp batch): imbalance / cross-node sends per token.", ""]
    out += ["| case | cluster | rule | " + " | ".join(METHODS) + " |",
            "|" + "---|" * (3 + len(METHODS))]
    for row in tok:
        for rule in RULES:
            out.append(f"| {row['case']} | {row['cluster']} | {rule} | " + " | ".join(
                f"{_f(row[f'{m}|{rule}'])} / {_f(row[f'{m}|{rule}|sends'])}" for m in METHODS)
                + " |")
        lp_ok.append(row["optimizer (lp)|lp"] <= row["optimizer|lp"] + 1e-12)
    best = []
    for row in tok:
        for rule in RULES:
            m = min(METHODS, key=lambda k: row[f"{k}|{rule}"])
            best.append(f"{row['case']} best {rule}: {m} {_f(row[f'{m}|{rule}'])} (sends "
                        f"{_f(row[f'{m}|{rule}|sends'])})")
    out += ["", "Best figure per rule: " + "; ".join(best) + ".", "",
            f"![held-out imbalance vs sends per rule](benchmarks/{FIGURE.name})", ""]
    ratio = speed["lp"] / speed["static"] if speed["static"] else float("nan")
    out += ["**Targets (same run)**", "",
            "| target | measured | met |", "|---|---|---|",
            f"| sglang-vec equals SGLang's outputs | port {sum(ref['port'].values())}/"
            f"{len(ref['port'])}, method {sum(ref['method'].values())}/{len(ref['method'])} | "
            f"{'yes' if ok_port and ok_method else '**no**'} |",
            f"| optimizer ahead of sglang-vec on every DeepSeek LOO cluster/phase (static) | "
            f"{sum(wins_vec)}/{len(wins_vec)} | {'yes' if all(wins_vec) else '**no**'} |",
            f"| optimizer ahead of EPLB on every DeepSeek LOO cluster/phase (static) | "
            f"{sum(wins_eplb)}/{len(wins_eplb)} | {'yes' if all(wins_eplb) else '**no**'} |",
            f"| under lp, `--dispatch lp` plan <= static-made plan, every case | "
            f"{sum(lp_ok)}/{len(lp_ok)} | {'yes' if all(lp_ok) else '**no**'} |",
            f"| lp replay {tokens:,} tokens x 58 layers (batches of 4,096) <= "
            f"{LP_SPEED_TARGET:.0f} s | {speed['lp']:.1f} s ({ratio:.1f} x the static replay, "
            f"{speed['static']:.1f} s) | {'yes' if speed['lp'] <= LP_SPEED_TARGET else '**no**'} |",
            ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="one left-out workload per phase, 20,000 tokens for the speed")
    ap.add_argument("--limit", type=int, default=None,
                    help="left-out workloads per phase (default: all; --quick: 1)")
    ap.add_argument("--static-rules", action="store_true",
                    help="only the table of our static rule against SGLang's exact one")
    args = ap.parse_args(argv)
    if args.static_rules:
        print("\n".join(static_rules()))
        return 0
    for p in bench_solver.DEEPSEEK_DIR.glob("*.json"):
        _require(p)
    traces = bench_solver.load_deepseek()
    print("reference", file=sys.stderr, flush=True)
    ref = reference_check(traces)
    print("lp speed", file=sys.stderr, flush=True)
    tokens = 20_000 if args.quick else 100_000
    speed = lp_speed(tokens)
    print("token-level", file=sys.stderr, flush=True)
    tok = token_cases()
    figure(tok)
    print("DeepSeek-V3 leave-one-out", file=sys.stderr, flush=True)
    loo = deepseek_loo(traces, 1 if args.quick and args.limit is None else args.limit)
    print(render(ref, loo, tok, speed, tokens))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
