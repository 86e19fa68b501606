"""The ``placement`` click group, its error handling and the options commands share."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from placement.errors import PlacementError

if TYPE_CHECKING:
    from placement.cluster import Cluster
    from placement.parallel import Backend

__all__ = [
    "LazyChoice",
    "ProgressBar",
    "SectionedCommand",
    "backend_from_options",
    "backend_options",
    "cluster_from_options",
    "cluster_options",
    "directory_output",
    "echo_err",
    "format_usage_error",
    "main",
    "model_option",
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


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in titled sections, in the order given
    (click has no option groups; this is its documented way to change help output, a
    :meth:`format_options` override, so no other dependency is needed). ``sections``: ``(title,
    parameter names)`` pairs, names as the function receives them (``"num_nodes"``); options in
    no section (a flag added later) are listed last under "Other options" (``--help`` with
    them), never dropped."""

    def __init__(self, *args: Any, sections: Sequence[tuple[str, Sequence[str]]] = (),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = tuple((title, tuple(names)) for title, names in sections)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: rec for p in self.get_params(ctx) if isinstance(p, click.Option)
                   and (rec := p.get_help_record(ctx)) is not None}
        placed: set[str | None] = set()
        groups: list[tuple[str, list[tuple[str, str]]]] = []
        for title, names in self.sections:
            rows = [records[n] for n in names if n in records]
            placed.update(names)
            if rows:
                groups.append((title, rows))
        rest = [rec for name, rec in records.items() if name not in placed]
        if rest:
            groups.append(("Other options", rest))
        # one first-column width in every section, so that the sections line up
        width = min(30, max(len(r[0]) for _, rows in groups for r in rows))
        for title, rows in groups:
            with formatter.section(title):
                formatter.write_dl([(term.ljust(width), text) for term, text in rows],
                                   col_max=width)


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


_FILE_ENDINGS = (".html", ".htm", ".md", ".json", ".png", ".pdf", ".txt", ".csv")


def directory_output(writes: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback for an ``-o DIR`` option of a command that writes several files (``writes``:
    ``"report.md, report.html and the figures"``): a name with a file's ending
    (``-o report.html``) is refused in one line before any work, instead of becoming a
    directory called ``report.html``."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return value
        path = Path(value)
        if path.suffix.lower() in _FILE_ENDINGS and not path.is_dir():
            name = ctx.info_name or "this command"
            raise click.UsageError(
                f"-o {value} names a file, but {name} writes a directory ({writes}): give a "
                f"directory, e.g. -o {path.with_suffix('')}", ctx)
        return value

    return check


def _check_model(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None:
        from placement.models import model_preset

        model_preset(value)  # an unknown name: one line naming the presets, exit status 1
    return value


def _model_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    from placement.models import MODEL_PRESETS

    return [CompletionItem(n) for n in sorted(MODEL_PRESETS) if n.startswith(incomplete)]


def model_option(uses: str, default: str) -> Callable[[F], F]:
    """``--model NAME``, one meaning in every command: the model, a preset of
    :data:`placement.models.MODEL_PRESETS` (its shape: experts, top-k, hidden sizes); ``uses``
    says what this command takes from it, ``default`` what it does without it. The name is
    checked when the command line is read (an unknown one is one line naming the presets)."""
    from placement.models import MODEL_PRESETS

    return click.option(
        "--model", "model_name", metavar="NAME", default=None, callback=_check_model,
        shell_complete=_model_names,
        help=f"The model, a preset ({', '.join(sorted(MODEL_PRESETS))}): {uses} "
             f"[default: {default}].")


def cluster_options(func: F) -> F:
    """Add ``--cluster FILE | --preset NAME | --nodes --gpus-per-node --slots-per-gpu``."""
    opts = [
        click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False),
                     help="Cluster TOML file."),
        click.option("--preset", "cluster_preset", metavar="NAME",
                     help="Cluster preset: deepseek-prefill, deepseek-decode, gb200-nvl72, "
                          "h100-2x8, h200-2x8."),
        click.option("--nodes", "num_nodes", type=click.IntRange(min=1), metavar="N",
                     help="Nodes."),
        click.option("--gpus-per-node", type=click.IntRange(min=1), metavar="G",
                     help="GPUs per node."),
        click.option("--slots-per-gpu", type=click.IntRange(min=1), metavar="S",
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
    from placement.parallel import Ray, check_ray_address, import_ray, shutdown_ray

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
    if address is not None:
        check_ray_address(address)  # so is a wrong address or a refused token
    if ctx is not None:
        ctx.call_on_close(shutdown_ray)
    return Ray(address=address, workers=workers), None


class ProgressBar:
    """A rich progress bar as a ``progress(done, total)`` callback for the library's
    long-running functions, with :meth:`echo` for a line printed while it is up: the bar is
    stopped (and erased) first, so the line starts clean instead of after ``58/58 0:00:08``
    on the bar's line; a later ``progress`` call brings the bar back."""

    def __init__(self, progress: Any, label: str) -> None:
        self._progress = progress
        self._task = progress.add_task(label, total=None)

    def __call__(self, done: int, total: int) -> None:
        if not self._progress.live.is_started:
            self._progress.start()
        self._progress.update(self._task, completed=done, total=total)

    @property
    def live(self) -> bool:
        """Whether the bar is on the terminal now."""
        return bool(self._progress.live.is_started)

    def stop(self) -> None:
        """Take the bar off the terminal (its line is erased; the cursor is left at the start
        of that line)."""
        if self._progress.live.is_started:
            self._progress.stop()

    def echo(self, message: str, err: bool = False) -> None:
        """Stop the bar, then print ``message`` as a line of its own."""
        self.stop()
        click.echo(message, err=err)


@contextmanager
def progress_bar(label: str, unit: str = "", *,
                 console: Any = None) -> Iterator[ProgressBar | None]:
    """A rich progress bar on stderr while it is a terminal (``None`` otherwise), as a
    ``progress(done, total)`` callback for the library's long-running functions. Print lines
    while it is up with :meth:`ProgressBar.echo`, never ``click.echo`` (the bar owns the
    terminal's last line). ``console``: a :class:`rich.console.Console` to draw on instead
    (tests force a terminal this way); the bar is drawn when it is a terminal."""
    if console is None:
        if not sys.stderr.isatty():
            yield None
            return
        from rich.console import Console

        console = Console(stderr=True)
    elif not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn(unit), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        yield ProgressBar(bar, label)
