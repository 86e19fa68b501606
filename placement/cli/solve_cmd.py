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
    backend_from_options,
    backend_options,
    cluster_from_options,
    cluster_options,
    main,
    progress_bar,
)
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

__all__ = ["format_saved", "format_solve_summary", "memory_cluster", "solve_cmd",
           "solve_summary_dict"]


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


def format_solve_summary(result: SolveResult, output: str | None = None, *,
                         per_layer: bool = False) -> str:
    """The text a user reads after ``placement solve``."""
    text = format_solve_result(result, per_layer=per_layer)
    if output is not None:
        text += "\n" + format_saved(output)
    return text


_METHOD_HELP = "; ".join(f"{m.name}: {m.description}" for m in REGISTRY)


@main.command("solve", short_help="Plan expert placement from traces.")
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@cluster_options
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True,
              help=f"The optimizer, or a baseline ({_METHOD_HELP}).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="time", show_default=True,
              help="What the optimizer minimises per layer: the predicted MoE layer time "
                   "(expert compute of the slowest GPU vs the all-to-all over NVLink and the "
                   "network, for the cluster's bandwidths and the model's shape), peak GPU "
                   "load, or cross-node sends within --balance-tolerance of the best balance.")
@click.option("--model", "model_name", default=None, metavar="NAME",
              help="Model shape: of the optimizer's predicted time, and (with --gpu) whose "
                   f"weights fill the memory budget ({', '.join(sorted(MODEL_PRESETS))}) "
                   "[default: guessed from the traces' model name, expert count and top-k; "
                   "else deepseek-v3's for the predicted time].")
@click.option("--overlap", type=click.Choice(OVERLAPS), default="two-batch", show_default=True,
              help="How the predicted time overlaps communication with compute.")
@click.option("--groups", "num_groups", type=click.IntRange(min=1), default=None,
              help="Expert groups (EPLB's hierarchical policy; node-limited routing). "
                   "Default 8 when the experts divide by 8, else 1.")
@click.option("--balance-tolerance", type=click.FloatRange(min=0.0), default=None,
              help="Peak GPU load the optimizer may give up for less cross-node traffic, as a "
                   "fraction of the balance-only plan's (token-level traces) [default: "
                   "0.05 for --objective traffic; for time, never balance worse than the "
                   "balance-only plan or EPLB's].")
@click.option("--max-nodes-per-token", type=click.IntRange(min=1), default=None,
              help="Node-limited routing: keep every expert group on one node, so a token "
                   "routed to at most M groups reaches at most M nodes (DeepSeek-V3: 4).")
@click.option("--time-limit", type=click.FloatRange(min=0.0, min_open=True), default=600.0,
              show_default=True,
              help="Safety net, seconds: the search is bounded by work, not time; layers still "
                   "running when it fires keep the best placement found (and the plan may then "
                   "differ between machines).")
@backend_options("Layers solved in parallel [default: CPU cores]; the plan does not depend "
                 "on it.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed; same traces and seed, same plan.")
@click.option("--sample-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="Plan from statistics gathered in one streaming pass: exact counts and a "
                   "deterministic sample of about N tokens (spread over the windows) for "
                   "traffic [default for sharded traces: 65,536; in-memory traces: every "
                   "token].")
@click.option("--robust", type=click.Choice(ROBUST_MODES), default="max", show_default=True,
              help="How windows and traces combine: worst case or mean.")
@click.option("--gpu", "gpu_name", default=None, metavar="NAME",
              help=f"Size the slots per GPU from this GPU's memory ({', '.join(GPU_PRESETS)}) "
                   "instead of --slots-per-gpu (with --kv-reserve-gb).")
@click.option("--kv-reserve-gb", type=click.FloatRange(min=0), default=None,
              help="With --gpu: GB per GPU kept for the KV cache.")
@click.option("--runtime-reserve-gb", type=click.FloatRange(min=0), default=None,
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
              **cluster_kwargs: Any) -> None:
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
                                  backend=backend)
    if jobs is not None:
        kwargs["jobs"] = jobs
    options = SolveOptions(**kwargs)
    loaded = [_load(t) for t in traces]
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
        click.echo(format_solve_summary(result, output, per_layer=per_layer))
