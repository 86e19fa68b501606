"""The ``placement`` click group, its error handling and the options commands share."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from placement.cluster import Cluster, load_cluster
from placement.errors import PlacementError

__all__ = [
    "cluster_from_options",
    "cluster_options",
    "echo_err",
    "main",
    "pass_cluster",
    "progress_bar",
]

F = TypeVar("F", bound=Callable[..., Any])


def echo_err(message: str) -> None:
    """Print one line to standard error."""
    click.echo(message, err=True)


class _Group(click.Group):
    """A group that turns library errors into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PlacementError as exc:
            echo_err(f"error: {exc}")
            sys.exit(1)
        except OSError as exc:  # a file we were told to write cannot be written, a full disk...
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            echo_err(f"error: {where}{exc.strerror or exc}")
            sys.exit(1)
        except KeyboardInterrupt:
            echo_err("interrupted")
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="placement", prog_name="placement")
def main() -> None:
    """Plan where MoE experts live: traces in, engine placement files out.

    \b
    placement solve trace.npz --nodes 4 --gpus-per-node 8 --slots-per-gpu 9 -o plan.json
    placement validate plan.json heldout.npz
    placement export plan.json --format sglang -o init_expert_location.json
    placement compare heldout.npz plan.json --baseline eplb -o report/
    """


def cluster_options(func: F) -> F:
    """Add ``--cluster FILE | --preset NAME | --nodes --gpus-per-node --slots-per-gpu``."""
    opts = [
        click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False),
                     help="Cluster TOML file."),
        click.option("--preset", "cluster_preset", metavar="NAME",
                     help="Cluster preset: deepseek-prefill, deepseek-decode, gb200-nvl72, "
                          "h100-2x8, h200-2x8."),
        click.option("--nodes", "num_nodes", type=click.IntRange(min=1), help="Nodes."),
        click.option("--gpus-per-node", type=click.IntRange(min=1), help="GPUs per node."),
        click.option("--slots-per-gpu", type=click.IntRange(min=1),
                     help="Routed-expert slots per GPU per layer."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def cluster_from_options(kwargs: dict[str, Any]) -> Cluster:
    """Pop the cluster options from a command's kwargs and build the :class:`Cluster`."""
    return load_cluster(
        preset=kwargs.pop("cluster_preset", None),
        path=kwargs.pop("cluster_file", None),
        num_nodes=kwargs.pop("num_nodes", None),
        gpus_per_node=kwargs.pop("gpus_per_node", None),
        slots_per_gpu=kwargs.pop("slots_per_gpu", None),
    )


def pass_cluster(func: F) -> F:
    """Decorator: build ``cluster`` from the cluster options before calling ``func``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["cluster"] = cluster_from_options(kwargs)
        return func(*args, **kwargs)

    return cluster_options(wrapper)  # type: ignore[return-value]


@contextmanager
def progress_bar(label: str, unit: str = "") -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr while it is a terminal (``None`` otherwise), as a
    ``progress(done, total)`` callback for the library's long-running functions."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn(unit), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
