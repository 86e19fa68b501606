"""``placement solve``: traces in, a plan out (the optimizer or a baseline)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from placement.cli._app import (
    SectionedCommand,
    backend_from_options,
    backend_options,
    cluster_from_options,
    cluster_options,
    main,
    model_option,
    progress_bar,
)
from placement.cli._plan_args import check_one_model
from placement.cluster import Cluster, MemoryModel
from placement.errors import InputError
from placement.hardware import GPU_PRESETS, gpu_preset
from placement.models import MODEL_PRESETS, guess_model, model_preset
from placement.moe_time import OVERLAPS
from placement.routing_traces.trace import Trace
from placement.solver import (
    METHODS,
    OBJECTIVES,
    SolveOptions,
    SolveResult,
    format_solve_result,
    solve,
)
from placement.solver.problem import ROBUST_MODES, ProblemData
from placement.solver.registry import REGISTRY
from placement.solver.result import bounded_layers

if TYPE_CHECKING:
    from placement.routing_traces.sharded import ShardedTrace

__all__ = ["format_saved", "format_solve_summary", "format_step_time", "memory_cluster",
           "solve_cmd", "solve_summary_dict"]


def _load(path: str) -> Trace | ShardedTrace:
    """A trace argument: a sharded trace directory is opened (read shard by shard later),
    anything else read whole."""
    from placement.routing_traces.sharded import open_trace_source

    return open_trace_source(path)


def _problem(loaded: list[Trace | ShardedTrace], cluster: Cluster, sample_tokens: int | None,
             seed: int, backend: Any) -> tuple[ProblemData, dict[str, int] | None]:
    """The problem, from the traces as they are, or from their statistics (one streaming pass,
    :func:`~placement.routing_traces.statistics.gather_statistics`) when a trace is sharded or
    ``--sample-tokens`` is given; and then what the statistics hold (for the plan's
    settings)."""
    from placement.routing_traces.sharded import ShardedTrace
    from placement.routing_traces.statistics import DEFAULT_SAMPLE_TOKENS, gather_statistics

    if sample_tokens is None and not any(isinstance(t, ShardedTrace) for t in loaded):
        return ProblemData.from_traces([t for t in loaded if isinstance(t, Trace)],
                                       cluster), None
    n = sample_tokens if sample_tokens is not None else DEFAULT_SAMPLE_TOKENS
    with progress_bar("gathering statistics", "pieces") as progress:
        stats = [gather_statistics(t, backend, sample_tokens=n, seed=seed, coactivation=False,
                                   progress=progress) for t in loaded]
    info = {"sample_tokens": n, "sampled": sum(s.num_sampled for s in stats),
            "tokens": sum(s.num_tokens or 0 for s in stats)}
    return ProblemData.from_statistics(stats, cluster), info


def _mean(v: list[float] | None) -> float | None:
    return None if not v else float(np.mean(v))


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def solve_summary_dict(result: SolveResult, output: str | None = None) -> dict[str, Any]:
    """The figures of a solve as a JSON-ready dict: means over layers under ``plan`` and
    ``reference`` (figure names in snake_case, as ``placement validate --json`` names them), per
    layer under ``per_layer``."""
    p = result.plan
    gap = p.gap
    rows = bounded_layers(p)
    s = p.settings
    out: dict[str, Any] = {
        "method": p.method,
        "objective": s.get("objective"),
        "model": s.get("model"),
        "overlap": s.get("overlap"),
        "status": p.status,
        "wall_time": p.wall_time,
        "cluster": p.cluster.shape,
        "num_layers": p.num_layers,
        "num_experts": p.num_experts,
        "plan": {k: _mean(v) for k, v in p.objectives.items()},
        "reference_method": result.reference_method if result.reference else None,
        "reference": {k: _mean(v) for k, v in result.reference.items()},
        "predicted_time_ratio": result.time_ratio(),
        "objective_ratio": result.objective_ratio(),
        "fell_back_layers": result.fell_back,
        "guard_fell_back_layers": result.guard_fell_back,
        "time_limit_layers": result.cut_layers,
        "hardware": s.get("hardware"),
        "bound_of": s.get("bound_of"),
        "bounded_layers": len(rows),
        "lower_bound": None if not rows or p.lower_bound is None
        else _mean([p.lower_bound[i] for i in rows]),
        "gap": None if not rows or gap is None
        else _finite(float(np.nanmean([gap[i] for i in rows]))),
        "per_layer": {
            "layer_ids": p.layer_ids.tolist(),
            "plan": p.objectives,
            "reference": result.reference,
            "lower_bound": p.lower_bound,
            "gap": gap,
            "choice": s.get("choice"),
            "drift": s.get("drift"),
            "kept_kind": s.get("drift_kept_kind"),
            "drift_expected_time_ratio": s.get("drift_expected_time_ratio"),
            "drift_worst_time_ratio": s.get("drift_worst_time_ratio"),
            "drift_expected_imbalance_ratio": s.get("drift_expected_imbalance_ratio"),
            "drift_sends_ratio": s.get("drift_sends_ratio"),
        },
        "drift": s.get("drift_summary"),
        "messages": list(result.messages),
    }
    if output is not None:
        out["output"] = output
    return out


def memory_cluster(
    cluster_kwargs: dict[str, Any], traces: list[Trace | ShardedTrace], *, gpu_name: str | None,
    model_name: str | None, kv_reserve_gb: float | None, runtime_reserve_gb: float | None,
) -> tuple[Cluster, MemoryModel | None]:
    """The cluster from the cluster options, its slots per GPU from the GPU's memory when
    ``--gpu`` is given (``--model`` or the traces' model, ``--kv-reserve-gb``). ``--model``
    alone is fine: it is also the model shape of the optimizer's predicted time."""
    if gpu_name is None:
        for flag, v in (("--kv-reserve-gb", kv_reserve_gb),
                        ("--runtime-reserve-gb", runtime_reserve_gb)):
            if v is not None:
                raise InputError(f"{flag} sets the memory budget: give --gpu NAME with it.")
        return cluster_from_options(cluster_kwargs), None
    gpu = gpu_preset(gpu_name)
    if model_name is not None:
        model = model_preset(model_name)
    else:
        first = traces[0]
        guessed = guess_model(first.model, num_experts=first.num_experts, top_k=first.top_k)
        if guessed is None:
            raise InputError(
                "--gpu needs the model to size the budget: give --model NAME (one of: "
                f"{', '.join(sorted(MODEL_PRESETS))})."
            )
        model = guessed
    if model.num_experts != traces[0].num_experts:
        raise InputError(f"model {model.name} has {model.num_experts} experts but the traces "
                         f"have {traces[0].num_experts}.")
    if kv_reserve_gb is None:
        raise InputError("--gpu needs --kv-reserve-gb GB: the memory per GPU to keep for the KV "
                         "cache (what is left after it goes to expert slots).")
    mem = MemoryModel.for_model(gpu, model, kv_reserve_gb=kv_reserve_gb,
                                runtime_reserve_gb=runtime_reserve_gb)
    from_file = any(cluster_kwargs.get(k) is not None for k in ("cluster_file", "cluster_preset"))
    if cluster_kwargs.get("slots_per_gpu") is None:
        cluster_kwargs["slots_per_gpu"] = mem.max_slots_per_gpu()
    base = cluster_from_options(cluster_kwargs)
    if from_file:
        return dataclasses.replace(base, memory=mem, gpu=gpu.name), mem
    return Cluster.for_gpu(gpu, base.num_nodes, base.gpus_per_node, base.slots_per_gpu,
                           memory=mem), mem


def format_memory(mem: MemoryModel, cluster: Cluster) -> str:
    """The memory line(s) of ``placement solve --gpu``: the arithmetic, and the slots used."""
    line = mem.explain()
    fit = mem.max_slots_per_gpu()
    if cluster.slots_per_gpu < fit:
        line += f"; using {cluster.slots_per_gpu} (--slots-per-gpu)"
    return line


def format_saved(output: str) -> str:
    """The line that says where the plan went."""
    return f"saved plan to {output}"


def format_step_time(result: SolveResult, tokens: np.ndarray | None) -> str | None:
    """``predicted MoE layer time per step of 4,096 tokens per GPU: 3.07 ms, eplb 3.17 ms
    (the table's is for all 24,576 planning tokens per layer, a total)``: the in-sample
    predicted time, which is for the planning traces' ``tokens [L]`` (a whole workload for a
    counts trace), restated for one step (:func:`placement.plan_eval.per_step_time`); None
    without a predicted time or tokens."""
    from placement.plan_eval import STEP_TOKENS_PER_GPU, per_step_time

    key = "predicted_moe_layer_time"
    mine = result.plan.objectives.get(key)
    if mine is None or tokens is None or not np.any(tokens > 0):
        return None
    G = result.plan.cluster.num_gpus
    from placement.plan_diff import time_text

    text = (f"predicted MoE layer time per step of {STEP_TOKENS_PER_GPU:,} tokens per GPU: "
            f"{time_text(float(np.mean(per_step_time(np.asarray(mine), tokens, G))))}")
    theirs = result.reference.get(key)
    if theirs is not None:
        text += (f", {result.reference_method} "
                 f"{time_text(float(np.mean(per_step_time(np.asarray(theirs), tokens, G))))}")
    return (text + f" (the table's is for all {float(np.mean(tokens)):,.0f} planning tokens per "
            "layer, a total)")


def format_solve_summary(result: SolveResult, output: str | None = None, *,
                         per_layer: bool = False, tokens: np.ndarray | None = None) -> str:
    """The text a user reads after ``placement solve`` (``tokens [L]``: the planning tokens
    per layer, for the per-step time, :func:`format_step_time`)."""
    text = format_solve_result(result, per_layer=per_layer)
    step = format_step_time(result, tokens)
    if step is not None:
        text += "\n" + step
    if output is not None:
        text += "\n" + format_saved(output)
    return text


_METHOD_HELP = "; ".join(f"{m.name}: {m.description}" for m in REGISTRY)


SOLVE_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Cluster", ("cluster_file", "cluster_preset", "num_nodes", "gpus_per_node",
                 "slots_per_gpu")),
    ("Output", ("output", "per_layer", "as_json")),
    ("Objective", ("method", "objective", "model_name", "overlap", "balance_tolerance",
                   "num_groups", "max_nodes_per_token", "robust", "dispatch")),
    ("Memory (slots per GPU from its memory)", ("gpu_name", "kv_reserve_gb",
                                                "runtime_reserve_gb")),
    ("Search", ("time_limit", "seed", "sample_tokens", "jobs", "use_ray", "ray_address",
                "workers")),
)
"""``placement solve --help``'s sections: the common path (cluster, output) first."""


