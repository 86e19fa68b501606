"""``placement capture``: record routing from a local Hugging Face MoE model."""

from __future__ import annotations

from pathlib import Path

import click

from placement._util import format_ids
from placement.cli._app import main, progress_bar
from placement.errors import InputError
from placement.routing_traces.native import write_native
from placement.routing_traces.trace import Trace

__all__ = ["capture_cmd", "format_capture"]


def format_capture(trace: Trace, output: str) -> str:
    """One line about the captured trace."""
    return (
        f"captured {trace.num_tokens} tokens x {trace.num_layers} MoE layers "
        f"(decoder layers {format_ids(trace.layer_ids.tolist())}) x top-{trace.top_k} of "
        f"{trace.num_experts} "
        f"experts in {trace.num_windows} batch(es) -> {output}"
    )


@main.command("capture", short_help="Record routing from a local Hugging Face MoE model.")
@click.argument("model_path", metavar="MODEL_PATH", type=click.Path(file_okay=False),
                required=False)
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False),
              help="Prompts: one per line, or JSONL with \"prompt\"/\"text\".")
@click.option("--text", "text_file", type=click.Path(dir_okay=False),
              help="A text file, cut into --max-length token sequences.")
@click.option("--token-ids", "ids_file", type=click.Path(dir_okay=False),
              help="Pre-tokenized ids (.npy): [N, S] with -1 padding, or [T].")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Trace file to write (.npz, native format).  [required]")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-length", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens per sequence.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(("auto", "float32", "bfloat16", "float16")),
              default="auto", show_default=True)
@click.option("--model-name", help="Model name to record (default: the directory's name).")
@click.option("--make-tiny-model", "tiny_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Write a tiny random Qwen3-MoE (3 layers, 8 experts, top-2; its tokenizer "
                   "knows the words w0 ... w95) into DIR to try capture on, and stop.")
def capture_cmd(model_path: str | None, prompts_file: str | None, text_file: str | None,
                ids_file: str | None, output: str | None, batch_size: int, max_length: int,
                device: str, dtype: str, model_name: str | None, tiny_dir: str | None) -> None:
    """Record the router's top-k choices of a local MoE model (Mixtral, Qwen2/3-MoE, OLMoE,
    DeepSeek-V2/V3) over prompts, a text or token ids, as a token-level trace.

    \b
    placement capture ./Qwen3-30B-A3B --prompts prompts.txt -o trace.npz --device cuda
    placement capture --make-tiny-model tiny-qwen3-moe     # a model to try it on
    placement capture tiny-qwen3-moe --prompts prompts.txt -o trace.npz
    """
    from placement.routing_traces import capture

    if tiny_dir is not None:
        if model_path is not None or output is not None:
            raise click.UsageError("--make-tiny-model DIR writes a model and stops: give it "
                                   "alone, then capture from DIR.")
        from placement.routing_traces.tiny_model import make_tiny_model

        make_tiny_model(tiny_dir)
        click.echo(f"wrote a tiny random Qwen3-MoE (3 layers, 8 experts, top-2) to {tiny_dir}: "
                   f"placement capture {tiny_dir} --prompts FILE -o trace.npz (words w0 ... w95)")
        return
    if model_path is None:
        raise click.UsageError("Missing argument 'MODEL_PATH'.")
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output'.")
    given = [x for x in (prompts_file, text_file, ids_file) if x is not None]
    if len(given) != 1:
        raise click.UsageError("Give exactly one of --prompts, --text or --token-ids.")
    capture.require_transformers()
    prompts = capture.read_prompts(prompts_file) if prompts_file else None
    text = None
    if text_file:
        try:
            text = Path(text_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{text_file}: no such file.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{text_file}: cannot read ({exc}).") from None
    ids = capture.read_token_ids(ids_file) if ids_file else None
    with progress_bar("capturing routing", "batches") as progress:
        trace = capture.capture_routing(
            model_path, prompts=prompts, text=text, token_ids=ids, batch_size=batch_size,
            max_length=max_length, device=device, dtype=dtype, model_name=model_name,
            progress=progress,
        )
    write_native(trace, output)
    click.echo(format_capture(trace, output))
