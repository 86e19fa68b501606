"""``placement sweep``: redundant experts x cluster shapes -> balance, memory, tokens/s, $."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from placement.cli._app import directory_output, main, model_option, progress_bar
from placement.cli._files import TraceArg, check_heldout, load_trace_arg, resolve_model
from placement.cli._plan_args import check_one_model
from placement.cost.step import PHASES, STEP_OVERLAPS, Workload
from placement.errors import InputError
from placement.filekinds import split_spec
from placement.hardware import GPU_PRESETS, gpu_preset
from placement.models import MODEL_PRESETS
from placement.solver import METHODS, SolveOptions
from placement.sweep import SweepOptions, format_sweep, sweep, write_sweep

__all__ = ["IntList", "NameList", "heldout_notes", "sweep_cmd"]


class IntList(click.ParamType):
    """A comma-separated list of integers (``0,8,16``)."""

    name = "LIST"

    def __init__(self, low: int) -> None:
        self.low = low

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(v) for v in str(value).split(",") if v.strip() != "")
        except ValueError:
            self.fail(f"expected integers separated by commas, got {value!r}", param, ctx)
        if not out or any(v < self.low for v in out):
            self.fail(f"expected integers >= {self.low} separated by commas, got {value!r}",
                      param, ctx)
        return out


class NameList(click.ParamType):
    """A comma-separated list of names."""

    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        return tuple(v.strip() for v in str(value).split(",") if v.strip())


class _Inputs:
    """What :func:`placement.cli._files.check_heldout` reads of a plan: the planning inputs."""

    def __init__(self, inputs: list[str]) -> None:
        self.settings = {"inputs": inputs}


def heldout_notes(traces: Sequence[str], held: Sequence[TraceArg], *,
                  allow_overlap: bool) -> list[str]:
    """Refuse held-out traces that share windows with the planning traces (the same check as
    ``placement validate`` and ``compare``), unless ``allow_overlap``: then notes."""
    inputs = [t if t.startswith("bundled:") else _resolved(t) for t in traces]
    return check_heldout(_Inputs(inputs), "every plan of the sweep", held,  # type: ignore[arg-type]
                         allow_overlap=allow_overlap)


def _resolved(text: str) -> str:
    base, spec = split_spec(text)
    return str(Path(base).resolve()) + (f"#{spec}" if spec is not None else "")


@main.command("sweep", short_help="Sweep redundant experts and cluster shapes: tokens/s and $.")
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@click.option("--heldout", "heldout", multiple=True, required=True, metavar="TRACE",
              help="Held-out trace the plans are judged on (repeatable; TRACE#SPEC keeps some "
                   "windows). Never the data the plans are made from.")
@click.option("--allow-overlap", is_flag=True,
              help="Accept held-out traces that share windows with the planning traces "
                   "(in-sample figures, for diagnosis).")
@click.option("--redundant", type=IntList(0), default="0,8,16,32,64", show_default=True,
              help="Redundant experts P - E to try.")
@click.option("--nodes", type=IntList(1), default="2,4,8", show_default=True,
              help="Node counts to try.")
@click.option("--gpus-per-node", type=IntList(1), default="8", show_default=True,
              help="GPUs per node to try.")
@click.option("--gpu", "gpu_name", default="h800", show_default=True, metavar="NAME",
              help=f"GPU: {', '.join(GPU_PRESETS)}.")
@model_option("the cost model (weights, KV cache, step time)",
              "guessed from the traces' model name and expert count")
@click.option("--phase", type=click.Choice(PHASES), default="decode", show_default=True,
              help="What the deployment serves.")
@click.option("--context", type=click.FloatRange(min=1), default=4096, show_default=True,
              help="Tokens per sequence: decode, the KV cache each sequence attends to; "
                   "prefill, the prompt length.")
@click.option("--min-user-speed", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="TOK/S", help="Decode: tokens/s every sequence must get (caps the batch).")
@click.option("--cache-hit-rate", type=click.FloatRange(min=0, max=1, max_open=True),
              default=0.0, show_default=True,
              help="Prefill: share of prompt tokens served from the prefix cache.")
@click.option("--prefill-tokens", type=click.IntRange(min=1), default=None,
              help="Prefill: new tokens per GPU per step [default: 16384].")
@click.option("--runtime-reserve-gb", type=click.FloatRange(min=0), default=None,
              help="GPU memory kept for activations and buffers [default: 10 %].")
@click.option("--overlap", type=click.Choice(STEP_OVERLAPS), default="two-batch",
              show_default=True, help="Compute/communication overlap of the step.")
@click.option("--methods", type=NameList(), default="optimizer,eplb", show_default=True,
              help=f"Planners to compare: {', '.join(METHODS)}.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds for each point's solve.")
@click.option("--balance-tolerance", type=click.FloatRange(min=0.0), default=0.05,
              show_default=True, help="The optimizer's balance tolerance (token-level traces).")
@click.option("--seed", type=int, default=0, show_default=True, help="Solver seed.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Points solved at once, in separate processes.")
@click.option("--price", type=click.FloatRange(min=0), default=None,
              help="$ per GPU-hour [default: the GPU's].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              callback=directory_output("sweep.md, sweep.json, the figures and the best plan"),
              help="Directory for sweep.md, sweep.json, the figures and the best plan.")
def sweep_cmd(traces: tuple[str, ...], heldout: tuple[str, ...], allow_overlap: bool,
              redundant: tuple[int, ...],
              nodes: tuple[int, ...], gpus_per_node: tuple[int, ...], gpu_name: str,
              model_name: str | None, phase: str, context: float, min_user_speed: float | None,
              cache_hit_rate: float, prefill_tokens: int | None,
              runtime_reserve_gb: float | None, overlap: str, methods: tuple[str, ...],
              time_limit: float, balance_tolerance: float, seed: int, jobs: int,
              price: float | None, as_json: bool, out_dir: str) -> None:
    """Plan every (cluster shape, redundant experts) point from TRACEs with the optimizer and
    EPLB, judge the plans on --heldout traces, and cost them: imbalance, cross-node sends,
    KV cache left, feasible batch, predicted tokens/s and $ per million tokens.

    \b
    placement sweep decode_a.json decode_b.json --heldout decode_c.json \\
        --redundant 0,32,64 --nodes 2,4,8 --gpu h800 --model deepseek-v3 -o sweep/
    placement sweep trace.npz#first-half --heldout trace.npz#second-half \\
        --phase prefill --context 4096 --gpu h200 -o sweep/
    """
    # 1. what the user asked for, checked before any work
    gpu = gpu_preset(gpu_name)
    if phase == "decode" and (cache_hit_rate or prefill_tokens is not None):
        raise InputError("--cache-hit-rate and --prefill-tokens apply to --phase prefill.")
    if phase == "prefill" and min_user_speed is not None:
        raise InputError("--min-user-speed applies to --phase decode.")
    workload = Workload(phase, context=context,
                        batch=prefill_tokens if phase == "prefill" else None,
                        min_tokens_per_s_per_user=min_user_speed,
                        cache_hit_rate=cache_hit_rate, overlap=overlap,
                        runtime_reserve_gb=runtime_reserve_gb)
    plan_on = [load_trace_arg(t).trace for t in traces]
    held = [load_trace_arg(h) for h in heldout]
    notes = heldout_notes(traces, held, allow_overlap=allow_overlap)
    judge_on = [h.trace for h in held]
    check_one_model([*zip(traces, plan_on, strict=True), *((h.text, h.trace) for h in held)])
    model = resolve_model(model_name, None, plan_on[0], trace_label=traces[0])
    if model is None:
        raise InputError(
            f"model unknown: give --model NAME (one of: {', '.join(sorted(MODEL_PRESETS))})."
        )
    options = SweepOptions(
        redundant=redundant, nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu,
        methods=methods, workload=workload, jobs=jobs, usd_per_gpu_hour=price,
        solve=SolveOptions(time_limit=time_limit, seed=seed, jobs=1,
                           balance_tolerance=balance_tolerance),
    )
    # 2. the sweep
    with progress_bar("sweeping", "points") as progress:
        result = sweep(plan_on, judge_on, model, options, planned_from=[Path(t).name for t in traces],
                       heldout_names=[Path(h).name for h in heldout], progress=progress)
    inputs = [t if t.startswith("bundled:") else _resolved(t) for t in traces]
    paths = write_sweep(result, out_dir, plan_settings={"inputs": inputs})
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "output": out_dir,
                               "files": [p.name for p in paths]}, separators=(",", ":")))
        return
    click.echo(format_sweep(result))
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {len(paths)} files to {out_dir}: " + ", ".join(p.name for p in paths))
