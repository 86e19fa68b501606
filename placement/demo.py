"""The whole pipeline on one trace: plan on some windows, judge on the others, export, report.

``placement demo`` runs it on a trace shipped with the package, so that a new user sees every step
work (and what a plan buys against EPLB) without bringing data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from placement.cluster import Cluster
from placement.cost import guess_model
from placement.engines import export_plan
from placement.errors import InputError
from placement.plan import Plan
from placement.report import Comparison, compare, write_report
from placement.routing_traces.readers import load_trace
from placement.solver import SolveOptions, SolveResult, baseline_plan, solve
from placement.solver.problem import ProblemData
from placement.validation import ValidationResult, replay

__all__ = ["DemoResult", "default_out_dir", "format_demo", "run_demo"]

Step = Callable[[str], None]


def default_out_dir() -> Path:
    """Where ``placement demo`` writes when not told: ``placement-demo-USER`` in the system's
    temporary directory (``$TMPDIR``, else ``/tmp``), so that a demo run from inside a clone
    never leaves files in its working tree."""
    import getpass
    import os
    import tempfile

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name (some containers): the uid
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"placement-demo-{user}"


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` made and measured."""

    source: str
    planning_windows: tuple[str, ...]
    heldout_windows: tuple[str, ...]
    solve: SolveResult
    eplb: Plan
    validation: ValidationResult
    eplb_validation: ValidationResult
    comparison: Comparison
    files: tuple[Path, ...]


def run_demo(
    out_dir: str | Path,
    *,
    source: str = "bundled:deepseek-v3-workloads",
    cluster: Cluster,
    options: SolveOptions | None = None,
    step: Step | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Plan on the first half of ``source``'s windows, judge on the rest, export and report.

    Writes ``plan.json``, ``init_expert_location.json`` (SGLang) and ``report/`` into ``out_dir``.
    """
    say = step or (lambda _msg: None)
    out = Path(out_dir)
    trace = load_trace(source)
    W = trace.num_windows
    if W < 2:
        raise InputError(f"{source}: the demo needs a trace with at least 2 windows, it has {W}.")
    half = W // 2  # the windows of the specs first-half and second-half
    held_name = f"{source}#second-half" if "#" not in source else f"{source} (second half)"
    plan_trace = trace.select_windows(range(half))
    held = trace.select_windows(range(half, W))
    names = trace.window_names
    say(f"trace {source}: {trace.num_layers} MoE layers x {trace.num_experts} experts, "
        f"planning on window(s) {', '.join(names[:half])}, judging on {', '.join(names[half:])}")

    # 1. solve, and EPLB on the same input
    result = solve(plan_trace, cluster, options or SolveOptions(), progress=progress)
    plan = result.plan
    problem = ProblemData.from_traces(plan_trace, cluster)
    eplb = baseline_plan(problem, options or SolveOptions(), "eplb")
    files = [out / "plan.json"]
    plan.save(files[0])
    say(f"solved in {plan.wall_time:.1f} s ({plan.status}); wrote {files[0]}")

    # 2. validate both on the held-out windows
    val = replay(plan, held, plan_name="optimizer", trace_name=held_name)
    eval_ = replay(eplb, held, plan_name="eplb", trace_name=held_name)

    # 3. export for SGLang
    sglang = out / "init_expert_location.json"
    export_plan(plan, "sglang", sglang)
    files.append(sglang)
    say(f"exported the SGLang placement file {sglang}")

    # 4. comparison report against EPLB and the engines' default
    model = guess_model(trace.model, num_experts=trace.num_experts, top_k=trace.top_k)
    cmp = compare([held], [plan], baselines=("eplb", "contiguous"), baseline_inputs=[plan_trace],
                  model=model, labels=["optimizer"], trace_names=[held_name],
                  baseline_source=f"{source}#first-half" if "#" not in source else source)
    files.extend(write_report(cmp, out / "report"))
    say(f"wrote the comparison report {out / 'report' / 'report.html'}")
    return DemoResult(
        source=source,
        planning_windows=tuple(names[:half]),
        heldout_windows=tuple(names[half:]),
        solve=result,
        eplb=eplb,
        validation=val,
        eplb_validation=eval_,
        comparison=cmp,
        files=tuple(files),
    )


def _pct(mine: float | None, theirs: float | None) -> str:
    if mine is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{(mine / theirs - 1) * 100:+.1f} %"


def format_demo(result: DemoResult) -> str:
    """The held-out figures of the plan next to EPLB's, and where the files are."""
    v, e = result.validation, result.eplb_validation
    rows: list[tuple[str, float | None, float | None]] = [
        (v.imbalance_label, v.mean_imbalance, e.mean_imbalance)
    ]
    if v.has_traffic:
        rows.append(("cross-node sends per token", v.mean_cross_node_sends_per_token,
                     e.mean_cross_node_sends_per_token))
        rows.append(("cross-node copies per token", v.mean_cross_node_copies_per_token,
                     e.mean_cross_node_copies_per_token))
    rule = ("the engines' static dispatch" if v.dispatch == "static"
            else "expert tokens split evenly over replicas (counts)" if v.dispatch == "even"
            else f"dispatch {v.dispatch}")
    lines = [
        f"held-out ({', '.join(result.heldout_windows)}), {rule}:",
        f"  {'metric':<38}{'plan':>10}{'EPLB':>10}{'change':>10}",
    ]
    for name, mine, theirs in rows:
        lines.append(f"  {name:<38}{_fmt(mine):>10}{_fmt(theirs):>10}{_pct(mine, theirs):>10}")
    if not v.has_traffic:
        lines.append("  cross-node traffic needs a token-level trace: try --trace bundled:deepseek-v3")
    lines.append("files:")
    lines.extend(f"  {p}" for p in result.files if p.suffix in (".json", ".html", ".md"))
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