@main.command("solve", cls=SectionedCommand, sections=SOLVE_SECTIONS,
              short_help="Plan expert placement from traces.")
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@cluster_options
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True,
              metavar="NAME",
              help=f"The optimizer, or a baseline ({_METHOD_HELP}).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="time", show_default=True,
              metavar="NAME",
              help="What the optimizer minimises per layer: time (the predicted MoE layer "
                   "time), balance (the peak GPU load) or traffic (cross-node sends within "
                   "--balance-tolerance).")
@model_option("the shape of the predicted time and, with --gpu, of the weights",
              "guessed from the traces, else deepseek-v3's shape")
@click.option("--overlap", type=click.Choice(OVERLAPS), default="two-batch", show_default=True,
              help="How the predicted time overlaps communication with compute.")
@click.option("--groups", "num_groups", type=click.IntRange(min=1), default=None, metavar="N",
              help="Expert groups (EPLB's hierarchical policy) [default: 8 when the experts "
                   "divide by 8, else 1].")
@click.option("--balance-tolerance", type=click.FloatRange(min=0.0), default=None, metavar="X",
              help="Peak GPU load (a fraction of the balance-only plan's) the optimizer may "
                   "give up for less cross-node traffic [default: 0.05 for traffic; time never "
                   "balances worse than EPLB or the balance-only plan].")
