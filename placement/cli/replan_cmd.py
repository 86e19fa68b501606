"""``placement replan``: the best plan reachable from the deployed one within a move budget."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from placement._io import atomic_write_bytes
from placement.cli._app import (
    backend_from_options,
    backend_options,
    cluster_options,
    main,
    model_option,
    progress_bar,
)
from placement.cli._plan_args import check_one_model, model_for, optional_cluster
from placement.errors import InputError
from placement.plan_diff import (
    default_bytes_per_param,
    expert_bytes,
    expert_size_text,
    figure_lines,
    format_transfer,
)
from placement.plan_source import read_plan

if TYPE_CHECKING:
    from placement.moves import TransferTime
    from placement.plan_eval import PlanFigures
    from placement.solver.replan import ReplanResult

__all__ = ["format_replan_output", "parse_bytes", "replan_cmd", "replan_summary_dict"]

_UNITS = {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40}


def parse_bytes(text: str) -> float:
    """``"40GB"`` -> 4e10; a plain number is bytes. Raises :class:`InputError` otherwise."""
    m = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise InputError(f"Expected --max-bytes like 40GB, 500MB or 1e9, got {text!r}.")
    value = float(m.group(1)) * _UNITS[unit]
    if value < 0:
        raise InputError(f"Expected --max-bytes >= 0, got {text!r}.")
    return value


def replan_transfer(result: ReplanResult) -> TransferTime | None:
    """The time to move the re-plan's weights over the cluster's NVLink and network
    (:func:`placement.moves.transfer_time`), when the expert size is known."""
    from placement.moves import transfer_time

    b = result.options.bytes_per_expert
    return None if b is None else transfer_time(result.moves, result.deployed.cluster, b)


def replan_summary_dict(result: ReplanResult, heldout: tuple[PlanFigures, PlanFigures] | None,
                        output: str) -> dict[str, Any]:
    """The figures of a re-plan as a JSON-ready dict."""
    import numpy as np

    r = result
    out: dict[str, Any] = {
        "output": output,
        "unchanged": r.unchanged,
        "budget_moves": r.budget,
        "per_layer_budget": r.options.per_layer,
        "moves": r.total_moves,
        "cross_node_moves": r.moves.total_cross_node,
        "bytes": r.bytes_moved,
        "bytes_per_expert": r.options.bytes_per_expert,
        "transfer_s": None if (t := replan_transfer(r)) is None else t.seconds,
        "stall_per_layer_s": None if t is None else t.max_layer_seconds,
        "imbalance_in_sample_before": float(np.mean(r.objective_before)),
        "imbalance_in_sample_after": float(np.mean(r.objective_after)),
        "imbalance_in_sample_optimizer": None if r.objective_target is None
        else float(np.mean(r.objective_target)),
        "optimizer_moves": None if r.target_moves is None else int(r.target_moves.sum()),
        "robust": r.options.robust,
        "wall_time": r.wall_time,
        "layers": [{"layer_id": int(lid), "moves": int(m), "cross_node_moves": int(x),
                    "imbalance_in_sample_before": float(b),
                    "imbalance_in_sample_after": float(a)}
                   for lid, m, x, b, a in zip(r.layer_ids.tolist(), _layer_moves(r),
                                              _layer_cross(r), r.objective_before,
                                              r.objective_after, strict=True)],
        "messages": list(r.messages),
    }
    if heldout is not None:
        out["heldout"] = {"before": heldout[0].to_dict(), "after": heldout[1].to_dict()}
    return out


def _rows(r: ReplanResult) -> list[int]:
    pos = {int(x): i for i, x in enumerate(r.deployed.layer_ids.tolist())}
    return [pos[int(x)] for x in r.layer_ids.tolist()]


def _layer_moves(r: ReplanResult) -> list[int]:
    return [int(r.moves.moves[i]) for i in _rows(r)]


def _layer_cross(r: ReplanResult) -> list[int]:
    return [int(r.moves.cross_node_moves[i]) for i in _rows(r)]


def format_replan_output(result: ReplanResult, heldout: tuple[PlanFigures, PlanFigures] | None,
                         heldout_name: str, expert_size: str | None, output: str) -> str:
    """The text a user reads after ``placement replan``: cost, in-sample and held-out gain."""
    from placement.solver.replan import format_replan_result

    lines = [format_replan_result(result)]
    if expert_size is not None:
        lines.append(f"expert size: {expert_size}")
    else:
        lines.append("expert size: unknown (give --model for bytes)")
    t = replan_transfer(result)
    if t is not None:
        lines.append(format_transfer(t))
    if heldout is not None:
        lines.append(f"held-out, on {heldout_name} (deployed -> re-planned):")
        lines += figure_lines(*heldout)
    else:
        lines.append("held-out: give --heldout TRACE for the figures on traffic the re-plan "
                     "did not see")
    if result.unchanged:
        lines.append(f"nothing moves: wrote the deployed plan unchanged to {output}")
    else:
        lines.append(f"saved plan to {output}")
    return "\n".join(lines)


@main.command("replan", short_help="Re-plan within a budget of expert weights moved.")
@click.argument("deployed_file", metavar="DEPLOYED")
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@cluster_options
@click.option("--max-moves", type=int, default=None, metavar="N",
              help="Budget: expert weights moved (in total, or per layer with "
                   "--per-layer-budget).")
@click.option("--max-bytes", default=None, metavar="B",
              help="Budget in bytes (40GB, 500MB, 1e9); needs the model's shape.")
@click.option("--per-layer-budget", is_flag=True, help="The budget holds for every layer.")
@click.option("--heldout", "heldout_sources", multiple=True, metavar="TRACE",
              help="Held-out traffic to judge the deployed and the new plan on (repeatable: "
                   "read as windows of one trace).")
@model_option("bytes per expert weight (--max-bytes) and the predicted time",
              "guessed from the plan's and traces' model name and expert count")
@click.option("--bytes-per-param", type=float, default=None,
              help="Bytes per expert weight (FP8: 1, BF16: 2) [default: as the model is "
                   "released: 1 for DeepSeek-V3, else 2].")
@click.option("--robust", type=click.Choice(("max", "mean")), default="max", show_default=True,
              help="How the traces' windows combine: worst case or mean.")
@click.option("--no-target", is_flag=True,
              help="Skip the unconstrained optimizer's plan as a target (faster; large budgets "
                   "may then not reach the optimizer's figures).")
@backend_options("Layers searched in parallel [default: CPU cores].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Plan file to write (JSON).")
def replan_cmd(deployed_file: str, traces: tuple[str, ...], max_moves: int | None,
               max_bytes: str | None, per_layer_budget: bool, heldout_sources: tuple[str, ...],
               model_name: str | None, bytes_per_param: float | None, robust: str, no_target: bool,
               as_json: bool, output: str, **cluster_kw: Any) -> None:
    """The best plan reachable from DEPLOYED moving at most --max-moves expert weights (or
    --max-bytes), for the traffic of TRACE....

    DEPLOYED is a plan file or any engine placement file (as for placement show). A move is one
    expert's weights that a GPU must receive (see placement diff). The search descends greedily
    from DEPLOYED and toward the unconstrained optimizer's plan, and splits the budget over the
    layers where it buys the most; --max-moves 0 writes DEPLOYED unchanged.

    \b
    placement replan deployed.json now_a.json now_b.json --max-moves 1670 -o plan.json
    placement replan init_expert_location.json trace.npz --preset deepseek-prefill \\
        --max-bytes 40GB --heldout later.npz -o plan.json
    """
    from placement.plan_eval import plan_figures
    from placement.routing_traces import load_trace
    from placement.solver.replan import ReplanOptions, replan

    if (max_moves is None) == (max_bytes is None):
        raise click.UsageError("give the budget as exactly one of --max-moves N or "
                               "--max-bytes B (--max-moves 0 keeps the deployed plan)")
    backend, jobs = backend_from_options(cluster_kw)
    src = read_plan(deployed_file, optional_cluster(cluster_kw))
    deployed = src.plan
    loaded = [load_trace(t) for t in traces]
    check_one_model(list(zip(traces, loaded, strict=True)))
    model = model_for(model_name, deployed, trace_model=loaded[0].model)
    if bytes_per_param is None:
        bytes_per_param = default_bytes_per_param(model)
    if not (bytes_per_param > 0):
        raise InputError(f"Expected --bytes-per-param > 0, got {bytes_per_param}.")
    per_expert = None if model is None else expert_bytes(model, bytes_per_param)
    if max_bytes is not None and per_expert is None:
        raise InputError("--max-bytes needs the size of an expert: give --model.")
    kwargs: dict[str, Any] = dict(
        max_moves=max_moves, max_bytes=None if max_bytes is None else parse_bytes(max_bytes),
        bytes_per_expert=per_expert, per_layer=per_layer_budget, robust=robust,
        target=not no_target, backend=backend,
    )
    if jobs is not None:
        kwargs["jobs"] = jobs
    options = ReplanOptions(**kwargs)
    with progress_bar("re-planning", "layers") as progress:
        result = replan(deployed, loaded, options, progress=progress)
    heldout = None
    name = " ".join(heldout_sources)
    if heldout_sources:
        held = load_trace(list(heldout_sources))
        heldout = (plan_figures(deployed, held, model=model),
                   plan_figures(result.plan, held, model=model))
    if result.unchanged and src.kind == "plan":
        if Path(output).resolve() != src.path.resolve():
            atomic_write_bytes(output, src.path.read_bytes())  # byte for byte
    else:
        result.plan.save(output)
    if as_json:
        click.echo(json.dumps(replan_summary_dict(result, heldout, output),
                              separators=(",", ":")))
    else:
        size = (None if model is None
                else expert_size_text(model, model_name is None, bytes_per_param))
        click.echo(format_replan_output(result, heldout, name, size, output))

