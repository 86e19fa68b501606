"""``placement trace``: inspect, synthesize, convert and list traces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from placement.cli._app import backend_from_options, backend_options, main, progress_bar
from placement.routing_traces.native import write_native
from placement.routing_traces.readers import bundled_trace_path, bundled_traces, load_trace
from placement.routing_traces.sharded import DEFAULT_SHARD_TOKENS, ShardedTrace
from placement.routing_traces.stats import describe_trace, format_trace_stats, inspect_trace
from placement.routing_traces.synth import PRESETS, make_bundled, synthesize
from placement.routing_traces.trace import Trace

__all__ = ["trace"]

def _load(sources: tuple[str, ...]) -> Trace:
    return load_trace(sources[0] if len(sources) == 1 else list(sources))


@main.group("trace", short_help="Inspect, synthesize and convert routing traces.")
def trace() -> None:
    """Inspect, synthesize and convert routing traces."""


@trace.command("inspect")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--per-layer", is_flag=True, help="Add a per-layer table.")
@click.option("--no-coactivation", is_flag=True, help="Skip co-activation (faster).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Experts per token, for a counts trace that does not say.")
@backend_options("Shards of a sharded SOURCE read in parallel on this machine's processes "
                 "[default: 1; other sources are read in this process].")
def inspect_cmd(sources: tuple[str, ...], as_json: bool, per_layer: bool,
                no_coactivation: bool, top_k: int | None, **backend_kw: Any) -> None:
    """Shape, per-layer skew, co-activation and drift of a trace.

    SOURCE is a native .npz, an SGLang .json / .pt dump or dump directory, a TensorRT-LLM
    statistics directory, a sharded trace directory (read shard by shard), several files of
    one model (read as windows), or bundled:NAME. A counts trace's top-k comes from the file,
    from activation rates (each layer sums to k), from the model its name points to, or from
    --top-k.

    \b
    placement trace inspect bundled:mixtral
    placement trace inspect prefill_in512.json --per-layer
    placement trace inspect 'trace.npz#0-3' --json --no-coactivation
    placement trace inspect run/ --jobs 4          # a sharded trace directory
    """
    from placement.parallel import backend_for_jobs
    from placement.routing_traces.sharded import open_trace_source

    backend, jobs = backend_from_options(backend_kw)
    if jobs is not None:
        backend = backend_for_jobs(jobs, jobs)
    trace = open_trace_source(sources[0]) if len(sources) == 1 else _load(sources)
    stats = inspect_trace(trace, source=" ".join(sources),
                          coactivation=not no_coactivation, top_k=top_k, backend=backend)
    if as_json:
        click.echo(json.dumps(stats.to_dict(), separators=(",", ":")))
    else:
        click.echo(format_trace_stats(stats, per_layer=per_layer))


@trace.command("synth", short_help="Write a synthetic token-level trace.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="deepseek-v3",
              show_default=True, help="Model shape.")
@click.option("--tokens", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Tokens in all (split evenly over the windows).")
@click.option("--windows", type=click.IntRange(min=1), default=1, show_default=True,
              help="Windows, each with its own topic mix.")
@click.option("--source-ranks", type=click.IntRange(min=0), default=0, show_default=True,
              help="EP ranks the tokens come from (0: not recorded).")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="Keep only the first N MoE layers.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--like", metavar="SOURCE", default=None,
              help="Match each layer's expert popularity to this trace (same expert count).")
@click.option("--skew", type=click.FloatRange(min=0), default=None,
              help="Std of the experts' log-popularity (preset default; unused with --like).")
@click.option("--drift", type=click.FloatRange(min=0), default=None,
              help="Std of each window's log topic-mix change (preset default).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Native .npz file to write.")
def synth_cmd(preset: str, tokens: int, windows: int, source_ranks: int, layers: int | None,
              seed: int, like: str | None, skew: float | None, drift: float | None,
              output: str) -> None:
    """Write a synthetic token-level trace (skew, co-activation, drift, source ranks).

    \b
    placement trace synth -o synth.npz
    placement trace synth --preset mixtral --tokens 8192 --windows 4 --source-ranks 8 \\
        -o mix.npz
    placement trace synth --like prefill_in512.json --windows 2 --source-ranks 32 -o like.npz
    """
    like_trace = load_trace(like) if like is not None else None
    with progress_bar(f"synthesizing {preset}") as progress:
        t = synthesize(preset, num_tokens=tokens, num_windows=windows,
                       num_source_ranks=source_ranks or None, seed=seed, like=like_trace,
                       num_layers=layers, skew=skew, drift=drift, progress=progress)
    write_native(t, output)
    click.echo(f"wrote {output}: {describe_trace(t)}")


@trace.command("convert")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Native .npz file to write, or the directory of a sharded trace "
                   "(--sharded).")
@click.option("--sharded", is_flag=True,
              help="Write a sharded trace directory (manifest.json + memory-mapped shards), "
                   "streaming the input.")
@click.option("--shard-tokens", type=click.IntRange(min=1), default=None,
              help=f"Tokens per shard (implies --sharded) [default: {DEFAULT_SHARD_TOKENS:,}].")
def convert_cmd(sources: tuple[str, ...], output: str, sharded: bool,
                shard_tokens: int | None) -> None:
    """Read any supported trace and write it as a native .npz or a sharded directory.

    SOURCE is a native .npz, an SGLang .json / .pt dump or dump directory, a TensorRT-LLM
    statistics directory, a sharded trace, several files of one model (read as windows), or
    bundled:NAME. A sharded trace is written streaming from a native .npz (chunk by chunk), an
    SGLang per_token directory (one rank file at a time) or another sharded trace; other
    inputs are read whole first.

    \b
    placement trace convert dumps/ -o run.npz
    placement trace convert dumps/ -o run/ --sharded --shard-tokens 1048576
    """
    from placement.routing_traces.convert import convert_trace

    with progress_bar("converting", "tokens") as progress:
        res = convert_trace(list(sources), output, sharded=sharded, shard_tokens=shard_tokens,
                            progress=progress)
    if isinstance(res.trace, ShardedTrace):
        n = len(res.trace.shards)
        click.echo(f"wrote {output}: {describe_trace(res.trace)}; {n} shard{'s' if n != 1 else ''}"
                   f"{' (streamed)' if res.streamed else ''}")
    else:
        click.echo(f"wrote {output}: {describe_trace(res.trace)}")


@trace.command("bundled", short_help="List the shipped synthetic traces.")
def bundled_cmd() -> None:
    """List the synthetic traces shipped with the package (use them as bundled:NAME, with a
    window spec after #).

    \b
    placement trace bundled
    placement solve 'bundled:mixtral#first-half' --nodes 2 --gpus-per-node 2 \\
        --slots-per-gpu 3 -o mix.json
    placement validate mix.json 'bundled:mixtral#second-half'
    """
    for name in bundled_traces():
        t = load_trace(f"bundled:{name}")
        click.echo(f"bundled:{name:<22} {describe_trace(t)}  ({bundled_trace_path(name)})")


@trace.command("make-bundled", short_help="Regenerate the shipped synthetic traces.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Where to write (default: the package's data directory).")
def make_bundled_cmd(out_dir: str | None) -> None:
    """Regenerate the shipped synthetic traces (deterministic: same files every time)."""
    for path in make_bundled(Path(out_dir) if out_dir else None):
        click.echo(f"wrote {path}")
