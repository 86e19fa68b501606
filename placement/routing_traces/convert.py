"""``placement trace convert``: any readable trace to a native ``.npz`` or a sharded directory.

Writing a sharded trace streams wherever the input allows, so memory follows one chunk and one
shard, not the trace:

* a native token-level ``.npz``: every per-token array is read chunk by chunk straight off its
  zip member (the ``.npy`` header, then rows; compressed members are inflated as they are
  read), never whole;
* an SGLang ``per_token`` directory (one dump per rank): one rank file at a time, in two passes
  (the first finds the MoE layers, top-k and token count; the second writes). Tokens come in
  file order, each file's records by (forward pass, rank): the same tokens, windows and source
  ranks as :func:`~placement.routing_traces.load_trace` gives, which orders all records of
  the run by (pass, rank) instead; every figure that sums over tokens is the same;
* a sharded trace: re-sharded shard by shard;
* anything else is read whole with :func:`~placement.routing_traces.load_trace` first.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from placement._util import Progress
from placement.errors import InputError, TraceFormatError
from placement.filekinds import Probe, split_spec
from placement.routing_traces.sharded import (
    DEFAULT_SHARD_TOKENS,
    ShardedTrace,
    is_sharded_dir,
    open_sharded,
    write_sharded,
)
from placement.routing_traces.trace import Trace

__all__ = ["ConvertResult", "convert_trace", "stream_native", "stream_sglang_per_token"]

_CHUNK_ASSIGNMENTS = 1 << 22


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_trace` wrote: ``path``, the trace (a :class:`Trace` for ``.npz``, a
    :class:`ShardedTrace` for a directory) and ``streamed`` (whether the input was read chunk
    by chunk rather than whole)."""

    path: Path
    trace: Trace | ShardedTrace
    streamed: bool


def convert_trace(sources: Sequence[str], output: str | Path, *, sharded: bool = False,
                  shard_tokens: int | None = None, progress: Progress | None = None
                  ) -> ConvertResult:
    """Read ``sources`` (one trace: a file, a directory, several files, ``bundled:NAME``,
    ``#SPEC`` allowed) and write it to ``output``: a native ``.npz``, or with ``sharded`` (or
    ``shard_tokens``) a sharded trace directory of ``shard_tokens`` tokens per shard (default
    :data:`~placement.routing_traces.sharded.DEFAULT_SHARD_TOKENS`), streaming (see the module
    docstring)."""
    from placement.routing_traces.native import write_native
    from placement.routing_traces.readers import load_trace

    if not sources:
        raise InputError("no trace to convert.")
    if shard_tokens is not None and shard_tokens < 1:
        raise InputError(f"Expected --shard-tokens >= 1, got {shard_tokens}.")
    out = Path(output)
    if not (sharded or shard_tokens is not None):
        t = load_trace(sources[0] if len(sources) == 1 else list(sources))
        write_native(t, out)
        return ConvertResult(out, t, False)
    n = shard_tokens or DEFAULT_SHARD_TOKENS
    stream = _stream(sources)
    if stream is None:
        t = load_trace(sources[0] if len(sources) == 1 else list(sources))
        if not t.is_token_level:
            raise InputError(
                f"{' '.join(sources)}: holds aggregated counts; a sharded trace holds "
                "token-level routing (convert counts to a native .npz: leave out --sharded).")
        st = write_sharded(t, out, n, progress=progress)
        return ConvertResult(out, st, False)
    chunks, names, total = stream
    st = write_sharded(chunks, out, n, window_names=names, progress=progress,
                       total_tokens=total)
    return ConvertResult(out, st, True)


Stream = tuple[Iterator[Trace], list[str] | None, int]


def _stream(sources: Sequence[str]) -> Stream | None:
    """A chunk stream for inputs that can be read chunk by chunk, else None."""
    from placement.routing_traces.readers import TRACE_SUFFIXES
    from placement.routing_traces.sglang import RANK_DUMP_READER

    if any(split_spec(s)[1] is not None for s in sources):
        return None
    paths = [Path(s) for s in sources]
    if len(paths) == 1 and is_sharded_dir(paths[0]):
        st = open_sharded(paths[0])
        return st.iter_chunks(), list(st.window_names), st.num_tokens
    if len(paths) == 1 and paths[0].is_dir():
        files = sorted(p for p in paths[0].iterdir() if p.is_file()
                       and not p.name.startswith(".") and p.suffix in TRACE_SUFFIXES)
    else:
        files = paths
    if not files or not all(p.is_file() for p in files):
        return None
    if len(files) == 1 and Probe(files[0]).container == "npz":
        return stream_native(files[0])
    if all(RANK_DUMP_READER.sniff(Probe(p)) for p in files):
        return stream_sglang_per_token(files)
    return None


