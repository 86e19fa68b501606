"""``placement validate``: replay a held-out trace against a plan."""

from __future__ import annotations

import click

from placement.cli._app import main, progress_bar
from placement.cost import MODEL_PRESETS, ModelShape, guess_model, model_preset
from placement.errors import InputError
from placement.plan import Plan
from placement.routing_traces.trace import Trace
from placement.validation import DEVICES, RULES, ValidationResult, format_validation, replay

__all__ = ["format_validate_output", "load_trace_arg", "resolve_model", "validate_cmd"]


def load_trace_arg(source: str) -> Trace:
    """A trace from a path (any format :func:`load_trace` reads)."""
    from placement.routing_traces import load_trace

    return load_trace(source)


def resolve_model(name: str | None, plan: Plan | None, trace: Trace | None) -> ModelShape | None:
    """``--model NAME``, else a guess from the plan's or trace's model name and expert count."""
    if name is not None:
        return model_preset(name)
    names = [plan.model if plan else None, trace.model if trace else None]
    E = plan.num_experts if plan is not None else (trace.num_experts if trace else None)
    k = trace.top_k if trace is not None else None
    return guess_model(*names, num_experts=E, top_k=k)


def format_validate_output(result: ValidationResult, model: ModelShape | None) -> str:
    """The summary, plus which model shape gave the bytes."""
    text = format_validation(result)
    if model is not None and result.has_traffic:
        text += f"\nmodel shape: {model.name} (bytes use hidden {model.hidden_size})"
    return text


@main.command("validate", short_help="Replay a held-out trace against a plan.")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("trace_source", metavar="TRACE")
@click.option("--dispatch", type=click.Choice(RULES), default="static", show_default=True,
              help="How a token picks a replica: the engines' static rule, an even split over "
                   "replicas (expected values), or the plan's own dispatch table.")
@click.option("--chunk-tokens", type=click.IntRange(min=1), default=None,
              help="Tokens per chunk (memory follows the chunk, not the trace) "
                   "[default: about 4 million assignments].")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where the replay runs (auto: CUDA when available).")
@click.option("--model", "model_name", type=click.Choice(sorted(MODEL_PRESETS)), default=None,
              help="Model shape for bytes [default: guessed from the plan/trace].")
@click.option("--hidden-size", type=click.IntRange(min=1), default=None,
              help="Hidden size for bytes (overrides --model's).")
@click.option("--bytes-per-element", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Bytes per element in dispatch [default: 1, FP8].")
@click.option("--combine-bytes-per-element", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Bytes per element in combine [default: 2, BF16].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def validate_cmd(plan_file: str, trace_source: str, dispatch: str, chunk_tokens: int | None,
                 device: str, model_name: str | None, hidden_size: int | None,
                 bytes_per_element: float | None, combine_bytes_per_element: float | None,
                 as_json: bool) -> None:
    """Replay TRACE (held out: not the data PLAN was made from) against PLAN.

    Prints per-layer balance (max/mean tokens per GPU) and, for token-level traces, the
    all-to-all traffic: cross-node sends per token (distinct remote nodes, DeepEP normal
    mode), cross-node copies per token (DeepEP low-latency mode) and bytes. Aggregated traces
    give balance only.

    \b
    placement validate plan.json heldout.npz
    placement validate plan.json decode_in1000out1000.json --dispatch even --json
    """
    plan = Plan.load(plan_file)
    trace = load_trace_arg(trace_source)
    model = resolve_model(model_name, plan, trace)
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
                        plan_name=plan_file, trace_name=trace_source)
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(format_validate_output(result, model))
