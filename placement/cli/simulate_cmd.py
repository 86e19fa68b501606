"""``placement simulate``: periodic EPLB, a static plan and budgeted re-plans over a trace's windows."""

from __future__ import annotations

import json
from typing import Any

import click

from placement.cli._app import (
    backend_from_options,
    backend_options,
    cluster_from_options,
    cluster_options,
    main,
    progress_bar,
)

__all__ = ["simulate_cmd"]


def _policies(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@main.command("simulate", short_help="Periodic EPLB vs a static plan vs budgeted re-plans.")
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@cluster_options
@click.option("--every", type=int, default=1, show_default=True, metavar="K",
              help="Re-plan every K windows (EPLB and replan).")
@click.option("--warmup", type=int, default=None, metavar="N",
              help="Windows the first plans are made from [default: a quarter, at least K].")
@click.option("--max-moves", type=int, default=None, metavar="N",
              help="replan's budget per re-plan, expert weights [default: 10% of the slots].")
@click.option("--history", type=int, default=None, metavar="N",
              help="Windows a re-plan sees [default: --warmup].")
@click.option("--eplb-history", type=int, default=None, metavar="N",
              help="Windows an EPLB re-plan sees [default: K, as the engines do].")
@click.option("--eplb-method", type=click.Choice(("eplb", "eplb-global")), default="eplb",
              show_default=True, help="EPLB's hierarchical or global policy.")
@click.option("--policies", default="eplb,static,replan", show_default=True,
              help="Which policies to run, comma-separated.")
@click.option("--replan-target", is_flag=True,
              help="Re-plans also search toward the optimizer's plan (slower).")
@backend_options("Processes for the solves [default: CPU cores].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def simulate_cmd(traces: tuple[str, ...], every: int, warmup: int | None, max_moves: int | None,
                 history: int | None, eplb_history: int | None, eplb_method: str,
                 policies: str, replan_target: bool, as_json: bool,
                 **cluster_kw: Any) -> None:
    """Replay the windows of TRACE (several files: read as windows, in the order given) under
    three policies: EPLB re-planned every K windows from the last K windows' counts, as the
    engines do; the optimizer's plan made once from the first windows; and replan every K
    windows within a move budget. Prints, per policy, the mean and worst-window imbalance and
    cross-node sends over the later windows, and the expert weights moved.

    \b
    placement simulate trace.npz --every 4 --nodes 2 --gpus-per-node 4 --slots-per-gpu 10
    placement simulate decode_*.json prefill_*.json --preset deepseek-prefill --every 1
    """
    from placement.routing_traces import load_trace
    from placement.simulate import SimulateOptions, format_simulation, simulate

    backend, jobs = backend_from_options(cluster_kw)
    cluster = cluster_from_options(cluster_kw)
    trace = load_trace(traces[0] if len(traces) == 1 else list(traces))
    kwargs: dict[str, Any] = dict(every=every, warmup=warmup, max_moves=max_moves,
                                  history=history, eplb_history=eplb_history,
                                  eplb_method=eplb_method, policies=_policies(policies),
                                  replan_target=replan_target, backend=backend)
    if jobs is not None:
        kwargs["jobs"] = jobs
    options = SimulateOptions(**kwargs)
    name = traces[0] if len(traces) == 1 else f"{len(traces)} files"
    with progress_bar("simulating", "steps") as progress:
        result = simulate(trace, cluster, options, trace_name=name, progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), separators=(",", ":")))
    else:
        click.echo(format_simulation(result))