@click.option("--max-nodes-per-token", type=click.IntRange(min=1), default=None, metavar="M",
              help="Node-limited routing: every expert group on one node, so a token reaches "
                   "at most M nodes (DeepSeek-V3: 4).")
@click.option("--time-limit", type=click.FloatRange(min=0.0, min_open=True), default=600.0,
              show_default=True, metavar="S",
              help="Safety net, seconds for the whole solve (not per layer); the search is "
                   "bounded by work, and layers it cuts keep their best placement so far.")
@backend_options("Layers solved in parallel [default: CPU cores]; the plan does not depend "
                 "on it.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N",
              help="Seed; same traces and seed, same plan.")
@click.option("--sample-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="Plan from one streaming pass: exact counts, and about N sampled tokens for "
                   "traffic [default: 65,536 for sharded traces, else every token].")
@click.option("--dispatch", type=click.Choice(("static", "lp")), default="static", metavar="RULE",
              show_default=True,
              help="The engine's dispatch rule the plan is for (lp: SGLang's "
                   "--ep-dispatch-algorithm lp); recorded in the plan.")
@click.option("--robust", type=click.Choice(ROBUST_MODES), default="max", show_default=True,
              help="How windows and traces combine: worst case or mean.")
@click.option("--gpu", "gpu_name", default=None, metavar="NAME",
              help=f"Slots per GPU from this GPU's memory ({', '.join(GPU_PRESETS)}) instead "
                   "of --slots-per-gpu.")
@click.option("--kv-reserve-gb", type=click.FloatRange(min=0), default=None, metavar="GB",
              help="With --gpu: GB per GPU kept for the KV cache.")