# -------------------------------------------------------------------------------------------
# native .npz, member by member
# -------------------------------------------------------------------------------------------
_PER_TOKEN = ("topk_ids", "window", "source_rank", "topk_weights")


class _Member:
    """One ``.npy`` member of an open zip, read ``rows`` at a time."""

    def __init__(self, zf: zipfile.ZipFile, name: str) -> None:
        self.fh: IO[bytes] = zf.open(name + ".npy")
        version = np.lib.format.read_magic(self.fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.fh)
        self.shape: tuple[int, ...] = tuple(shape)
        self.fortran = bool(fortran)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read(self, rows: int) -> np.ndarray:
        want = rows * self.row_bytes
        buf = bytearray()
        while len(buf) < want:
            block = self.fh.read(want - len(buf))
            if not block:
                break
            buf += block
        if len(buf) != want:
            raise TraceFormatError("truncated array in the .npz archive.")
        return np.frombuffer(bytes(buf), dtype=self.dtype).reshape((rows, *self.shape[1:]))


def _small(zf: zipfile.ZipFile, name: str) -> np.ndarray | None:
    if name + ".npy" not in zf.namelist():
        return None
    with zf.open(name + ".npy") as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def stream_native(path: Path) -> Stream | None:
    """``(chunks, window names, tokens)`` of a native token-level ``.npz`` read member by
    member, or None when it is no plain token-level file (counts, Fortran order, odd
    metadata: read it whole, which also says what is wrong)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return None
    try:
        names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        if "topk_ids" not in names or "num_experts" not in names:
            zf.close()
            return None
        version = _small(zf, "format_version")
        if version is not None and (version.ndim != 0 or int(version) != 1):
            zf.close()
            return None
        meta: dict[str, Any] = {}
        for key in ("num_experts", "num_hidden_layers", "model"):
            a = _small(zf, key)
            if a is not None:
                if a.ndim != 0:
                    zf.close()
                    return None
                meta[key] = a.item()
        lids = _small(zf, "layer_ids")
        wn = _small(zf, "window_names")
        members = {n: _Member(zf, n) for n in _PER_TOKEN if n in names}
    except Exception:  # anything odd: the whole-file reader says what is wrong
        zf.close()
        return None
    ids = members["topk_ids"]
    T = ids.shape[0] if ids.shape else 0
    if (ids.fortran or len(ids.shape) != 3 or any(m.fortran or not m.shape or m.shape[0] != T
                                                  for m in members.values())):
        zf.close()
        return None
    chunk = max(1, _CHUNK_ASSIGNMENTS // max(ids.shape[1] * ids.shape[2], 1))
    window_names = None if wn is None else [str(x) for x in wn.reshape(-1).tolist()]

    def chunks() -> Iterator[Trace]:
        with contextlib.closing(zf):
            for start in range(0, T, chunk):
                n = min(chunk, T - start)
                arrays = {name: m.read(n) for name, m in members.items()}
                try:
                    yield Trace(
                        num_experts=int(meta["num_experts"]), topk_ids=arrays["topk_ids"],
                        layer_ids=lids, source_rank=arrays.get("source_rank"),
                        window=arrays.get("window"), topk_weights=arrays.get("topk_weights"),
                        model=None if meta.get("model") is None else str(meta["model"]),
                        num_hidden_layers=(None if meta.get("num_hidden_layers") is None
                                           else int(meta["num_hidden_layers"])),
                    )
                except TraceFormatError as exc:
                    raise TraceFormatError(exc.reason, path) from None

    return chunks(), window_names, T


# -------------------------------------------------------------------------------------------
# SGLang per_token directories, one rank file at a time
# -------------------------------------------------------------------------------------------
def _records(path: Path, order: Sequence[int] | None = None) -> Iterator[tuple[int, Any]] | None:
    """One rank file's records one at a time, each checked as
    :func:`~placement.routing_traces.sglang.parse_sglang_pt` checks a whole file (an
    :class:`SglangRankDump` of that record alone); a record is let go once it is out. None
    when the file is no ``per_pass`` / ``per_token`` dump (read it whole: that says what it
    is)."""
    from placement.routing_traces.sglang import rank_dump, torch_load_safe

    obj = torch_load_safe(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("records"), list) \
            or "last_physical_to_logical_map" not in obj:
        return None
    records: list[Any] = obj["records"]
    p2l = obj["last_physical_to_logical_map"]
    del obj

    def gen() -> Iterator[tuple[int, Any]]:
        for i in (range(len(records)) if order is None else order):
            rec, records[i] = records[i], None
            try:
                yield i, rank_dump({"records": [rec], "last_physical_to_logical_map": p2l},
                                    path)
            except TraceFormatError as exc:
                raise TraceFormatError(exc.reason.replace("records[0]", f"records[{i}]"),
                                       path) from None
            del rec

    return gen()


def stream_sglang_per_token(files: Sequence[Path]) -> Stream | None:
    """``(chunks, None, tokens)`` of an SGLang ``per_token`` run, one rank file in memory at a
    time and one record of it converted at a time (see the module docstring); None for
    ``per_pass`` dumps (counts: read whole)."""
    # 1. first pass: one model and mode, the MoE layers, top-k, tokens, each file's order
    first: _RunInfo | None = None
    moe: np.ndarray | None = None
    cols: np.ndarray | None = None
    total = 0
    orders: list[list[int]] = []
    for p in files:
        recs = _records(p)
        if recs is None:
            return None
        keys: list[tuple[int, int, int]] = []
        for i, d in recs:
            if d.topk_ids is None:
                return None  # per_pass: counts (read whole)
            if first is None:
                first = _RunInfo(d.path, d.physical_to_logical_map.shape, d.num_logical,
                                 d.mode, d.num_layers)
            else:
                _same_run(first, d)
            t = d.topk_ids[0]
            valid = t >= 0  # [layers, tokens, k]
            has_layer = np.asarray(valid.any(axis=(1, 2)))
            has_col = np.asarray(valid.any(axis=(0, 1)))
            moe = has_layer if moe is None else moe | has_layer
            if cols is None:
                cols = has_col
            elif has_col.shape[0] > cols.shape[0]:
                cols = np.concatenate(
                    [cols, np.zeros(has_col.shape[0] - cols.shape[0], bool)]) | has_col
            else:
                cols[: has_col.shape[0]] |= has_col
            total += t.shape[1]
            keys.append((int(d.forward_pass_id[0]), int(d.rank[0]), i))
        orders.append([i for _f, _r, i in sorted(keys)])  # records by (pass, rank)
    if first is None:
        return None
    where = first.path.parent if len(files) > 1 else first.path
    if total == 0:
        raise TraceFormatError("the per_token dumps hold no tokens.", where)
    if moe is None or cols is None or not moe.any():
        raise TraceFormatError("topk_ids_of_layer holds no expert id (all -1).", where)
    lids = np.flatnonzero(moe)
    k = int(np.flatnonzero(cols).max()) + 1
    E = first.num_logical
    layers = first.num_layers
    chunk = max(1, _CHUNK_ASSIGNMENTS // max(len(lids) * k, 1))

    # 2. second pass: logical ids, file by file, records by (pass, rank); chunks are cut from
    #    a few records at a time
    def chunks() -> Iterator[Trace]:
        rows = np.arange(len(lids))[:, None, None]
        small = np.int16 if E < 2**15 else np.int32
        for p, order in zip(files, orders, strict=True):
            recs = _records(p, order)
            assert recs is not None
            parts: list[np.ndarray] = []
            fp: list[np.ndarray] = []
            rk: list[np.ndarray] = []
            held = 0
            for j, (_i, d) in enumerate(recs):
                phys = d.topk_ids[0]
                n = phys.shape[1]
                if n:
                    sub = phys[lids]  # [L, n, 8] physical ids of the MoE layers
                    moe_map = d.physical_to_logical_map[lids]  # [L, P]
                    logical = np.where(sub >= 0, moe_map[rows, np.maximum(sub, 0)], -1)
                    if logical.shape[2] >= k:
                        logical = logical[:, :, :k]
                    else:
                        pad = np.full((len(lids), n, k - logical.shape[2]), -1)
                        logical = np.concatenate([logical, pad], axis=2)
                    parts.append(logical.transpose(1, 0, 2).astype(small))
                    fp.append(np.full(n, d.forward_pass_id[0], dtype=np.int64))
                    rk.append(np.full(n, d.rank[0], dtype=np.int64))
                    held += n
                del d, phys
                if parts and (held >= chunk or j == len(order) - 1):
                    yield Trace(num_experts=E, topk_ids=np.concatenate(parts),
                                layer_ids=lids, source_rank=np.concatenate(rk),
                                window=np.concatenate(fp), num_hidden_layers=layers)
                    parts, fp, rk, held = [], [], [], 0

    return chunks(), None, total


@dataclass(frozen=True)
class _RunInfo:
    """What the first rank file says about the run (the file itself is let go)."""

    path: Path
    map_shape: tuple[int, ...]
    num_logical: int
    mode: str
    num_layers: int


def _same_run(first: _RunInfo, d: Any) -> None:
    """The checks of :func:`~placement.routing_traces.sglang.trace_from_rank_dumps`: one
    model, one mode per directory."""
    from placement.routing_traces.sglang import check_same_run

    check_same_run(d, first.path, first.map_shape, first.num_logical, first.mode)
