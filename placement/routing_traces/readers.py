"""Read any supported trace into a :class:`Trace`, the format told by content, not file name.

:func:`load_trace` accepts

* a native v1 ``.npz`` (:mod:`placement.routing_traces.native`);
* SGLang files (:mod:`placement.routing_traces.sglang`): ``{"logical_count": ...}`` JSON, the
  ``stat`` recorder dump ``.pt``, one rank's ``per_pass`` / ``per_token`` dump ``.pt``, or a
  directory of per-rank dumps (one run);
* a TensorRT-LLM expert-statistic directory (:mod:`placement.routing_traces.trtllm`);
* a directory or a list of trace files of one model, read as the windows of one trace (window
  names: the file stems; ``stem:name`` for a file that has several windows itself);
* ``"bundled:NAME"``, a small synthetic trace shipped with the package (:func:`bundled_traces`).

Anything malformed raises :class:`TraceFormatError` naming the file and what is wrong.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from placement.errors import InputError, TraceFormatError
from placement.routing_traces.native import read_native
from placement.routing_traces.sglang import (
    SglangRankDump,
    parse_sglang_pt,
    read_sglang_json,
    trace_from_rank_dumps,
)
from placement.routing_traces.trace import Trace
from placement.routing_traces.trtllm import is_trtllm_dir, read_trtllm_dir
from placement.routing_traces.windows import select_window_spec

__all__ = [
    "BUNDLED_PREFIX",
    "TRACE_SUFFIXES",
    "bundled_trace_path",
    "bundled_traces",
    "combine_windows",
    "load_trace",
    "sniff_format",
]

BUNDLED_PREFIX = "bundled:"
TRACE_SUFFIXES = (".npz", ".json", ".pt", ".pth")
_DATA_DIR = Path(__file__).resolve().parent / "data"


# -------------------------------------------------------------------------------------------
# bundled traces
# -------------------------------------------------------------------------------------------
def bundled_traces() -> list[str]:
    """Names of the synthetic traces shipped with the package (``bundled:NAME``)."""
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
# format sniffing
# -------------------------------------------------------------------------------------------
def sniff_format(path: Path) -> str:
    """What a file holds, from its first bytes: ``"npz"``, ``"torch"``, ``"json"``,
    ``"safetensors"`` or ``"npy"``; raises :class:`TraceFormatError` for anything else."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        raise TraceFormatError("no such file or directory.", path) from None
    except IsADirectoryError:
        raise TraceFormatError("is a directory.", path) from None
    if not head:
        raise TraceFormatError("empty file.", path)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise TraceFormatError(f"truncated or corrupt zip archive ({exc}).", path) from None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise TraceFormatError(
            f"a zip archive that is neither a .npz nor a torch file (holds {names[:4]}).", path
        )
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] == b"\x80":  # a pickle (torch's legacy format)
        return "torch"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    if len(head) >= 10 and head[8:10] == b'{"':
        return "safetensors"
    raise TraceFormatError(
        "unrecognised trace format (expected a native .npz, an SGLang .json or .pt dump, or a "
        "TensorRT-LLM statistics directory).", path,
    )


def _read_file(path: Path) -> Trace | SglangRankDump:
    """One file: a :class:`Trace`, or one rank's SGLang per-pass dump (to be combined)."""
    kind = sniff_format(path)
    if kind == "npz":
        return read_native(path)
    if kind == "json":
        return read_sglang_json(path)
    if kind == "torch":
        return parse_sglang_pt(path)
    if kind == "safetensors":
        raise TraceFormatError(
            "a TensorRT-LLM statistics rank file: pass the directory that holds it and "
            "meta_info.json.", path,
        )
    raise TraceFormatError("a bare .npy array, not a trace (expected a native .npz).", path)


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
                f"has MoE layers {_span(t.layer_ids)} but {ref} has {_span(first.layer_ids)} "
                "(a directory or list of traces must hold one model).", p,
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


def _span(ids: np.ndarray) -> str:
    v = ids.tolist()
    if v and v == list(range(v[0], v[-1] + 1)):
        return f"{v[0]}-{v[-1]}" if len(v) > 1 else str(v[0])
    return str(v[:6])[:-1] + (", ...]" if len(v) > 6 else "]")


def _read_many(paths: Sequence[Path]) -> Trace:
    """Several files: SGLang per-rank dumps of one run, or traces read as windows."""
    items = [(p, _read_file(p)) for p in paths]
    dumps = [(p, x) for p, x in items if isinstance(x, SglangRankDump)]
    if dumps and len(dumps) != len(items):
        odd = next(p for p, x in items if not isinstance(x, SglangRankDump))
        raise TraceFormatError(
            f"is not an SGLang per_pass / per_token dump like {dumps[0][0].name} "
            "(one kind of file per directory).", odd,
        )
    if dumps:
        return trace_from_rank_dumps([x for _, x in dumps])
    traces: list[Trace] = [x for _, x in items if isinstance(x, Trace)]
    if len(traces) == 1:
        return traces[0]
    return combine_windows(traces, [p.stem for p in paths], [p for p, _ in items])


def _dir_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix in TRACE_SUFFIXES)
    if not files:
        raise TraceFormatError(
            f"empty directory: no trace files ({', '.join(TRACE_SUFFIXES)}) and no "
            "meta_info.json.", path,
        )
    return files


def _split_windows(text: str) -> tuple[str, str | None]:
    """``"trace.npz#0-15"`` -> ``("trace.npz", "0-15")`` unless the whole text names a file."""
    base, sep, spec = text.rpartition("#")
    if not sep or not base or Path(text).exists():
        return text, None
    return base, spec


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
        base, spec = _split_windows(text)
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
            if is_trtllm_dir(path):
                return read_trtllm_dir(path)
            return _read_many(_dir_files(path))
        if not path.exists():
            raise TraceFormatError("no such file or directory.", path)
        item = _read_file(path)
        return trace_from_rank_dumps([item]) if isinstance(item, SglangRankDump) else item
    sources = list(source)
    if not sources:
        raise TraceFormatError("no trace files given.")
    if len(sources) == 1:
        return load_trace(sources[0])
    if any(_split_windows(str(s))[1] is not None for s in sources):
        parts = [load_trace(s) for s in sources]
        return combine_windows(parts, [Path(_split_windows(str(s))[0]).stem for s in sources])
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
