"""``placement validate``: replay a held-out trace against a plan."""

from __future__ import annotations

from typing import Any

import click

from placement.cli._app import backend_from_options, backend_options, main, model_option, progress_bar
from placement.cli._files import check_heldout, load_plan_arg, load_trace_arg, resolve_model
from placement.errors import InputError
from placement.models import ModelShape
from placement.validation import DEVICES, RULES, ValidationResult, format_validation

__all__ = ["format_validate_output", "validate_cmd"]


def format_validate_output(result: ValidationResult, model: ModelShape | None) -> str:
    """The summary, plus which model shape gave the bytes."""
    text = format_validation(result)
    if model is not None and result.has_traffic:
        text += f"\nmodel shape: {model.name} (bytes use hidden {model.hidden_size})"
    return text


@main.command("validate", short_help="Replay a held-out trace against a plan.")
@click.argument("plan_file", metavar="PLAN")
@click.argument("trace_source", metavar="TRACE")
@click.option("--dispatch", type=click.Choice(RULES), default="static", show_default=True,
              help="How a token picks a replica: the engines' static rule, an even split over "
                   "replicas (expected values), the plan's own dispatch table, SGLang's exact "
                   "static table, SGLang's per-token dynamic draw, or SGLang's lp (LPLB: one LP "
                   "per batch and layer).")
@click.option("--batch-tokens", type=click.IntRange(min=1), default=None,
              help="--dispatch lp: tokens per batch [default: 4096; counts: each window].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="--dispatch dynamic: seed of the per-token draws.")
@click.option("--allow-overlap", is_flag=True,
              help="Accept a TRACE that shares windows with the data PLAN was made from "
                   "(in-sample figures, for diagnosis).")
@click.option("--chunk-tokens", type=click.IntRange(min=1), default=None,
              help="Tokens per chunk (memory follows the chunk, not the trace) "
                   "[default: about 4 million assignments].")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where the replay runs (auto: CUDA when available).")
@model_option("the bytes of the all-to-all", "guessed from the plan's and trace's model name "
              "and expert count")
@click.option("--hidden-size", type=click.IntRange(min=1), default=None,
              help="Hidden size for bytes (overrides --model's).")
@click.option("--bytes-per-element", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Bytes per element in dispatch [default: 1, FP8].")
@click.option("--combine-bytes-per-element", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Bytes per element in combine [default: 2, BF16].")
@backend_options("Shards of a sharded TRACE replayed in parallel on this machine's processes "
                 "[default: 1; an in-memory TRACE is replayed in this process].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def validate_cmd(plan_file: str, trace_source: str, dispatch: str, allow_overlap: bool,
                 chunk_tokens: int | None, device: str, model_name: str | None,
                 hidden_size: int | None, bytes_per_element: float | None,
                 combine_bytes_per_element: float | None, as_json: bool,
                 batch_tokens: int | None, seed: int, **backend_kw: Any) -> None:
    """Replay TRACE (held out: not the data PLAN was made from) against PLAN.

    TRACE may be a sharded trace directory (placement trace convert --sharded): it is
    replayed shard by shard, memory following one shard, not the trace; --jobs N or --ray
    replays the shards in parallel (the figures are the same).

    Prints per-layer balance (max/mean tokens per GPU) and, for token-level traces, the
    all-to-all traffic: cross-node sends per token (distinct remote nodes, DeepEP normal
    mode), cross-node copies per token (DeepEP low-latency mode) and bytes. Aggregated traces
    give balance only. A TRACE that shares windows with the data PLAN was made from (recorded
    by placement solve) is refused unless --allow-overlap.

    \b
    placement validate plan.json heldout.npz
    placement validate plan.json trace.npz#second-half --dispatch even --json
    """
    from placement.parallel import backend_for_jobs
    from placement.validation import replay

    backend, jobs = backend_from_options(backend_kw)
    if jobs is not None:
        backend = backend_for_jobs(jobs, jobs)
    plan = load_plan_arg(plan_file, trace_arg=trace_source, command="validate")
    held = load_trace_arg(trace_source, stream=True)
    notes = check_heldout(plan, plan_file, [held], allow_overlap=allow_overlap)
    trace = held.trace
    model = resolve_model(model_name, plan, trace, plan_label=plan_file, trace_label=trace_source)
    hidden = hidden_size if hidden_size is not None else (model.hidden_size if model else None)
    bd = bytes_per_element if bytes_per_element is not None else (
        model.dispatch_bytes_per_element if model else 1.0)
    bc = combine_bytes_per_element if combine_bytes_per_element is not None else (
        model.combine_bytes_per_element if model else 2.0)
    if hidden_size is not None:
        model = None  # bytes come from the flags, not a preset
    if trace.is_token_level and hidden is None and (bytes_per_element or combine_bytes_per_element):
        raise InputError("--bytes-per-element needs --hidden-size (or --model) for bytes.")
    with progress_bar("replaying", "tokens") as progress:
        result = replay(plan, trace, dispatch=dispatch, chunk_tokens=chunk_tokens,
                        device=device, progress=progress, hidden_size=hidden,
                        dispatch_bytes_per_element=bd, combine_bytes_per_element=bc,
                        plan_name=plan_file, trace_name=trace_source, backend=backend,
                        batch_tokens=batch_tokens, seed=seed)
    if notes:
        import dataclasses

        result = dataclasses.replace(result, messages=(*result.messages, *notes))
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(format_validate_output(result, model))
