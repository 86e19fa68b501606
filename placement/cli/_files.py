"""Files on the command line: plans and traces told by content, arguments in the wrong order,
held-out windows that overlap the data a plan was made from, and model shapes that contradict
the plan or trace.

Every check here ends in one :class:`~placement.errors.InputError` line that names the file and
says what to do; the library does the reading (:func:`placement.routing_traces.load_trace`,
:meth:`placement.plan.Plan.load`, :mod:`placement.filekinds`).
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import click

from placement._util import format_ids
from placement.errors import InputError, PlanError, TraceFormatError
from placement.filekinds import FileKind, identify, split_spec

if TYPE_CHECKING:
    from placement.models import ModelShape
    from placement.plan import Plan
    from placement.routing_traces.sharded import ShardedTrace
    from placement.routing_traces.trace import Trace

__all__ = [
    "OUTPUT_PARAMS",
    "TraceArg",
    "check_command_paths",
    "check_heldout",
    "check_input_file",
    "check_output",
    "guard_command",
    "kind_of",
    "load_plan_arg",
    "load_trace_arg",
    "resolve_model",
]

BUNDLED = "bundled:"

TraceT = TypeVar("TraceT")


# -------------------------------------------------------------------------------------------
# paths checked before the work starts: inputs that are no files, outputs that would clobber
# -------------------------------------------------------------------------------------------
OUTPUT_PARAMS = ("output", "out_dir")
"""The parameters of the commands that name what they write (``-o``)."""


def _special(mode: int) -> str | None:
    """What a file of ``mode`` is when it is neither a regular file nor a directory."""
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file"


def check_input_file(text: str) -> None:
    """Refuse, before anything reads it, an input that is neither a regular file nor a
    directory (``/dev/zero`` would be read forever, a FIFO would hang)."""
    base, _spec = split_spec(text)
    if base.startswith(BUNDLED):
        return
    try:
        mode = os.stat(base).st_mode
    except (OSError, ValueError):
        return  # missing: the reader says so
    what = _special(mode)
    if what is not None:
        raise InputError(f"{base}: {what}, not a file; give a trace, plan or engine file, or a "
                         "trace directory.")


def check_output(text: str, inputs: Iterable[str] = (), *, kind: str = "file") -> None:
    """The output rules, checked before the work starts (docs/reliability.md): ``text``
    (``kind`` ``"file"``, ``"dir"`` or ``"any"``) must not be one of ``inputs``, its directory
    must exist (a ``"dir"`` output may be created, its parent must exist) and be writable; a
    device or FIFO must be writable. One :class:`InputError` line otherwise."""
    from placement._io import output_target, temp_prefix

    out = Path(text)
    target = output_target(out)
    try:
        st: os.stat_result | None = target.stat()
    except OSError:
        st = None
    # 1. not an input (the same file or directory, whatever the path says)
    if st is not None:
        for inp in inputs:
            base = split_spec(inp)[0]
            if base.startswith(BUNDLED):
                continue
            try:
                same = os.path.samefile(base, target)
            except (OSError, ValueError):
                continue
            if same:
                raise InputError(f"{text}: is also an input ({inp}); write the output to "
                                 "another path.")
    # 2. a device or FIFO is written to as it is
    if st is not None and _special(st.st_mode) is not None:
        if not os.access(target, os.W_OK):
            raise InputError(f"{text}: cannot write to it (permission denied).")
        return
    if st is not None and stat.S_ISDIR(st.st_mode) and kind == "file":
        raise InputError(f"{text}: is a directory; give a file name.")
    if st is not None and stat.S_ISREG(st.st_mode) and kind == "dir":
        raise InputError(f"{text}: is a file; give a directory (it is created if missing).")
    # 3. where the new file goes: an existing, writable directory (a missing output directory
    #    is made by the command: its parent must exist)
    where = target if st is not None and stat.S_ISDIR(st.st_mode) else target.parent
    if not where.is_dir():
        raise InputError(f"{text}: directory {where} does not exist (create it first: "
                         f"mkdir -p {where}).")
    try:  # the true test (root, a read-only filesystem, /proc): make a file there and remove it
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{text}: cannot write in directory {where} "
                         f"({exc.strerror or type(exc).__name__}).") from None


def _values(value: Any) -> list[str]:
    if isinstance(value, str | Path):
        return [str(value)]
    if isinstance(value, tuple | list):
        return [str(v) for v in value if isinstance(v, str | Path)]
    return []


def check_command_paths(command: click.Command, kwargs: dict[str, Any]) -> None:
    """:func:`check_input_file` for every path-like argument of a command call, then
    :func:`check_output` for its ``-o`` against them (``kwargs``: the callback's)."""
    outputs: list[tuple[str, str]] = []
    inputs: list[str] = []
    for p in command.params:
        value = kwargs.get(p.name or "")
        if p.name in OUTPUT_PARAMS:
            if isinstance(value, str | Path):
                t = p.type
                kind = ("dir" if isinstance(t, click.Path) and not t.file_okay else
                        "file" if isinstance(t, click.Path) and not t.dir_okay else "any")
                outputs.append((str(value), kind))
        else:
            inputs.extend(_values(value))
    for text in inputs:
        check_input_file(text)
    for text, kind in outputs:
        check_output(text, inputs, kind=kind)


def guard_command(command: click.Command) -> click.Command:
    """Have ``command`` (and a group's subcommands) run :func:`check_command_paths` before its
    body. Idempotent."""
    if getattr(command, "_paths_guarded", False):
        return command
    command._paths_guarded = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            guard_command(sub)
    callback = command.callback
    if callback is not None:
        @functools.wraps(callback)
        def checked(*args: Any, **kwargs: Any) -> Any:
            check_command_paths(command, kwargs)
            return callback(*args, **kwargs)

        command.callback = checked
    return command


def kind_of(text: str) -> FileKind | None:
    """The kind of the file an argument names (a ``#windows`` spec left out), or None."""
    from placement.routing_traces.readers import bundled_trace_path

    base, _spec = split_spec(text)
    if base.startswith(BUNDLED):
        try:
            return identify(bundled_trace_path(base))
        except TraceFormatError:
            return None
    return identify(base) if Path(base).exists() else None


def load_plan_arg(text: str, *, trace_arg: str | None = None, command: str = "") -> Plan:
    """The plan an argument names. When it is no plan but ``trace_arg`` (the argument where
    the trace was expected) is one, the two were swapped: say so, with the command to run."""
    from placement.plan import Plan

    try:
        return Plan.load(text)
    except PlanError:
        if trace_arg is not None and command:
            got, other = kind_of(text), kind_of(trace_arg)
            if got is not None and got.role == "trace" and other is not None \
                    and other.role == "plan":
                raise InputError(
                    f"{text} is {got.label} and {trace_arg} {other.label}: the plan comes "
                    f"first: placement {command} {trace_arg} {text}"
                ) from None
        raise


# -------------------------------------------------------------------------------------------
# traces, and which windows of which file they are
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceArg(Generic[TraceT]):
    """A trace as given on the command line, with where its windows came from.

    Attributes:
        text: the argument (``"trace.npz#second-half"``).
        trace: the trace (its selected windows); a
            :class:`~placement.routing_traces.sharded.ShardedTrace` for a sharded directory
            read with ``stream=True``.
        key: the file or directory it was read from, resolved (``"bundled:NAME"`` for a
            bundled trace).
        base_names: the window names of the whole file.
        selected: indices of the windows kept (all when the argument has no spec).
    """

    text: str
    trace: TraceT
    key: str
    base_names: tuple[str, ...]
    selected: tuple[int, ...]


def _key(base: str) -> str:
    return base if base.startswith(BUNDLED) else str(Path(base).resolve())


@overload
def load_trace_arg(text: str, *, stream: Literal[False] = ...) -> TraceArg[Trace]: ...


@overload
def load_trace_arg(text: str, *, stream: bool) -> TraceArg[Trace | ShardedTrace]: ...


def load_trace_arg(text: str, *, stream: bool = False) -> TraceArg[Any]:
    """Read a trace argument (``PATH``, ``PATH#SPEC``, ``bundled:NAME[#SPEC]``) once, keeping
    the file's window names for :func:`check_heldout`. With ``stream``, a sharded trace
    directory is opened, not read (a :class:`ShardedTrace`, read shard by shard later)."""
    from placement.routing_traces.readers import load_trace
    from placement.routing_traces.sharded import is_sharded_dir, open_sharded
    from placement.routing_traces.windows import parse_window_spec

    base, spec = split_spec(text)
    whole: Trace | ShardedTrace = (open_sharded(base) if stream and is_sharded_dir(base)
                                   else load_trace(base))
    if spec is None:
        return TraceArg(text, whole, _key(base), whole.window_names,
                        tuple(range(whole.num_windows)))
    try:
        idx = parse_window_spec(spec, whole.window_names)
    except InputError as exc:
        raise TraceFormatError(str(exc), base) from None
    return TraceArg(text, whole.select_windows(idx), _key(base), whole.window_names, tuple(idx))


def _windows(names: Sequence[str], idx: Sequence[int]) -> str:
    shown = [names[i] for i in idx]
    words = ", ".join(shown[:4]) + (f", ... ({len(shown)} in all)" if len(shown) > 4 else "")
    return f"window{'s' if len(shown) != 1 else ''} {words}"


def _planning_windows(held: TraceArg[Any], source: str) -> tuple[int, ...]:
    """Indices of ``held``'s file windows that the plan input ``source`` covers (empty when
    the two are different data)."""
    from placement.routing_traces.windows import parse_window_spec

    base, spec = split_spec(source)
    key = _key(base)
    names = held.base_names
    if key == held.key:  # the same file: compare windows
        if spec is None:
            return tuple(range(len(names)))
        try:
            return tuple(parse_window_spec(spec, names))
        except InputError:
            return tuple(range(len(names)))  # cannot tell which: assume all
    if key.startswith(BUNDLED) or held.key.startswith(BUNDLED):
        return ()
    src, hk = Path(key), Path(held.key)
    if src.parent == hk and hk.is_dir():  # a file of the held-out directory
        stem = src.stem
        return tuple(i for i, n in enumerate(names) if n == stem or n.startswith(stem + ":"))
    if hk.parent == src and (src.is_dir() or not src.exists()):  # held out from its directory
        return tuple(range(len(names)))
    return ()


def check_heldout(plan: Plan, plan_text: str, held: Sequence[TraceArg[Any]], *,
                  allow_overlap: bool = False) -> list[str]:
    """Refuse held-out traces that share windows with the data ``plan`` was made from (its
    ``settings["inputs"]``, written by ``placement solve``), unless ``allow_overlap``; then
    return a note per overlap instead."""
    inputs = plan.settings.get("inputs")
    if not isinstance(inputs, list):
        return []
    notes: list[str] = []
    for h in held:
        for source in inputs:
            if not isinstance(source, str):
                continue
            planning = set(_planning_windows(h, source))
            common = sorted(planning & set(h.selected))
            if not common:
                continue
            whole = len(common) == len(h.base_names)
            what = ("this trace is" if whole else
                    f"{_windows(h.base_names, common)} of this trace "
                    f"{'is' if len(common) == 1 else 'are'}")
            if allow_overlap:
                notes.append(f"{h.text}: {what} data {plan_text} was made from (in-sample "
                             "figures, for diagnosis only).")
                continue
            rest = sorted(set(range(len(h.base_names))) - planning)
            base = split_spec(h.text)[0]
            other = (f"judge the plan on other windows (e.g. "
                     f"{base}#{format_ids(rest).replace(' ', '')})" if rest
                     else "judge the plan on other data")
            src_base, src_spec = split_spec(source)
            shown = Path(src_base).name + (f"#{src_spec}" if src_spec else "")
            raise InputError(
                f"{h.text}: {what} data {plan_text} was made from (its input {shown}): "
                f"{other}, or pass --allow-overlap for in-sample figures."
            )
    return notes


# -------------------------------------------------------------------------------------------
# the model shape
# -------------------------------------------------------------------------------------------
def _contradictions(m: ModelShape, num_experts: int, top_k: int | None,
                    layer_ids: Sequence[int], what: str) -> list[str]:
    out = []
    if m.num_experts != num_experts:
        out.append(f"has {m.num_experts} experts per layer but {what} has {num_experts}")
    if top_k is not None and m.top_k != top_k:
        out.append(f"routes each token to {m.top_k} experts but {what} to {top_k}")
    if layer_ids and max(layer_ids) >= m.num_hidden_layers:
        out.append(f"has {m.num_hidden_layers} decoder layers but {what} has layer "
                   f"{max(layer_ids)}")
    elif len(layer_ids) > m.num_moe_layers:
        out.append(f"has {m.num_moe_layers} MoE layers but {what} has {len(layer_ids)}")
    return out


def resolve_model(name: str | None, plan: Plan | None, trace: Trace | ShardedTrace | None, *,
                  plan_label: str = "the plan", trace_label: str = "the trace",
                  ) -> ModelShape | None:
    """``--model NAME``, else a guess from the plan's or trace's model name and shape. A shape
    that contradicts the plan or trace (experts, top-k, layers) is an error for ``--model`` and
    no guess otherwise."""
    from placement.models import MODEL_PRESETS, guess_model, model_preset

    facts: list[tuple[int, int | None, list[int], str]] = []
    if plan is not None:
        facts.append((plan.num_experts, None, plan.layer_ids.tolist(), plan_label))
    if trace is not None:
        facts.append((trace.num_experts, trace.top_k, trace.layer_ids.tolist(), trace_label))

    def problems(m: ModelShape) -> list[str]:
        return [p for E, k, lids, what in facts for p in _contradictions(m, E, k, lids, what)]

    if name is not None:
        m = model_preset(name)
        found = problems(m)
        if found:
            fits = sorted(x.name for x in MODEL_PRESETS.values() if not problems(x))
            advice = (f"models that fit: {', '.join(fits)}" if fits else
                      "no preset fits: give --hidden-size for bytes")
            raise InputError(f"--model {name} {found[0]}: choose the model the plan and trace "
                             f"are for ({advice}).")
        return m
    names = [plan.model if plan else None, trace.model if trace else None]
    E = plan.num_experts if plan is not None else (trace.num_experts if trace else None)
    k = trace.top_k if trace is not None else None
    guess = guess_model(*names, num_experts=E, top_k=k)
    if guess is not None and problems(guess):
        guess = guess_model(num_experts=E, top_k=k)
    return None if guess is None or problems(guess) else guess