@click.option("--runtime-reserve-gb", type=click.FloatRange(min=0), default=None, metavar="GB",
              help="With --gpu: GB per GPU kept for activations and buffers [default: 10 %].")
@click.option("--per-layer", is_flag=True, help="Add per-layer figures.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Plan file to write (JSON).")
def solve_cmd(traces: tuple[str, ...], method: str, objective: str, model_name: str | None,
              overlap: str, num_groups: int | None, balance_tolerance: float | None,
              max_nodes_per_token: int | None, time_limit: float, seed: int,
              sample_tokens: int | None,
              robust: str, gpu_name: str | None, kv_reserve_gb: float | None,
              runtime_reserve_gb: float | None, per_layer: bool, as_json: bool, output: str,
              dispatch: str = "static", **cluster_kwargs: Any) -> None:
    """Plan where every expert's replicas live, from one or more TRACEs.

    Every window of every TRACE is a scenario; the plan is made to hold up on all of them
    (--robust max: the worst one). Token-level traces let the optimizer cut cross-node traffic
    as well as balance load; aggregated counts give balance only. Every layer is at least as
    good as DeepSeek's EPLB on the objective (in-sample: where the search does not beat EPLB,
    the layer is EPLB's), and the summary compares the plan with EPLB on the same input.

    \b
    placement solve prefill_a.json prefill_b.json --preset deepseek-prefill -o plan.json
    placement solve trace.npz --nodes 2 --gpus-per-node 4 --slots-per-gpu 10 -o plan.json
    placement solve bundled:deepseek-v3 --preset deepseek-prefill --objective balance -o p.json
    placement solve trace.json --nodes 4 --gpus-per-node 8 --gpu h200 --model deepseek-v3 \\
        --kv-reserve-gb 40 -o plan.json
    """
    backend, jobs = backend_from_options(cluster_kwargs)
    memory_args: dict[str, Any] = dict(gpu_name=gpu_name, model_name=model_name,
                                       kv_reserve_gb=kv_reserve_gb,
                                       runtime_reserve_gb=runtime_reserve_gb)
    mem: MemoryModel | None = None
    if gpu_name is None:
        cluster, mem = memory_cluster(cluster_kwargs, [], **memory_args)
    kwargs: dict[str, Any] = dict(method=method, objective=objective, model=model_name,
                                  overlap=overlap, num_groups=num_groups,
                                  balance_tolerance=balance_tolerance,
                                  max_nodes_per_token=max_nodes_per_token,
                                  time_limit=time_limit, seed=seed, robust=robust,
                                  backend=backend, dispatch=dispatch)
    if jobs is not None:
        kwargs["jobs"] = jobs
    options = SolveOptions(**kwargs)
    loaded = [_load(t) for t in traces]
    check_one_model(list(zip(traces, loaded, strict=True)))
    if gpu_name is not None:
        cluster, mem = memory_cluster(cluster_kwargs, loaded, **memory_args)
        if not as_json:
            assert mem is not None
            click.echo(format_memory(mem, cluster))
    problem, stats_info = _problem(loaded, cluster, sample_tokens, seed, backend)
    if stats_info is not None and stats_info["tokens"] and not as_json:
        click.echo(f"planning from statistics: exact counts; for traffic a sample of "
                   f"{stats_info['sampled']:,} of {stats_info['tokens']:,} tokens "
                   f"(--sample-tokens {stats_info['sample_tokens']:,})")
    with progress_bar(f"solving ({method})", "layers") as progress:
        result = solve(problem, options=options, progress=progress)
    inputs = [str(Path(t).resolve()) if not t.startswith("bundled:") else t for t in traces]
    settings = {**result.plan.settings, "inputs": inputs}
    if stats_info is not None:
        settings["statistics"] = stats_info
    plan = dataclasses.replace(result.plan, settings=settings)
    result = dataclasses.replace(result, plan=plan)
    plan.save(output)
    if as_json:
        summary = solve_summary_dict(result, output)
        if mem is not None:
            summary["memory"] = {**mem.to_dict(), "slots_fit": mem.max_slots_per_gpu(),
                                 "slots_per_gpu": cluster.slots_per_gpu,
                                 "explain": mem.explain()}
        click.echo(json.dumps(summary, separators=(",", ":")))
    else:
        name = result.plan.settings.get("model")
        k = problem.top_k or (MODEL_PRESETS[name].top_k if name in MODEL_PRESETS else None)
        tokens = problem.scenario_counts.sum(axis=(0, 2)) / k if k else None
        click.echo(format_solve_summary(result, output, per_layer=per_layer, tokens=tokens))
