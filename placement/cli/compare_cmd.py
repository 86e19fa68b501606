"""``placement compare``: plans and baselines on held-out traces, written up as a report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from placement.cli._app import (
    backend_from_options,
    backend_options,
    cluster_from_options,
    cluster_options,
    directory_output,
    echo_err,
    main,
    model_option,
    progress_bar,
)
from placement.cli._files import (
    check_heldout,
    kind_of,
    load_plan_arg,
    load_trace_arg,
    resolve_model,
)
from placement.cli._plan_args import check_one_model
from placement.errors import InputError, TraceFormatError
from placement.filekinds import mismatch
from placement.moe_time import OVERLAPS
from placement.report.comparison import BASELINES
from placement.validation import DEVICES, RULES

if TYPE_CHECKING:
    from placement.cluster import Cluster
    from placement.frontier import Frontier
    from placement.plan import Plan
    from placement.routing_traces.sharded import ShardedTrace
    from placement.routing_traces.trace import Trace

__all__ = ["baseline_sources", "compare_cmd", "is_plan_file"]

def is_plan_file(path: str) -> bool:
    """True when ``path`` is a placement plan (told by content)."""
    kind = kind_of(path)
    return kind is not None and kind.role == "plan"


def baseline_sources(
    baseline_from: tuple[str, ...], plans: list[Plan], plan_files: list[str],
    heldout: list[str],
) -> list[str]:
    """Where EPLB baselines are planned from: ``--baseline-from``, else the plans' recorded
    inputs (``settings["inputs"]``, written by ``placement solve``). Never the held-out traces
    without being told: a recorded input that is also held out is an error (the check of
    overlapping windows, :func:`placement.cli._files.check_heldout`, comes first)."""
    if baseline_from:
        return list(baseline_from)
    recorded: list[str] = []
    for p, f in zip(plans, plan_files, strict=True):
        ins = p.settings.get("inputs")
        if isinstance(ins, list) and all(isinstance(x, str) for x in ins):
            if recorded and ins != recorded:
                raise InputError(
                    f"{f}: the plans were made from different traces; say which to plan the "
                    "baselines from with --baseline-from TRACE."
                )
            recorded = list(ins)
    if not recorded:
        return []
    return recorded


def _frontier(plan_from: list[Trace], heldout: list[Trace | ShardedTrace], cluster: Cluster,
              *, model_name: str | None, overlap: str, dispatch: str = "static"
              ) -> Frontier | None:
    """``--frontier``: :func:`placement.frontier.frontier` on the planning traces (the
    baselines' data) judged on the held-out ones; None, with one line said, when the inputs
    cannot give one."""
    from placement.frontier import frontier
    from placement.solver import SolveOptions

    if not plan_from:
        click.echo("no frontier: it solves the traces the plans were made from; give "
                   "--baseline-from TRACE")
        return None
    if not all(t.is_token_level for t in (*plan_from, *heldout)):
        click.echo("no frontier: the balance/traffic trade-off needs token-level traces "
                   "(planning and held-out); these hold aggregated counts")
        return None
    with progress_bar("frontier", "plans") as progress:
        return frontier(plan_from, heldout, cluster,
                        options=SolveOptions(model=model_name, overlap=overlap),
                        progress=progress, dispatch=dispatch)


@main.command("compare", short_help="Compare plans with baselines on held-out traces.")
@click.argument("inputs", nargs=-1, required=True, metavar="TRACE... PLAN...")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(BASELINES),
              help="Baseline to make for the same cluster and compare with (repeatable) "
                   "[default: eplb].")
@click.option("--no-baseline", is_flag=True, help="Compare the given plans only.")
@click.option("--baseline-from", multiple=True, metavar="TRACE",
              help="Traces the EPLB baselines are planned from [default: the plans' recorded "
                   "inputs]. Never the held-out traces unless you say so here.")
@cluster_options
@model_option("bytes, tokens/s and $", "guessed from the plans' and traces' model name and "
              "expert count")
@click.option("--overlap", type=click.Choice(OVERLAPS), default="two-batch", show_default=True,
              help="Compute/communication overlap in the cost model.")
@click.option("--efficiency", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0,
              show_default=True,
              help="A further share of the cluster's GEMM TFLOP/s (already the GPU's peak x "
                   "DeepGEMM's 0.6, as in the solver's predicted time) in the cost model.")
@click.option("--price", type=click.FloatRange(min=0), default=None,
              help="$ per GPU-hour [default: the cluster's, else its GPU's].")
@click.option("--layer", type=int, default=None,
              help="Decoder layer of the traffic-matrix figure [default: where the plan and "
                   "EPLB differ most].")
@click.option("--dispatch", type=click.Choice(RULES), default="static", show_default=True,
              help="Dispatch rule of the replays.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where the replays run.")
@click.option("--frontier", "with_frontier", is_flag=True,
              help="Also solve the planning traces at several balance/traffic trade-offs and "
                   "judge every plan held out beside the baselines (EPLB, EPLB-global, "
                   "sglang-vec, contiguous) under --dispatch: "
                   "frontier.png, frontier.json and a report section (token-level traces).")
@click.option("--allow-overlap", is_flag=True,
              help="Accept held-out traces that share windows with the data the plans were "
                   "made from (in-sample figures, for diagnosis).")
@backend_options("Shards of sharded TRACEs replayed in parallel on this machine's processes "
                 "[default: 1; in-memory TRACEs are replayed in this process].")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              callback=directory_output("report.md, report.html and the figures"),
              help="Directory for report.md, report.html and the figures (-o report, not -o "
                   "report.html).")
def compare_cmd(inputs: tuple[str, ...], baselines: tuple[str, ...], no_baseline: bool,
                baseline_from: tuple[str, ...], model_name: str | None, overlap: str,
                efficiency: float, price: float | None, layer: int | None, dispatch: str,
                device: str, with_frontier: bool, allow_overlap: bool, out_dir: str,
                **cluster_kwargs: Any) -> None:
    """Replay PLANs and baselines on held-out TRACEs and write a report.

    Arguments are held-out traces and plan files in any order (a plan file is JSON with
    "format": "placement-plan"). Baselines are made for the plans' cluster from
    --baseline-from traces, or from the traces the plans were made from (recorded by
    `placement solve`); `contiguous` needs no data.

    \b
    placement compare heldout.npz plan.json --baseline eplb --baseline contiguous -o report/
    placement compare decode_b.json --preset deepseek-decode --baseline-from decode_a.json \\
        --baseline eplb --baseline contiguous -o report/
    """
    from placement.cost import CostOptions
    from placement.parallel import backend_for_jobs

    backend, jobs = backend_from_options(cluster_kwargs)
    if jobs is not None:
        backend = backend_for_jobs(jobs, jobs)
    from placement.report import compare, format_comparison, write_report
    from placement.routing_traces.sharded import ShardedTrace

    # 1. plans and held-out traces, told apart by content
    plan_files: list[str] = []
    trace_files: list[str] = []
    for a in inputs:
        kind = kind_of(a)
        if kind is not None and kind.role == "plan":
            plan_files.append(a)
        elif kind is None or kind.role == "trace":
            trace_files.append(a)
        else:
            raise InputError(f"{a}: {mismatch(kind, 'plan', a)}")
    if not trace_files:
        raise InputError("no held-out trace given (every argument is a plan file).")
    plans = [load_plan_arg(f) for f in plan_files]
    held = [load_trace_arg(t, stream=True) for t in trace_files]
    any_cluster = any(cluster_kwargs.get(k) is not None for k in
                      ("cluster_file", "cluster_preset", "num_nodes", "gpus_per_node",
                       "slots_per_gpu"))
    cluster = cluster_from_options(cluster_kwargs) if (any_cluster or not plans) else None
    if no_baseline:
        chosen: tuple[str, ...] = ()
    else:
        chosen = baselines or ("eplb",)
    notes = [n for p, f in zip(plans, plan_files, strict=True)
             for n in check_heldout(p, f, held, allow_overlap=allow_overlap)]
    traces: list[Trace | ShardedTrace] = [h.trace for h in held]
    check_one_model([(h.text, h.trace) for h in held])
    needs_data = any(b != "contiguous" for b in chosen)
    sources = baseline_sources(baseline_from, plans, plan_files, trace_files) \
        if (needs_data or with_frontier) else []
    if needs_data and not sources:
        raise InputError(
            "the EPLB baseline needs the traces the plans were made from: give --baseline-from "
            "TRACE (never the held-out traces), or --baseline contiguous only."
        )
    base_inputs: list[Trace] = []
    for s in sources:
        try:
            arg = load_trace_arg(s, stream=True)
            # a sharded input gives the baselines its counts, gathered streaming
            base_inputs.append(arg.trace.counts_trace() if isinstance(arg.trace, ShardedTrace)
                               else arg.trace)
        except TraceFormatError as exc:
            if baseline_from:
                raise
            raise InputError(f"{exc} (a trace the plan was made from; give --baseline-from "
                             "TRACE to plan the baselines from other data)") from None
    model = resolve_model(model_name, plans[0] if plans else None, traces[0],
                          plan_label=plan_files[0] if plan_files else "the plan",
                          trace_label=trace_files[0])
    options = CostOptions(overlap=overlap, efficiency=efficiency, usd_per_gpu_hour=price)

    with progress_bar("comparing", "steps") as progress:
        cmp = compare(
            traces, plans, baselines=chosen, baseline_inputs=base_inputs, cluster=cluster,
            model=model, cost_options=options, dispatch=dispatch,
            labels=[Path(f).stem for f in plan_files],
            trace_names=[Path(t).name for t in trace_files],
            baseline_source=", ".join(Path(s).name for s in sources), device=device,
            progress=progress, backend=backend,
        )
    if notes:
        import dataclasses

        cmp = dataclasses.replace(cmp, messages=(*cmp.messages, *notes))
    fr = _frontier(base_inputs, traces, cmp.cluster, model_name=model.name if model else None,
                   overlap=overlap, dispatch=dispatch) if with_frontier else None
    paths = write_report(cmp, out_dir, layer=layer, frontier=fr)
    if model is None:
        echo_err("note: model shape unknown, so no bytes, tokens/s or $: give --model NAME.")
    elif model_name is None:
        echo_err(f"note: model shape guessed: {model.name} (give --model NAME to choose).")
    click.echo(format_comparison(cmp))
    click.echo(f"wrote {len(paths)} files to {out_dir}: "
               + ", ".join(p.name for p in paths))
