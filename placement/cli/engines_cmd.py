"""``placement export`` and ``placement import``: plans to engine files and back."""

from __future__ import annotations

from typing import Any

import click

from placement.cli._app import LazyChoice, cluster_options, echo_err, main, model_option
from placement.cli._files import load_plan_arg
from placement.engines import (
    FILL_CHOICES,
    ExportResult,
    ImportResult,
    complete_cluster,
    engine_file_to_plan,
    export_plan,
    format_names,
    formats,
    parse_layer_spec,
    read_engine_file,
)
from placement.errors import InputError

__all__ = ["export_cmd", "format_export", "format_formats", "format_import", "import_cmd"]

_IDS_HELP = "Layer ids, e.g. '0-2' or '3-60,62'."


def format_formats() -> list[tuple[str, str]]:
    """``(name, what it is and its file endings)`` for every registered engine format."""
    return [(f.name, f"{f.engine} ({', '.join(f.suffixes)})") for f in formats()]


class _FormatChoice(LazyChoice):
    """The registered engine formats; an engine that takes no placement file (``vllm``) gets
    one line saying what to use (:data:`placement.engines.registry.NO_FORMAT`), not a list."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        from placement.engines.registry import NO_FORMAT

        if isinstance(value, str) and value in NO_FORMAT and value not in self.choices:
            raise InputError(f"--format {value}: {NO_FORMAT[value]}")
        return super().convert(value, param, ctx)


class _FormatsCommand(click.Command):
    """A command whose help ends with the registered engine formats (read when shown)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Formats"):
            formatter.write_dl(format_formats())
        super().format_epilog(ctx, formatter)


def format_export(result: ExportResult) -> tuple[str, list[str]]:
    """``(stdout text, warning lines)`` for an export."""
    lines = [f"wrote {result.path}: {result.description}"]
    lines += [f"note: {n}" for n in result.notes]
    lines += list(result.usage)
    return "\n".join(lines), [f"warning: {w}" for w in result.warnings]


def format_import(result: ImportResult, output: str) -> str:
    """Text for an import."""
    return result.summary() + f"\nwrote {output}"


@main.command("export", cls=_FormatsCommand,
              short_help="Write a plan as an engine placement file.")
@click.argument("plan_file", metavar="PLAN")
@click.option("--format", "fmt", required=True, type=_FormatChoice(format_names),
              help="Engine format to write (see Formats below).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file; its ending must be one of the format's (below) and picks the "
                   "container where there are several.")
@click.option("--num-hidden-layers", type=click.IntRange(min=1),
              help="Decoder layers of the model, dense ones included (when the plan lacks it).")
@click.option("--dense-layers", metavar="IDS",
              help=f"Decoder layers without routed experts. {_IDS_HELP} Default: the layers "
                   "below the first planned one.")
@click.option("--fill-missing", type=click.Choice(FILL_CHOICES), default="error",
              show_default=True,
              help="MoE layers the plan does not cover: refuse, or give them the engine's "
                   "default placement.")
@click.option("--mtp-layers", metavar="IDS",
              help="trtllm: MTP layer ids that need an assignment (DeepSeek-V3: 61).")
@click.option("--mtp-copy-from", type=click.IntRange(min=0), metavar="LAYER",
              help="trtllm: the layer whose assignment MTP layers copy (default: the last).")
def export_cmd(plan_file: str, fmt: str, output: str, num_hidden_layers: int | None,
               dense_layers: str | None, fill_missing: str, mtp_layers: str | None,
               mtp_copy_from: int | None) -> None:
    """Write PLAN as an engine placement file, and print how to use it.

    \b
    placement export plan.json --format sglang -o init_expert_location.json
    placement export plan.json --format trtllm --mtp-layers 61 -o moe_load_balancer.yaml
    """
    plan = load_plan_arg(plan_file)
    result = export_plan(
        plan, fmt, output, num_hidden_layers=num_hidden_layers,
        dense_layers=parse_layer_spec(dense_layers), fill_missing=fill_missing,
        mtp_layers=parse_layer_spec(mtp_layers) or (), mtp_copy_from=mtp_copy_from,
    )
    text, warnings = format_export(result)
    click.echo(text)
    for w in warnings:
        echo_err(w)


@main.command("import", cls=_FormatsCommand,
              short_help="Read a deployed engine placement file into a plan.")
@click.argument("engine_file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Plan file to write (JSON).")
@cluster_options
@click.option("--format", "fmt", type=_FormatChoice(lambda: ("auto", *format_names())),
              default="auto", show_default=True, help="Engine format (auto: by content).")
@click.option("--num-experts", type=click.IntRange(min=1),
              help="Logical experts per layer (default: the file's, else the largest id + 1).")
@click.option("--layer-ids", metavar="IDS",
              help=f"Decoder-layer ids of the MoE layers. {_IDS_HELP}")
@click.option("--dense-layers", metavar="IDS",
              help=f"Decoder layers without experts. {_IDS_HELP}")
@click.option("--first-k-dense", type=click.IntRange(min=0), metavar="K",
              help="The first K decoder layers are dense (DeepSeek: 3).")
@click.option("--num-hidden-layers", type=click.IntRange(min=1),
              help="Decoder layers of the model, dense ones included.")
@click.option("--mtp-layers", metavar="IDS", help="trtllm: ids of MTP layers to leave out.")
@model_option("recorded in the plan, so later commands know its shape",
              "none recorded; later commands guess it from the expert count")
def import_cmd(engine_file: str, output: str, fmt: str, num_experts: int | None,
               layer_ids: str | None, dense_layers: str | None, first_k_dense: int | None,
               num_hidden_layers: int | None, mtp_layers: str | None, model_name: str | None,
               **cluster_kw: Any) -> None:
    """Read a deployed engine placement FILE into a plan.

    \b
    placement import init_expert_location.json --preset deepseek-prefill -o deployed.json
    placement import expert_map.json --gpus-per-node 8 --first-k-dense 3 -o deployed.json

    The cluster comes from --preset/--cluster/--nodes/--gpus-per-node/--slots-per-gpu; what
    the file says (its slots, device count) fills in the rest and is checked against them.
    """
    if first_k_dense is not None and dense_layers is not None:
        raise click.UsageError("Give either --dense-layers or --first-k-dense, not both.")
    dense = (tuple(range(first_k_dense)) if first_k_dense is not None
             else parse_layer_spec(dense_layers))
    ef = read_engine_file(engine_file, fmt)
    cluster = complete_cluster(
        ef, preset=cluster_kw.get("cluster_preset"), cluster_file=cluster_kw.get("cluster_file"),
        num_nodes=cluster_kw.get("num_nodes"), gpus_per_node=cluster_kw.get("gpus_per_node"),
        slots_per_gpu=cluster_kw.get("slots_per_gpu"),
    )
    mtp = parse_layer_spec(mtp_layers)
    if mtp is not None and not ef.may_hold_mtp:
        takers = " and ".join(f.name for f in formats() if "mtp_layers" in f.options)
        raise InputError(f"--mtp-layers applies to {takers} files only ({engine_file} is a "
                         f"{ef.fmt} file).")
    result = engine_file_to_plan(
        ef, cluster, num_experts=num_experts, layer_ids=parse_layer_spec(layer_ids),
        dense_layers=dense, num_hidden_layers=num_hidden_layers, mtp_layers=mtp,
        model=model_name,
    )
    result.plan.save(output)
    click.echo(format_import(result, output))
