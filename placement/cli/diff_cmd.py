"""``placement diff``: the expert weights that move from one plan to another, and what it buys."""

from __future__ import annotations

import json
from typing import Any

import click

from placement.cli._app import cluster_options, main, model_option
from placement.cli._plan_args import optional_cluster
from placement.models import model_preset
from placement.plan_diff import diff_plans, format_diff
from placement.plan_source import read_plan

__all__ = ["diff_cmd"]


@main.command("diff", short_help="Expert weights that move between two plans.")
@click.argument("old_file", metavar="OLD")
@click.argument("new_file", metavar="NEW")
@model_option("bytes per expert weight, and the predicted time with --trace",
              "guessed from the plans' model name and expert count")
@click.option("--bytes-per-param", type=float, default=None,
              help="Bytes per expert weight (FP8: 1, BF16: 2) [default: as the model is "
                   "released: 1 for DeepSeek-V3, else 2].")
@click.option("--trace", "trace_source", metavar="TRACE", default=None,
              help="Replay both plans on TRACE: imbalance, cross-node sends, predicted time.")
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def diff_cmd(old_file: str, new_file: str, model_name: str | None,
             bytes_per_param: float | None,
             trace_source: str | None, as_json: bool, **cluster_kw: Any) -> None:
    """What going from plan OLD to plan NEW moves, per layer and in total.

    A move is one expert's weights that a GPU must receive because NEW puts that expert there
    and OLD did not (per GPU, the multiset difference of its experts): a change of slot order
    inside a GPU moves nothing. A move is cross-node when no GPU of the receiving node held that
    expert in OLD. Bytes are moves x 3 x hidden x moe_intermediate x bytes per param.

    OLD and NEW are plan files or engine placement files (as for placement show).

    \b
    placement diff deployed.json plan.json
    placement diff init_expert_location.json plan.json --preset deepseek-prefill --json
    placement diff old.json new.json --trace heldout.npz
    """
    cluster = optional_cluster(cluster_kw)
    old = read_plan(old_file, cluster)
    new = read_plan(new_file, cluster)
    trace = None
    if trace_source is not None:
        from placement.routing_traces import load_trace

        trace = load_trace(trace_source)
    model = None if model_name is None else model_preset(model_name)
    d = diff_plans(old.plan, new.plan, model=model, bytes_per_param=bytes_per_param,
                   trace=trace, old_name=old_file, new_name=new_file,
                   trace_name=trace_source or "")
    if as_json:
        click.echo(json.dumps(d.to_dict(), separators=(",", ":")))
    else:
        click.echo(format_diff(d))
