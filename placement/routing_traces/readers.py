"""Read any supported trace into a :class:`Trace`, the format told by content, not file name.

:func:`load_trace` accepts

* a native v1 ``.npz`` (:mod:`placement.routing_traces.native`);
* SGLang files (:mod:`placement.routing_traces.sglang`): ``{"logical_count": ...}`` JSON, the
  ``stat`` recorder dump ``.pt``, one rank's ``per_pass`` / ``per_token`` dump ``.pt``, or a
  directory of per-rank dumps (one run);
* a TensorRT-LLM expert-statistic directory (:mod:`placement.routing_traces.trtllm`);
* a sharded trace directory (:mod:`placement.routing_traces.sharded`), read whole (commands
  that stream open it with :func:`~placement.routing_traces.sharded.open_trace_source`);
* a directory or a list of trace files of one model, read as the windows of one trace (window
  names: the file stems; ``stem:name`` for a file that has several windows itself);
* ``"bundled:NAME"``, a small trace shipped with the package (:func:`bundled_traces`).

Anything malformed raises :class:`TraceFormatError` naming the file and what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from placement._util import format_ids
from placement.errors import InputError, TraceFormatError
from placement.filekinds import Probe, identify, mismatch, split_spec
from placement.routing_traces import megatron, native, sglang, sharded, trtllm, vllm
from placement.routing_traces.native import read_native
from placement.routing_traces.registry import TraceReader, readers, register_reader
from placement.routing_traces.sglang import parse_sglang_pt, read_sglang_json
from placement.routing_traces.trace import Trace
from placement.routing_traces.windows import select_window_spec

__all__ = [
    "BUNDLED_PREFIX",
    "TRACE_SUFFIXES",
    "bundled_trace_path",
    "bundled_traces",
    "combine_windows",
    "load_trace",
    "register_reader",
]

# the readers, in the order they are tried: one line each
register_reader(sharded.READER)
register_reader(trtllm.READER)
register_reader(native.READER)
register_reader(sglang.COUNTS_READER)
register_reader(sglang.STAT_READER)
register_reader(sglang.RANK_DUMP_READER)
register_reader(vllm.READER)
register_reader(megatron.READER)

BUNDLED_PREFIX = "bundled:"
TRACE_SUFFIXES = (".npz", ".json", ".pt", ".pth")
_DATA_DIR = Path(__file__).resolve().parent / "data"


# -------------------------------------------------------------------------------------------
# bundled traces
# -------------------------------------------------------------------------------------------
def bundled_traces() -> list[str]:
    """Names of the traces shipped with the package (``bundled:NAME``): the synthetic ones and
    the real FLAME-MoE-290M trace ``flame-moe`` (Apache-2.0, notice beside it)."""
    if not _DATA_DIR.is_dir():
        return []
    return sorted(p.stem for p in _DATA_DIR.glob("*.npz"))


def bundled_trace_path(name: str) -> Path:
    """Path of the shipped trace ``name`` (e.g. ``"deepseek-v3"``)."""
    name = name[len(BUNDLED_PREFIX):] if name.startswith(BUNDLED_PREFIX) else name
    path = _DATA_DIR / f"{name}.npz"
    if not path.is_file():
        raise TraceFormatError(
            f"no bundled trace {name!r} (available: {', '.join(bundled_traces()) or 'none'})."
        )
    return path


# -------------------------------------------------------------------------------------------
# one file
# -------------------------------------------------------------------------------------------
def _reader_for(probe: Probe) -> TraceReader | None:
    return next((r for r in readers() if r.sniff(probe)), None)


def _read_file(path: Path, shown: str | None = None) -> tuple[TraceReader | None, Any]:
    """One file (or a directory a reader claims): ``(reader, trace or part of a run)``.

    A file no reader claims is told by content: another kind of file (a plan, an engine file)
    gets one line saying so and what to do; anything else the detailed error of the reader its
    container suggests. ``shown`` is the path as the user wrote it, for messages."""
    probe = Probe(path)
    if probe.container == "special":  # /dev/zero would be read forever, a FIFO would hang
        raise TraceFormatError(f"{probe.special}, not a file; give a trace file or directory.",
                               shown or path)
    reader = _reader_for(probe)
    if reader is not None:
        return reader, reader.read(probe)
    kind = identify(probe)
    if kind is not None and kind.role != "trace":
        raise TraceFormatError(mismatch(kind, "trace", shown or path), shown or path)
    c = probe.container
    if c == "missing":
        raise TraceFormatError("no such file or directory.", shown or path)
    if c == "dir":
        raise TraceFormatError("is a directory.", path)
    if c == "empty":
        raise TraceFormatError("empty file.", path)
    if c == "zip":
        if probe.zip_error is not None:
            raise TraceFormatError(f"truncated or corrupt zip archive ({probe.zip_error}).",
                                   path)
        raise TraceFormatError(
            "a zip archive that is neither a .npz nor a torch file (holds "
            f"{list((probe.zip_names or ())[:4])}).", path,
        )
    if c == "npz":
        return None, read_native(path)  # says which keys it lacks
    if c in ("torch", "pickle"):
        return None, parse_sglang_pt(path)  # says what the dump lacks (or refuses a pickle)
    if c == "json":
        return None, read_sglang_json(path)  # says why it is no logical_count JSON
    raise TraceFormatError(
        "unrecognised trace format (expected a native .npz, an SGLang .json or .pt dump, or a "
        "TensorRT-LLM statistics directory).", path,
    )


def _whole(reader: TraceReader | None, item: Any) -> Trace:
    if reader is not None and reader.combine is not None:
        return reader.combine([item])
    return item


# -------------------------------------------------------------------------------------------
# several files as windows of one trace
# -------------------------------------------------------------------------------------------
def _window_labels(stem: str, trace: Trace) -> list[str]:
    if trace.num_windows == 1:
        return [stem]
    return [f"{stem}:{name}" for name in trace.window_names]


def combine_windows(traces: Sequence[Trace], names: Sequence[str],
                    paths: Sequence[Path] | None = None) -> Trace:
    """One trace whose windows are the windows of ``traces`` in order.

    Args:
        traces: traces of one model (same experts, same layer ids).
        names: a label per trace (a file stem); a one-window trace's window takes it, a trace
            with several windows gives ``label:window``.
        paths: the files, for messages.

    All token-level: tokens are concatenated (source ranks and gate weights kept when every
    trace has them). Otherwise every trace becomes counts ``[W, R, L, E]`` (ranks summed away
    when the traces disagree on R).
    """
    if not traces:
        raise TraceFormatError("no traces to combine.")
    where = list(paths) if paths is not None else [None] * len(traces)
    first = traces[0]
    # 1. one model
    for t, p in zip(traces[1:], where[1:], strict=True):
        ref = f"{where[0].name if where[0] else 'the first trace'}"
        if t.num_experts != first.num_experts:
            raise TraceFormatError(
                f"has {t.num_experts} experts but {ref} has {first.num_experts} "
                "(a directory or list of traces must hold one model).", p,
            )
        if not np.array_equal(t.layer_ids, first.layer_ids):
            raise TraceFormatError(
                f"has MoE layers {format_ids(t.layer_ids, 40)} but {ref} has "
                f"{format_ids(first.layer_ids, 40)} (a directory or list of traces must hold one "
                "model).", p,
            )
        if (t.num_hidden_layers is not None and first.num_hidden_layers is not None
                and t.num_hidden_layers != first.num_hidden_layers):
            raise TraceFormatError(
                f"has {t.num_hidden_layers} decoder layers but {ref} has "
                f"{first.num_hidden_layers}.", p,
            )
        if t.top_k is not None and first.top_k is not None and t.top_k != first.top_k:
            raise TraceFormatError(f"has top_k={t.top_k} but {ref} has top_k={first.top_k}.", p)
    labels = [lab for t, n in zip(traces, names, strict=True) for lab in _window_labels(n, t)]
    models = {t.model for t in traces}
    model = models.pop() if len(models) == 1 else None
    nhl = next((t.num_hidden_layers for t in traces if t.num_hidden_layers is not None), None)
    top_k = next((t.top_k for t in traces if t.top_k is not None), None)

    # 2a. all token-level: concatenate tokens, windows renumbered 0..W-1 in order
    if all(t.is_token_level for t in traces):
        offsets = np.cumsum([0] + [t.num_windows for t in traces])
        keep_rank = all(t.source_rank is not None for t in traces)
        keep_w = all(t.topk_weights is not None for t in traces)
        return Trace(
            num_experts=first.num_experts,
            topk_ids=np.concatenate([t.topk_ids for t in traces]),
            layer_ids=first.layer_ids,
            window=np.concatenate([t.window_index.astype(np.int64) + off
                                   for t, off in zip(traces, offsets[:-1].tolist(), strict=True)]),
            source_rank=(np.concatenate([np.asarray(t.source_rank) for t in traces])
                         if keep_rank else None),
            topk_weights=(np.concatenate([np.asarray(t.topk_weights) for t in traces])
                          if keep_w else None),
            window_names=labels,
            model=model,
            num_hidden_layers=nhl,
        )
    # 2b. otherwise counts, [W, R, L, E]
    parts = [t.window_rank_counts() for t in traces]
    if len({p.shape[1] for p in parts}) > 1:
        parts = [p.sum(axis=1, keepdims=True) for p in parts]
    return Trace(
        num_experts=first.num_experts,
        counts=np.concatenate(parts, axis=0),
        layer_ids=first.layer_ids,
        window_names=labels,
        model=model,
        num_hidden_layers=nhl,
        top_k=top_k,
    )


def _read_many(paths: Sequence[Path]) -> Trace:
    """Several files: the parts of one run (one file per rank), or traces read as windows."""
    items = [(p, *_read_file(p)) for p in paths]
    parts = [(p, r, x) for p, r, x in items if r is not None and r.combine is not None]
    if parts:
        first_path, reader, _ = parts[0]
        assert reader is not None and reader.combine is not None
        odd = next((p for p, r, _ in items if r is not reader), None)
        if odd is not None:
            raise TraceFormatError(
                f"is not {reader.kind.label.removeprefix('a routing trace (').rstrip(')')} "
                f"like {first_path.name} (one kind of file per directory).", odd,
            )
        return reader.combine([x for _, _, x in parts])
    traces: list[Trace] = [x for _, _, x in items]
    if len(traces) == 1:
        return traces[0]
    return combine_windows(traces, [p.stem for p in paths], [p for p, _, _ in items])


def _dir_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix in TRACE_SUFFIXES)
    if not files:
        raise TraceFormatError(
            f"empty directory: no trace files ({', '.join(TRACE_SUFFIXES)}) and no "
            "meta_info.json.", path,
        )
    return files


def load_trace(source: str | Path | Sequence[str | Path]) -> Trace:
    """Read a trace from a file, a directory, a list of files or ``"bundled:NAME"``.

    The format is told by content (see the module docstring). A directory of SGLang per-rank
    dumps is one run; any other directory or list is read as the windows of one trace, files
    in name order for a directory and in the given order for a list. A source may end in
    ``#SPEC`` to keep only some of its windows (``trace.npz#0-15``, ``trace.npz#second-half``;
    see :func:`placement.routing_traces.windows.parse_window_spec`).
    """
    if isinstance(source, str | Path):
        text = str(source)
        base, spec = split_spec(text)
        if spec is not None:
            trace = load_trace(base)
            try:
                return select_window_spec(trace, spec)
            except InputError as exc:
                raise TraceFormatError(str(exc), base) from None
        if text.startswith(BUNDLED_PREFIX):
            return read_native(bundled_trace_path(text))
        path = Path(source)
        if path.is_dir():
            probe = Probe(path)
            reader = _reader_for(probe)
            if reader is not None:
                return _whole(reader, reader.read(probe))
            return _read_many(_dir_files(path))
        return _whole(*_read_file(path, text))
    sources = list(source)
    if not sources:
        raise TraceFormatError("no trace files given.")
    if len(sources) == 1:
        return load_trace(sources[0])
    if any(split_spec(str(s))[1] is not None for s in sources):
        parts = [load_trace(s) for s in sources]
        return combine_windows(parts, [Path(split_spec(str(s))[0]).stem for s in sources])
    paths: list[Path] = []
    for s in sources:
        text = str(s)
        p = bundled_trace_path(text) if text.startswith(BUNDLED_PREFIX) else Path(s)
        if p.is_dir():
            raise TraceFormatError(
                "is a directory; give either one directory or a list of files.", p
            )
        paths.append(p)
    return _read_many(paths)
