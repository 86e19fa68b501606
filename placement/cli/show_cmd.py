"""``placement show``: what a plan (or an engine placement file) holds."""

from __future__ import annotations

import json
from typing import Any

import click

from placement.cli._app import cluster_options, main
from placement.cli._plan_args import optional_cluster
from placement.plan_show import describe_plan, format_plan_view
from placement.plan_source import read_plan

__all__ = ["show_cmd"]


@main.command("show", short_help="What a plan or an engine placement file holds.")
@click.argument("plan_file", metavar="PLAN")
@click.option("--layer", type=int, default=None, metavar="N",
              help="Show decoder layer N in full: the experts of every GPU and node.")
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_cmd(plan_file: str, layer: int | None, as_json: bool, **cluster_kw: Any) -> None:
    """Show PLAN: cluster, method, replicas per expert per layer, what every GPU and node holds.

    PLAN is a plan file or any engine placement file (SGLang, TensorRT-LLM, EPLB tensors,
    vLLM-Ascend), told by content; an engine file that does not say its cluster (SGLang) needs
    --preset/--cluster or --nodes, --gpus-per-node and --slots-per-gpu.

    \b
    placement show plan.json
    placement show plan.json --layer 3
    placement show init_expert_location.json --preset deepseek-prefill --json
    """
    src = read_plan(plan_file, optional_cluster(cluster_kw))
    view = describe_plan(src.plan, layer=layer, source=plan_file, kind=src.kind,
                         notes=src.notes)
    if as_json:
        click.echo(json.dumps(view.to_dict(), separators=(",", ":")))
    else:
        click.echo(format_plan_view(view))
