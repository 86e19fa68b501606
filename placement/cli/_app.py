"""The ``placement`` click group, its error handling and the options commands share."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from placement.errors import PlacementError

if TYPE_CHECKING:
    from placement.cluster import Cluster
    from placement.parallel import Backend

__all__ = [
    "LazyChoice",
    "backend_from_options",
    "backend_options",
    "cluster_from_options",
    "cluster_options",
    "echo_err",
    "format_usage_error",
    "main",
    "progress_bar",
]

F = TypeVar("F", bound=Callable[..., Any])


def echo_err(message: str) -> None:
    """Print one line to standard error."""
    click.echo(message, err=True)


class LazyChoice(click.Choice):
    """A :class:`click.Choice` whose choices come from a function, asked each time (a registry
    may grow after the command is built, and the module that holds it is imported only when the
    choices are needed)."""

    def __init__(self, choices: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        self._get = choices
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._get())

    @choices.setter
    def choices(self, value: Any) -> None:  # click never sets it after __init__
        raise AttributeError("LazyChoice takes its choices from a function")


class _Group(click.Group):
    """A group that turns library errors into one line and exit status 1, and imports each
    command's module only when that command runs (``placement --help`` imports none of them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = {}

    def add_lazy(self, name: str, module: str, short_help: str) -> None:
        """Register command ``name``, defined (and added to this group) by ``module``;
        ``short_help`` is what ``placement --help`` lists before the module is imported."""
        self.lazy[name] = (module, short_help)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            importlib.import_module(self.lazy[cmd_name][0])
        cmd = self.commands.get(cmd_name)
        if cmd is not None:  # inputs and -o checked before the work (docs/reliability.md)
            from placement.cli._files import guard_command

            guard_command(cmd)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is not None:
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit)))
            else:
                rows.append((name, self.lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """Click's main, with usage errors (a misspelt option, a missing argument) as one line
        and exit status 2."""
        from placement._signals import Interrupted, announce, exit_now, handling_signals

        run = super().main
        if not standalone_mode:
            return run(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            with handling_signals():  # SIGINT/SIGTERM: one way out, see placement._signals
                rv = run(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort as exc:
            if isinstance(exc.__context__, Interrupted):  # a signal outside a command's body
                announce(echo_err)
                exit_now(exc.__context__.exit_code)
            echo_err("Aborted!")
            sys.exit(1)
        except Interrupted as exc:
            announce(echo_err)
            exit_now(exc.exit_code)
        except SystemExit as exc:
            if isinstance(exc.__context__, Interrupted):  # a command's body was interrupted
                exit_now(exc.__context__.exit_code)
            raise
        except click.UsageError as exc:
            echo_err(format_usage_error(exc))
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

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
        except RecursionError:  # a reader that missed a too deeply nested input
            echo_err("error: an input is nested too deeply to read.")
            sys.exit(1)
        except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (placement._signals): 130 or 143
            from placement._signals import announce

            announce(echo_err)
            sys.exit(getattr(exc, "exit_code", 130))


def format_usage_error(exc: click.UsageError) -> str:
    """``error: <what is wrong> (see 'placement solve --help')``; a misspelt option names the
    closest one (``--num-nodes``: did you mean ``--nodes``?)."""
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    if isinstance(exc, click.NoSuchOption) and exc.possibilities:
        best = difflib.get_close_matches(exc.option_name, exc.possibilities, n=1, cutoff=0.0)
        return f"error: no such option {exc.option_name}: did you mean {best[0]}?{where}"
    return f"error: {exc.format_message().rstrip('.')}{where}."


@click.group("placement", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    from placement.cluster import load_cluster

    return load_cluster(
        preset=kwargs.pop("cluster_preset", None),
        path=kwargs.pop("cluster_file", None),
        num_nodes=kwargs.pop("num_nodes", None),
        gpus_per_node=kwargs.pop("gpus_per_node", None),
        slots_per_gpu=kwargs.pop("slots_per_gpu", None),
    )


def backend_options(jobs_help: str) -> Callable[[F], F]:
    """Add ``--jobs N`` (this machine's processes; ``jobs_help`` says of what) and
    ``--ray``, ``--ray-address ADDR``, ``--workers N`` (Ray tasks)."""
    opts = [
        click.option("--jobs", type=click.IntRange(min=1), default=None, help=jobs_help),
        click.option("--ray", "use_ray", is_flag=True,
                     help="Run the parallel work as Ray tasks on a local Ray started on demand "
                          "(pip install 'placement[ray]'); the result is the same."),
        click.option("--ray-address", metavar="ADDR", default=None,
                     help="Run it on the existing Ray cluster at ADDR instead (implies --ray; "
                          "'auto', 'host:6379' or 'ray://host:10001')."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="With --ray: Ray tasks in flight at once (and a local Ray's CPUs) "
                          "[default: every CPU Ray has]."),
    ]

    def wrap(func: F) -> F:
        for opt in reversed(opts):
            func = opt(func)
        return func

    return wrap


def backend_from_options(kwargs: dict[str, Any]) -> tuple[Backend | None, int | None]:
    """Pop the :func:`backend_options` from a command's kwargs: ``(backend, jobs)``, the backend
    a :class:`~placement.parallel.Ray` with ``--ray``/``--ray-address`` (the local Ray it starts
    is stopped when the command ends), else None (``jobs`` processes, the library's default)."""
    from placement.parallel import Ray, import_ray, shutdown_ray

    jobs = kwargs.pop("jobs", None)
    use_ray = bool(kwargs.pop("use_ray", False))
    address = kwargs.pop("ray_address", None)
    workers = kwargs.pop("workers", None)
    ctx = click.get_current_context(silent=True)
    if not use_ray and address is None:
        if workers is not None:
            raise click.UsageError("--workers is for --ray (use --jobs for this machine's "
                                   "processes)", ctx)
        return None, jobs
    if jobs is not None:
        raise click.UsageError("--jobs runs this machine's processes, --ray runs Ray tasks: "
                               "give one (--workers sets Ray's)", ctx)
    import_ray()  # a missing Ray is one line now, whether or not the command has Ray work
    if ctx is not None:
        ctx.call_on_close(shutdown_ray)
    return Ray(address=address, workers=workers), None


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
