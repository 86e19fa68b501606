"""Sharded token-level traces: a directory of fixed-size shards and a small manifest, read shard
by shard (memory follows one shard, not the trace).

Layout of a sharded trace directory::

    manifest.json                     format "placement-sharded-trace", version 1
    shard-00000.topk_ids.npy          [t, L, k] int16 (int32 when E >= 32768), -1 = none
    shard-00000.window.npy            [t] int32 / int64 raw window values
    shard-00000.source_rank.npy       [t] int32 (when the trace records source ranks)
    shard-00000.topk_weights.npy      [t, L, k] float32 (when recorded)
    shard-00001.topk_ids.npy ...

Arrays are plain uncompressed ``.npy`` so that they memory-map
(``np.load(mmap_mode="r", allow_pickle=False)``: :meth:`ShardedTrace.shard`); streaming reads
(:func:`iter_shard_arrays`) read them chunk by chunk instead, so that memory follows the chunk,
not the shard. The manifest holds the model (name,
``num_experts``, ``top_k``, ``layer_ids``, ``num_hidden_layers``, dense layer ids), the windows
(``[{"value", "name", "tokens"}]`` sorted by value: the raw window value of a token, its name
and how many tokens it holds), the number of source ranks, and every shard: its token count,
its first token (the tokens of the shards before it) and, per array, the file name, its size in
bytes and its sha256. Sizes and ``.npy`` headers (dtype, shape) are checked on every open;
checksums with ``verify=True`` (``placement trace convert`` verifies what it wrote).

Types and functions:

* :class:`ShardedTrace` (:func:`open_sharded`): the manifest, validated in one place; shards as
  :class:`~placement.routing_traces.trace.Trace` (:meth:`ShardedTrace.shard`,
  :meth:`ShardedTrace.iter_chunks`); counts gathered streaming; a window selection
  (``#SPEC``) filters every shard as it is read.
* :class:`ShardRef`: a small picklable description of one shard (files, token range, the window
  values kept) for workers; :func:`iter_shard_arrays` reads it chunk by chunk and
  :func:`reduce_shards` maps a function over shards and merges the results in shard order.
* :func:`write_sharded`: a trace, or chunks of one, written streaming and atomically (a
  temporary directory renamed into place).
* :func:`open_trace_source`: a :class:`ShardedTrace` for a sharded directory (``#SPEC`` kept),
  else :func:`~placement.routing_traces.readers.load_trace`.

numpy and the standard library only (``trace inspect`` imports it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np

from placement import _signals
from placement._io import atomic_write_text, clean_stale, ensure_dir, json_loads, temp_prefix
from placement._util import Progress
from placement.errors import InputError, TraceFormatError
from placement.filekinds import FileKind, Probe, split_spec
from placement.routing_traces.registry import Reader
from placement.routing_traces.trace import Trace

if TYPE_CHECKING:
    from placement.parallel import Backend

__all__ = [
    "DEFAULT_SHARD_TOKENS",
    "FORMAT",
    "MANIFEST",
    "READER",
    "VERSION",
    "ShardInfo",
    "ShardRef",
    "ShardedTrace",
    "is_sharded_dir",
    "iter_shard_arrays",
    "open_sharded",
    "open_trace_source",
    "reduce_shards",
    "write_sharded",
]

FORMAT = "placement-sharded-trace"
VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 1 << 20
"""Tokens per shard when none is given (20 layers x top-8 int16: 320 MB of routing)."""

ARRAYS = ("topk_ids", "window", "source_rank", "topk_weights")
"""The per-token arrays of a shard, in file order (the first two always, the others optional)."""

_CHUNK_ASSIGNMENTS = 1 << 22  # default chunk of the streaming counts: 4M assignments
_HASH_BLOCK = 1 << 24

R = TypeVar("R")


# -------------------------------------------------------------------------------------------
# the manifest, validated in one place
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardFile:
    """One array of one shard: file name (in the trace's directory), size and sha256."""

    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardInfo:
    """One shard of the manifest.

    Attributes:
        index: its position, 0-based.
        tokens: tokens it holds.
        first_token: index of its first token in the whole trace.
        files: ``{array name: ShardFile}`` (``topk_ids`` and ``window`` always).
        window_range: ``(lo, hi)`` global window indices of its first and last token's windows
            (the lowest and highest it holds), for skipping shards a selection excludes.
    """

    index: int
    tokens: int
    first_token: int
    files: dict[str, ShardFile]
    window_range: tuple[int, int]


@dataclass(frozen=True)
class Manifest:
    """The parsed, checked ``manifest.json`` (see the module docstring for the fields)."""

    model: str | None
    num_experts: int
    top_k: int
    layer_ids: tuple[int, ...]
    num_hidden_layers: int | None
    ids_dtype: str
    window_dtype: str
    num_tokens: int
    shard_tokens: int
    window_values: tuple[int, ...]
    window_names: tuple[str, ...]
    window_tokens: tuple[int, ...]
    num_source_ranks: int | None
    has_weights: bool
    shards: tuple[ShardInfo, ...]

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON data (what :func:`write_sharded` writes)."""
        dense: list[int] = []
        if self.num_hidden_layers is not None:
            traced = set(self.layer_ids)
            dense = [i for i in range(self.num_hidden_layers) if i not in traced]
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "layer_ids": list(self.layer_ids),
            "num_hidden_layers": self.num_hidden_layers,
            "dense_layer_ids": dense,
            "ids_dtype": self.ids_dtype,
            "window_dtype": self.window_dtype,
            "num_tokens": self.num_tokens,
            "shard_tokens": self.shard_tokens,
            "windows": [{"value": v, "name": n, "tokens": t} for v, n, t in
                        zip(self.window_values, self.window_names, self.window_tokens,
                            strict=True)],
            "num_source_ranks": self.num_source_ranks,
            "has_weights": self.has_weights,
            "num_shards": len(self.shards),
            "shards": [
                {"tokens": s.tokens, "first_token": s.first_token,
                 "window_range": list(s.window_range),
                 "files": {k: {"file": f.file, "bytes": f.bytes, "sha256": f.sha256}
                           for k, f in s.files.items()}}
                for s in self.shards
            ],
        }


_REQUIRED = ("format", "version", "num_experts", "top_k", "layer_ids", "ids_dtype",
             "window_dtype", "num_tokens", "shard_tokens", "windows", "num_shards", "shards")


def _bad(field_name: str, value: Any, expected: str) -> TraceFormatError:
    shown = json.dumps(value) if not isinstance(value, str) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return TraceFormatError(f"{MANIFEST}: {field_name} is {shown}, expected {expected}.")


def _int(data: dict[str, Any], key: str, where: str = "", *, lo: int = 0,
         optional: bool = False) -> Any:
    v = data.get(key)
    name = f"{where}{key}"
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(name, v, f"an integer >= {lo}")
    return v


def _parse_manifest(data: Any) -> Manifest:
    """Check ``data`` (parsed JSON) field by field; :class:`TraceFormatError` (without the
    path: the caller adds it) naming the field and its value."""
    # 1. the header
    if not isinstance(data, dict):
        raise TraceFormatError(f"{MANIFEST} is not a JSON object.")
    if data.get("format") != FORMAT:
        raise _bad("format", data.get("format"), repr(FORMAT))
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise TraceFormatError(f"{MANIFEST} lacks field {missing[0]!r}.")
    version = data["version"]
    if version != VERSION:
        raise TraceFormatError(f"{MANIFEST}: version {json.dumps(version)} is not supported "
                               f"(this version reads {VERSION}).")
    # 2. the model
    E = _int(data, "num_experts", lo=1)
    k = _int(data, "top_k", lo=1)
    lids = data["layer_ids"]
    if (not isinstance(lids, list) or not lids
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in lids)):
        raise _bad("layer_ids", lids, "a non-empty list of integers >= 0")
    if len(set(lids)) != len(lids):
        raise _bad("layer_ids", lids, "no repeated layer id")
    nhl = _int(data, "num_hidden_layers", lo=1, optional=True)
    if nhl is not None and nhl <= max(lids):
        raise _bad("num_hidden_layers", nhl, f"more than the largest layer id ({max(lids)})")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", model, "a string or null")
    ids_dtype = data["ids_dtype"]
    if ids_dtype not in ("int16", "int32"):
        raise _bad("ids_dtype", ids_dtype, "'int16' or 'int32'")
    if ids_dtype == "int16" and E > 2**15:
        raise _bad("ids_dtype", ids_dtype, f"'int32' for {E} experts")
    window_dtype = data["window_dtype"]
    if window_dtype not in ("int32", "int64"):
        raise _bad("window_dtype", window_dtype, "'int32' or 'int64'")
    # 3. windows
    wins = data["windows"]
    if not isinstance(wins, list) or not wins:
        raise _bad("windows", wins, "a non-empty list of {value, name, tokens}")
    values: list[int] = []
    names: list[str] = []
    wtok: list[int] = []
    for i, w in enumerate(wins):
        if not isinstance(w, dict):
            raise _bad(f"windows[{i}]", w, "an object {value, name, tokens}")
        v = w.get("value")
        if isinstance(v, bool) or not isinstance(v, int):
            raise _bad(f"windows[{i}].value", v, "an integer")
        if values and v <= values[-1]:
            raise _bad(f"windows[{i}].value", v, f"more than windows[{i - 1}].value "
                                                 "(windows sorted by value)")
        n = w.get("name")
        if not isinstance(n, str):
            raise _bad(f"windows[{i}].name", n, "a string")
        values.append(v)
        names.append(n)
        wtok.append(_int(w, "tokens", f"windows[{i}]."))
    num_tokens = _int(data, "num_tokens", lo=1)
    if sum(wtok) != num_tokens:
        raise TraceFormatError(f"{MANIFEST}: the windows hold {sum(wtok)} tokens but "
                               f"num_tokens is {num_tokens}.")
    R = _int(data, "num_source_ranks", lo=1, optional=True)
    has_w = data.get("has_weights", False)
    if not isinstance(has_w, bool):
        raise _bad("has_weights", has_w, "true or false")
    shard_tokens = _int(data, "shard_tokens", lo=1)
    # 4. shards
    shards_data = data["shards"]
    if not isinstance(shards_data, list) or not shards_data:
        raise _bad("shards", shards_data, "a non-empty list")
    num_shards = _int(data, "num_shards", lo=1)
    if num_shards != len(shards_data):
        raise TraceFormatError(f"{MANIFEST}: num_shards is {num_shards} but shards lists "
                               f"{len(shards_data)}.")
    wanted = ["topk_ids", "window"] + (["source_rank"] if R is not None else []) + (
        ["topk_weights"] if has_w else [])
    shards: list[ShardInfo] = []
    first = 0
    for i, s in enumerate(shards_data):
        where = f"shards[{i}]."
        if not isinstance(s, dict):
            raise _bad(f"shards[{i}]", s, "an object")
        tokens = _int(s, "tokens", where, lo=1)
        if tokens > shard_tokens:
            raise _bad(f"{where}tokens", tokens, f"at most shard_tokens ({shard_tokens})")
        ft = _int(s, "first_token", where)
        if ft != first:
            raise _bad(f"{where}first_token", ft, f"{first} (the tokens of the shards before it)")
        wr = s.get("window_range")
        if (not isinstance(wr, list) or len(wr) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in wr)
                or not 0 <= wr[0] <= wr[1] < len(values)):
            raise _bad(f"{where}window_range", wr, f"[lo, hi] window indices in 0..{len(values) - 1}")
        files_data = s.get("files")
        if not isinstance(files_data, dict):
            raise _bad(f"{where}files", files_data, "an object {array: {file, bytes, sha256}}")
        extra = sorted(set(files_data) - set(wanted))
        if extra:
            raise _bad(f"{where}files", sorted(files_data),
                       f"the arrays {wanted} ({extra[0]!r} is not one)")
        files: dict[str, ShardFile] = {}
        for name in wanted:
            f = files_data.get(name)
            fw = f"{where}files.{name}"
            if not isinstance(f, dict):
                raise TraceFormatError(f"{MANIFEST}: {where.rstrip('.')} lacks its {name} file.")
            fname = f.get("file")
            if not isinstance(fname, str) or not fname or "/" in fname or "\\" in fname \
                    or fname.startswith("."):
                raise _bad(f"{fw}.file", fname, "a file name in the trace's directory")
            digest = f.get("sha256")
            if not isinstance(digest, str) or len(digest) != 64:
                raise _bad(f"{fw}.sha256", digest, "64 hex digits")
            files[name] = ShardFile(fname, _int(f, "bytes", f"{fw}."), digest)
        shards.append(ShardInfo(i, tokens, ft, files, (wr[0], wr[1])))
        first += tokens
    if first != num_tokens:
        raise TraceFormatError(f"{MANIFEST}: the shards hold {first} tokens but num_tokens is "
                               f"{num_tokens}.")
    return Manifest(
        model=model, num_experts=E, top_k=k, layer_ids=tuple(lids), num_hidden_layers=nhl,
        ids_dtype=ids_dtype, window_dtype=window_dtype, num_tokens=num_tokens,
        shard_tokens=shard_tokens, window_values=tuple(values), window_names=tuple(names),
        window_tokens=tuple(wtok), num_source_ranks=R, has_weights=has_w,
        shards=tuple(shards),
    )


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    with path.open("rb") as fh:
        major, _minor = np.lib.format.read_magic(fh)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    return shape, dtype, fortran


def _expected(m: Manifest, s: ShardInfo, name: str) -> tuple[tuple[int, ...], str]:
    L, k = len(m.layer_ids), m.top_k
    if name == "topk_ids":
        return (s.tokens, L, k), m.ids_dtype
    if name == "topk_weights":
        return (s.tokens, L, k), "float32"
    if name == "window":
        return (s.tokens,), m.window_dtype
    return (s.tokens,), "int32"


def _check_files(m: Manifest, root: Path, verify: bool) -> None:
    """Every shard file: present, of the manifest's size, with the expected ``.npy`` header
    (dtype, shape); its sha256 too when ``verify``."""
    for s in m.shards:
        for name, f in s.files.items():
            p = root / f.file
            try:
                size = p.stat().st_size
            except OSError:
                raise TraceFormatError(f"shard {s.index}: {f.file} is missing.", root) from None
            if size != f.bytes:
                raise TraceFormatError(
                    f"{f.file} is {size} bytes but {MANIFEST} says {f.bytes} (truncated or "
                    "changed).", root)
            try:
                shape, dtype, fortran = _npy_header(p)
            except (ValueError, OSError, EOFError) as exc:
                raise TraceFormatError(f"{f.file} is not a .npy array ({exc}).", root) from None
            want_shape, want_dtype = _expected(m, s, name)
            if dtype.hasobject or dtype != np.dtype(want_dtype).newbyteorder("="):
                raise TraceFormatError(
                    f"{f.file} holds {dtype}, expected {want_dtype} ({name}).", root)
            if tuple(shape) != want_shape or fortran:
                raise TraceFormatError(
                    f"{f.file} has shape {tuple(shape)}, expected {want_shape} ({name}).", root)
            if verify and _sha256(p) != f.sha256:
                raise TraceFormatError(
                    f"{f.file}: sha256 does not match {MANIFEST} (the file changed or is "
                    "corrupt).", root)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------
# shard references: what a worker needs to read one shard
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardRef:
    """One shard, as a small picklable description for workers.

    Attributes:
        root: the trace's directory.
        index: the shard's position.
        tokens: tokens in the shard (before any window selection).
        first_token: index of its first token in the whole trace.
        files: ``((array name, file name), ...)``.
        keep: raw window values kept (None: every token).
        window_values: every window value of the trace, sorted (global window index =
            position here).
    """

    root: str
    index: int
    tokens: int
    first_token: int
    files: tuple[tuple[str, str], ...]
    keep: tuple[int, ...] | None = None
    window_values: tuple[int, ...] = field(default=(), repr=False)

    def path(self, name: str) -> Path | None:
        """The file of array ``name`` (None when the shard has none)."""
        for n, f in self.files:
            if n == name:
                return Path(self.root) / f
        return None

    def load(self, name: str) -> np.ndarray | None:
        """Array ``name``, memory-mapped read-only (None when the shard has none)."""
        p = self.path(name)
        if p is None:
            return None
        return np.load(p, mmap_mode="r", allow_pickle=False)


class _Rows:
    """One shard ``.npy`` read ``rows`` at a time with plain reads (no mapping stays resident:
    memory follows the chunk, not the shard)."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("rb")
        major, _minor = np.lib.format.read_magic(self.fh)
        read = (np.lib.format.read_array_header_1_0 if major == 1
                else np.lib.format.read_array_header_2_0)
        shape, _fortran, dtype = read(self.fh)
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row = int(np.prod(self.shape[1:], dtype=np.int64))
        self.offset = self.fh.tell()

    def read(self, start: int, n: int) -> np.ndarray:
        self.fh.seek(self.offset + start * self.row * self.dtype.itemsize)
        a = np.fromfile(self.fh, dtype=self.dtype, count=n * self.row)
        if a.size != n * self.row:
            raise TraceFormatError(f"{Path(self.fh.name).name} ends early (truncated).",
                                   Path(self.fh.name).parent)
        return a.reshape((n, *self.shape[1:]))

    def close(self) -> None:
        self.fh.close()


def iter_shard_arrays(ref: ShardRef, chunk_tokens: int | None = None
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of one shard: ``{"topk_ids" [t, L, k], "window" [t], "window_index" [t] (global
    0..W-1), "source_rank" [t], "topk_weights" [t, L, k], "token" [t] (index in the whole
    trace)}`` (the optional arrays only when the shard has them), tokens of windows not kept
    left out. Each chunk is read from the files as it is needed (memory follows the chunk)."""
    files = {n: _Rows(Path(ref.root) / f) for n, f in ref.files}
    try:
        ids = files["topk_ids"]
        T = ids.shape[0]
        if chunk_tokens is None:
            chunk_tokens = max(1, _CHUNK_ASSIGNMENTS // max(ids.row, 1))
        values = np.asarray(ref.window_values, dtype=np.int64)
        keep = None if ref.keep is None else np.asarray(ref.keep, dtype=np.int64)
        for start in range(0, T, chunk_tokens):
            n = min(chunk_tokens, T - start)
            w = files["window"].read(start, n)
            mask = None
            if keep is not None:
                mask = np.isin(w, keep)
                if not mask.any():
                    continue
                if mask.all():
                    mask = None
            out: dict[str, np.ndarray] = {name: (w if name == "window" else f.read(start, n))
                                          for name, f in files.items()}
            out["token"] = np.arange(ref.first_token + start, ref.first_token + start + n,
                                     dtype=np.int64)
            if mask is not None:
                out = {name: a[mask] for name, a in out.items()}
            out["window_index"] = np.searchsorted(values, out["window"]).astype(np.int32)
            yield out
    finally:
        for f in files.values():
            f.close()


def reduce_shards(fn: Callable[[ShardRef], R], refs: Sequence[ShardRef],
                  combine: Callable[[R, R], R], *, backend: Backend | None = None,
                  progress: Progress | None = None) -> R:
    """``fn`` over every shard (on ``backend``, default in this process), the results merged
    with ``combine`` in shard order, whatever order the workers finish in: the same result on
    every backend. ``fn`` must be a module-level function (it is pickled for workers)."""
    from placement.parallel import ordered_map

    if not refs:
        raise InputError("no shards to reduce (the selection keeps no token).")
    parts = ordered_map(fn, refs, backend, progress)
    return functools.reduce(combine, parts)


def _rank_counts_of_shard(args: tuple[ShardRef, int, int, int, int]) -> np.ndarray:
    """``[W, R, L, E]`` float64 counts of one shard (``args``: ref, W, R, L, E)."""
    ref, W, R, L, E = args
    out = np.zeros(W * R * L * E, dtype=np.int64)
    layer_off = (np.arange(L, dtype=np.int64) * E)[None, :, None]
    for a in iter_shard_arrays(ref):
        part = np.asarray(a["topk_ids"]).astype(np.int64)
        row = a["window_index"].astype(np.int64) * R
        if "source_rank" in a and R > 1:
            row = row + np.asarray(a["source_rank"]).astype(np.int64)
        flat = row[:, None, None] * (L * E) + layer_off + part
        out += np.bincount(flat[part >= 0], minlength=out.size)[: out.size]
    return out.reshape(W, R, L, E)


# -------------------------------------------------------------------------------------------
# the sharded trace
# -------------------------------------------------------------------------------------------
class ShardedTrace:
    """A token-level trace on disk, shard by shard (see the module docstring).

    It answers what a :class:`Trace` answers about its shape (``num_experts``, ``top_k``,
    ``layer_ids``, ``window_names``, ...) from the manifest, and gives its tokens as
    :class:`Trace` chunks. Immutable; :meth:`select_windows` returns a new one that filters
    every shard as it is read.
    """

    def __init__(self, root: str | Path, manifest: Manifest,
                 windows: tuple[int, ...] | None = None) -> None:
        self._root = Path(root)
        self._m = manifest
        self._sel = windows  # global window indices kept, sorted; None = all

    # -- shape -------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The trace's directory."""
        return self._root

    @property
    def manifest(self) -> Manifest:
        return self._m

    is_token_level = True
    kind = "tokens"

    @property
    def num_experts(self) -> int:
        return self._m.num_experts

    @property
    def top_k(self) -> int:
        return self._m.top_k

    @property
    def model(self) -> str | None:
        return self._m.model

    @property
    def num_hidden_layers(self) -> int | None:
        return self._m.num_hidden_layers

    @property
    def layer_ids(self) -> np.ndarray:
        """``[L]`` decoder-layer index of every traced MoE layer (read-only)."""
        a = np.asarray(self._m.layer_ids, dtype=np.int64)
        a.flags.writeable = False
        return a

    @property
    def num_layers(self) -> int:
        return len(self._m.layer_ids)

    @property
    def dense_layer_ids(self) -> tuple[int, ...]:
        if self._m.num_hidden_layers is None:
            return ()
        traced = set(self._m.layer_ids)
        return tuple(i for i in range(self._m.num_hidden_layers) if i not in traced)

    @property
    def selected_windows(self) -> tuple[int, ...]:
        """Global indices of the windows kept (all of them without a selection)."""
        return self._sel if self._sel is not None else tuple(range(len(self._m.window_values)))

    @property
    def num_windows(self) -> int:
        return len(self.selected_windows)

    @property
    def window_names(self) -> tuple[str, ...]:
        return tuple(self._m.window_names[i] for i in self.selected_windows)

    @property
    def num_tokens(self) -> int:
        """T, the tokens kept (every window's tokens from the manifest)."""
        return sum(self._m.window_tokens[i] for i in self.selected_windows)

    @property
    def has_source_rank(self) -> bool:
        return self._m.num_source_ranks is not None

    @property
    def num_source_ranks(self) -> int | None:
        return self._m.num_source_ranks

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        """Every shard of the manifest (a selection does not change them)."""
        return self._m.shards

    def __repr__(self) -> str:
        return (f"ShardedTrace({str(self._root)!r}, tokens={self.num_tokens}, "
                f"top_k={self.top_k}, layers={self.num_layers}, experts={self.num_experts}, "
                f"windows={self.num_windows}, shards={len(self.shards)}, model={self.model!r})")

    # -- selection ---------------------------------------------------------------------------
    def select_windows(self, windows: Sequence[int]) -> ShardedTrace:
        """The trace of the given windows (indices ``0..W-1`` of this trace's windows)."""
        cur = self.selected_windows
        idx = sorted({int(w) for w in windows})
        for w in idx:
            if not 0 <= w < len(cur):
                raise IndexError(f"window index {w} out of range [0, {len(cur)}).")
        return ShardedTrace(self._root, self._m, tuple(cur[w] for w in idx))

    def refs(self, *, every: bool = False) -> list[ShardRef]:
        """A :class:`ShardRef` per shard that may hold a kept token (by its window range), or
        per shard with ``every``; each filters by the selection as it reads."""
        keep = None
        sel = set(self.selected_windows)
        if self._sel is not None:
            keep = tuple(self._m.window_values[i] for i in self._sel)
        vals = self._m.window_values
        return [
            ShardRef(str(self._root), s.index, s.tokens, s.first_token,
                     tuple((n, f.file) for n, f in s.files.items()), keep, vals)
            for s in self._m.shards
            if every or any(w in sel for w in range(s.window_range[0], s.window_range[1] + 1))
        ]

    # -- tokens ------------------------------------------------------------------------------
    def _trace(self, parts: dict[str, np.ndarray]) -> Trace:
        widx = parts["window_index"]
        present = np.unique(widx)
        return Trace(
            num_experts=self.num_experts,
            topk_ids=parts["topk_ids"],
            layer_ids=self._m.layer_ids,
            source_rank=parts.get("source_rank"),
            window=parts["window"],
            topk_weights=parts.get("topk_weights"),
            window_names=[self._m.window_names[int(i)] for i in present] if widx.size else None,
            model=self.model,
            num_hidden_layers=self.num_hidden_layers,
        )

    def shard(self, i: int) -> Trace:
        """Shard ``i`` (its kept tokens; maybe none) as a :class:`Trace`: the files
        memory-mapped (read-only, nothing copied) when no window selection filters it."""
        if not 0 <= i < len(self._m.shards):
            raise IndexError(f"shard index {i} out of range [0, {len(self._m.shards)}).")
        ref = self.refs(every=True)[i]
        if ref.keep is None:
            parts = {n: a for n, _f in ref.files if (a := ref.load(n)) is not None}
            parts["window_index"] = np.searchsorted(
                np.asarray(ref.window_values, dtype=np.int64), parts["window"]).astype(np.int32)
            return self._trace(parts)
        chunks = list(iter_shard_arrays(ref, max(ref.tokens, 1)))
        if chunks:
            return self._trace(chunks[0])
        empty: dict[str, np.ndarray] = {
            "topk_ids": np.zeros((0, self.num_layers, self.top_k), np.int16),
            "window": np.zeros(0, np.int64), "window_index": np.zeros(0, np.int32)}
        if self.has_source_rank:
            empty["source_rank"] = np.zeros(0, np.int32)
        return self._trace(empty)

    def iter_chunks(self, tokens: int | None = None) -> Iterator[Trace]:
        """The kept tokens as :class:`Trace` chunks of at most ``tokens`` tokens (default about
        4 million assignments), in order; a chunk never spans two shards."""
        if tokens is not None and tokens < 1:
            raise InputError(f"Expected chunk tokens >= 1, got {tokens}.")
        for ref in self.refs():
            for parts in iter_shard_arrays(ref, tokens):
                yield self._trace(parts)

    def iter_token_chunks(self, chunk_tokens: int
                          ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """``(topk_ids [t, L, k], source_rank [t] or None)`` chunks, as
        :meth:`Trace.iter_token_chunks` gives them."""
        for ref in self.refs():
            for parts in iter_shard_arrays(ref, chunk_tokens):
                yield parts["topk_ids"], parts.get("source_rank")

    def to_trace(self) -> Trace:
        """The whole (selected) trace in memory, one :class:`Trace`."""
        parts = [p for ref in self.refs() for p in iter_shard_arrays(ref, max(ref.tokens, 1))]
        if not parts:
            raise InputError("the window selection keeps no token.")
        cat = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        return self._trace(cat)

    def sample(self, max_tokens: int) -> Trace:
        """A deterministic token sample of at most ``max_tokens`` kept tokens, in one streaming
        pass: the whole trace when it fits, else every ``s``-th kept token (``s = ceil(T /
        max_tokens)``), so every window and shard is represented in proportion."""
        if max_tokens < 1:
            raise InputError(f"Expected a sample of >= 1 tokens, got {max_tokens}.")
        T = self.num_tokens
        if T <= max_tokens:
            return self.to_trace()
        stride = -(-T // max_tokens)
        parts: list[dict[str, np.ndarray]] = []
        seen = 0
        for ref in self.refs():
            for a in iter_shard_arrays(ref):
                n = a["topk_ids"].shape[0]
                first = (-seen) % stride  # the chunk's first kept index that is a multiple
                pick = np.arange(first, n, stride)
                if pick.size:
                    parts.append({k: np.asarray(v)[pick] for k, v in a.items()})
                seen += n
        cat = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        return self._trace(cat)

    # -- counts, streaming ---------------------------------------------------------------------
    def window_rank_counts(self, *, backend: Backend | None = None,
                           progress: Progress | None = None) -> np.ndarray:
        """``[W, R, L, E]`` counts per kept window and source rank (R = 1 without ranks),
        gathered shard by shard (integer sums: the same on every backend)."""
        W_all = len(self._m.window_values)
        R = self._m.num_source_ranks or 1
        L, E = self.num_layers, self.num_experts
        refs = self.refs()
        args = [(r, W_all, R, L, E) for r in refs]
        if not args:
            out = np.zeros((W_all, R, L, E), dtype=np.int64)
        else:
            from placement.parallel import ordered_map

            parts = ordered_map(_rank_counts_of_shard, args, backend, progress)
            out = functools.reduce(np.add, parts)
        return out[list(self.selected_windows)].astype(np.float64)

    def window_counts(self) -> np.ndarray:
        """``[W, L, E]`` tokens routed to every expert, per kept window."""
        return self.window_rank_counts().sum(axis=1)

    def counts(self) -> np.ndarray:
        """``[L, E]`` tokens routed to every expert over the kept tokens."""
        return self.window_rank_counts().sum(axis=(0, 1))

    def rank_counts(self) -> np.ndarray:
        """``[R, L, E]`` per source rank (the trace must record source ranks)."""
        if not self.has_source_rank:
            from placement.errors import CapabilityError

            raise CapabilityError("this trace does not record source ranks.")
        return self.window_rank_counts().sum(axis=0)

    def counts_trace(self) -> Trace:
        """An aggregated :class:`Trace` of the kept tokens' counts ``[W, R, L, E]`` (what the
        solver's counts path needs), gathered streaming."""
        wrc = self.window_rank_counts()
        return Trace(num_experts=self.num_experts, counts=wrc, layer_ids=self._m.layer_ids,
                     window_names=self.window_names, model=self.model,
                     num_hidden_layers=self.num_hidden_layers, top_k=self.top_k)

    @property
    def num_assignments(self) -> float:
        """Token-expert assignments of the kept tokens (streamed)."""
        return float(self.window_rank_counts().sum())


# -------------------------------------------------------------------------------------------
# open
# -------------------------------------------------------------------------------------------
def is_sharded_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a ``manifest.json`` of this format."""
    p = Path(path) / MANIFEST
    if not p.is_file():
        return False
    try:
        with p.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return FORMAT.encode() in head


def open_sharded(path: str | Path, *, verify: bool = False) -> ShardedTrace:
    """Open a sharded trace directory: the manifest checked field by field, every shard
    file's size and ``.npy`` header checked, the sha256 of every file too with ``verify``.

    Raises :class:`TraceFormatError` (one line naming the directory, the field or file and the
    value) for anything wrong.
    """
    root = Path(path)
    mp = root / MANIFEST
    if not root.is_dir():
        raise TraceFormatError("not a directory." if root.exists() else "no such directory.",
                               root)
    if not mp.is_file():
        raise TraceFormatError(f"no {MANIFEST}: not a sharded trace directory.", root)
    try:
        data = json_loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"cannot read {MANIFEST} ({exc}).", root) from None
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{MANIFEST} is not valid JSON ({exc.msg} at line {exc.lineno}).",
                               root) from None
    try:
        m = _parse_manifest(data)
    except TraceFormatError as exc:
        raise TraceFormatError(exc.reason, root) from None
    _check_files(m, root, verify)
    return ShardedTrace(root, m)


def open_trace_source(source: str | Path) -> Trace | ShardedTrace:
    """``source`` (``PATH[#SPEC]``) as a :class:`ShardedTrace` when it names a sharded trace
    directory (the window selection applied lazily), else read whole with
    :func:`~placement.routing_traces.readers.load_trace`."""
    text = str(source)
    base, spec = split_spec(text)
    if is_sharded_dir(base):
        st = open_sharded(base)
        if spec is None:
            return st
        from placement.routing_traces.windows import parse_window_spec

        try:
            return st.select_windows(parse_window_spec(spec, st.window_names))
        except InputError as exc:
            raise TraceFormatError(str(exc), base) from None
    from placement.routing_traces.readers import load_trace

    return load_trace(source)


# -------------------------------------------------------------------------------------------
# write
# -------------------------------------------------------------------------------------------
def _npy_header_bytes(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The ``.npy`` v1.0 header of a C-order array of ``shape`` and ``dtype``."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape})
    return buf.getvalue()


class _OpenArray:
    """One shard ``.npy`` being written row block by row block, hashed as it goes."""

    def __init__(self, path: Path, rows: int, like: np.ndarray) -> None:
        self.path = path
        self.dtype = like.dtype
        self.row_shape = tuple(like.shape[1:])
        self.fh: IO[bytes] = path.open("wb")
        self.header = _npy_header_bytes((rows, *self.row_shape), self.dtype)
        self.fh.write(self.header)
        self.sha = hashlib.sha256(self.header)

    def write(self, a: np.ndarray) -> None:
        arr: Any = np.ascontiguousarray(a, dtype=self.dtype)
        data = memoryview(arr).cast("B")
        self.sha.update(data)
        self.fh.write(data)

    def close(self, rows: int, expected: int) -> ShardFile:
        """Finish with ``rows`` rows (``expected`` were announced in the header)."""
        if rows != expected:  # the last shard: the header says how many rows it has
            header = _npy_header_bytes((rows, *self.row_shape), self.dtype)
            if len(header) == len(self.header):
                self.fh.seek(0)
                self.fh.write(header)
            else:  # another header length: move the rows (rare: a digit crosses 64 bytes)
                self.fh.close()
                tmp = self.path.with_suffix(".move")
                os.rename(self.path, tmp)
                with tmp.open("rb") as src, self.path.open("wb") as dst:
                    src.seek(len(self.header))
                    dst.write(header)
                    shutil.copyfileobj(src, dst, _HASH_BLOCK)
                tmp.unlink()
                self.fh = self.path.open("rb+")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        digest = self.sha.hexdigest() if rows == expected else _sha256(self.path)
        return ShardFile(self.path.name, self.path.stat().st_size, digest)


class _ShardWriter:
    """Writes chunks straight into the open files of the current shard (nothing buffered:
    memory is one chunk, whatever the shard's or the trace's size) and starts the next shard
    every ``shard_tokens`` tokens."""

    def __init__(self, root: Path, shard_tokens: int) -> None:
        self.root = root
        self.shard_tokens = shard_tokens
        self.open: dict[str, _OpenArray] | None = None
        self.fill = 0
        self.win: dict[int, int] = {}
        # per shard: tokens, files, (window values present, their token counts)
        self.shards: list[tuple[int, dict[str, ShardFile], tuple[np.ndarray, np.ndarray]]] = []
        self.written = 0

    @property
    def pending_tokens(self) -> int:
        return self.fill

    def add(self, parts: dict[str, np.ndarray]) -> None:
        n = parts["topk_ids"].shape[0]
        start = 0
        while start < n:
            if self.open is None:
                i = len(self.shards)
                self.open = {name: _OpenArray(self.root / f"shard-{i:05d}.{name}.npy",
                                              self.shard_tokens, parts[name])
                             for name in ARRAYS if name in parts}
            take = min(n - start, self.shard_tokens - self.fill)
            for name, f in self.open.items():
                f.write(parts[name][start:start + take])
            u, c = np.unique(parts["window"][start:start + take], return_counts=True)
            for v, cnt in zip(u.tolist(), c.tolist(), strict=True):
                self.win[v] = self.win.get(v, 0) + cnt
            self.fill += take
            start += take
            if self.fill == self.shard_tokens:
                self._close()

    def finish(self) -> None:
        if self.fill:
            self._close()

    def _close(self) -> None:
        assert self.open is not None
        files = {name: f.close(self.fill, self.shard_tokens) for name, f in self.open.items()}
        vals = np.asarray(sorted(self.win), dtype=np.int64)
        cnts = np.asarray([self.win[int(v)] for v in vals.tolist()], dtype=np.int64)
        self.shards.append((self.fill, files, (vals, cnts)))
        self.written += self.fill
        self.open, self.fill, self.win = None, 0, {}


def _chunks_of(source: Trace | Iterable[Trace], chunk: int) -> Iterator[Trace]:
    if isinstance(source, Trace):
        if not source.is_token_level:
            raise InputError("a counts trace cannot be sharded: sharded traces hold token-level "
                             "routing (write it as a native .npz instead).")
        T = int(source.num_tokens or 0)
        if T == 0:
            return
        if chunk >= T:
            yield source
            return
        ids = source.topk_ids
        for start in range(0, T, chunk):
            sl = slice(start, start + chunk)
            yield Trace(
                num_experts=source.num_experts, topk_ids=ids[sl], layer_ids=source.layer_ids,
                source_rank=None if source.source_rank is None else source.source_rank[sl],
                window=(source.window[sl] if source.window is not None else
                        np.zeros(ids[sl].shape[0], np.int64)),
                topk_weights=None if source.topk_weights is None else source.topk_weights[sl],
                model=source.model, num_hidden_layers=source.num_hidden_layers,
                window_names=_chunk_names(source, sl),
            )
        return
    yield from source


def _chunk_names(trace: Trace, sl: slice) -> list[str]:
    """The names of the windows present in ``trace``'s tokens ``sl`` (value order)."""
    present = np.unique(trace.window_index[sl])
    return [trace.window_names[int(i)] for i in present]


def write_sharded(source: Trace | Iterable[Trace], directory: str | Path,
                  shard_tokens: int = DEFAULT_SHARD_TOKENS, *,
                  window_names: Sequence[str] | None = None, verify: bool = True,
                  progress: Progress | None = None, total_tokens: int | None = None
                  ) -> ShardedTrace:
    """Write a token-level trace as a sharded trace directory, streaming and atomically.

    Args:
        source: a :class:`Trace`, or :class:`Trace` chunks of one trace (same experts and
            layer ids; window names, when given per chunk, must agree on every raw window
            value). Only one chunk and one shard are held at a time.
        directory: where to write; an existing sharded trace (or empty directory) there is
            replaced once the new one is complete, anything else is refused.
        shard_tokens: tokens per shard (the last shard holds the rest).
        window_names: a name per window in raw-value order, overriding the chunks' names.
        verify: re-read every file after writing and check its sha256.
        progress: ``progress(tokens_written, total_tokens)`` after each chunk (``total`` 0 when
            ``total_tokens`` is unknown).
        total_tokens: the tokens expected, for ``progress``.

    Returns:
        The :class:`ShardedTrace` written (opened from disk).
    """
    if shard_tokens < 1:
        raise InputError(f"Expected shard tokens >= 1, got {shard_tokens}.")
    root = Path(directory)
    # 1. where: refuse to replace what is not ours
    if root.exists():
        if not root.is_dir():
            raise InputError(f"{root}: exists and is not a directory; a sharded trace is a "
                             "directory (give a new path).")
        if not is_sharded_dir(root) and any(root.iterdir()):
            raise InputError(f"{root}: a directory that is not a sharded trace and not empty; "
                             "refusing to write into it (give a new path).")
    # the partial shards live in .NAME.PID.XXXXXXXX.tmp/ beside it until the rename; one a
    # killed run left is removed here (clean_stale), one this run leaves on a signal at once
    ensure_dir(root.parent, root)
    clean_stale(root.parent, root.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(root.name), suffix=".tmp", dir=root.parent))
    _signals.track_temp(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a trace directory is shared like a file
    try:
        # 2. shards, chunk by chunk
        writer = _ShardWriter(tmp, shard_tokens)
        first: Trace | None = None
        names: dict[int, str] = {}
        ranks = -1
        chunk = max(1, _CHUNK_ASSIGNMENTS // 64)
        if isinstance(source, Trace):
            chunk = max(1, _CHUNK_ASSIGNMENTS // max(source.num_layers * (source.top_k or 1), 1))
            total_tokens = source.num_tokens
        for t in _chunks_of(source, chunk):
            if first is None:
                first = t
            else:
                _check_same(first, t)
            if (t.source_rank is None) != (first.source_rank is None):
                raise InputError("chunks disagree on source ranks (some have them, some not).")
            if (t.topk_weights is None) != (first.topk_weights is None):
                raise InputError("chunks disagree on topk_weights (some have them, some not).")
            n = int(t.num_tokens or 0)
            if n == 0:
                continue
            w = t.window if t.window is not None else np.zeros(n, np.int64)
            uniq = np.unique(w)
            for v, name in zip(uniq.tolist(), t.window_names, strict=True):
                if names.setdefault(int(v), name) != name:
                    raise InputError(f"window {v} is named both {names[int(v)]!r} and {name!r}.")
            parts: dict[str, np.ndarray] = {"topk_ids": t.topk_ids,
                                            "window": w.astype(np.int64, copy=False)}
            if t.source_rank is not None:
                parts["source_rank"] = t.source_rank
                ranks = max(ranks, int(t.source_rank.max()))
            if t.topk_weights is not None:
                parts["topk_weights"] = t.topk_weights
            writer.add(parts)
            if progress is not None:
                progress(writer.written + writer.pending_tokens, total_tokens or 0)
        writer.finish()
        if first is None or not writer.shards:
            raise InputError("the trace holds no token: nothing to shard.")
        # 3. the manifest, windows in value order
        values = sorted(names)
        if window_names is not None:
            if len(window_names) != len(values):
                raise InputError(f"Expected {len(values)} window names (one per window), got "
                                 f"{len(window_names)}.")
            names = {v: str(n) for v, n in zip(values, window_names, strict=True)}
        vpos = {v: i for i, v in enumerate(values)}
        wtok = np.zeros(len(values), dtype=np.int64)
        infos: list[ShardInfo] = []
        start = 0
        for i, (n, files, (wvals, wcounts)) in enumerate(writer.shards):
            pos = np.asarray([vpos[int(v)] for v in wvals.tolist()], dtype=np.int64)
            wtok[pos] += wcounts
            infos.append(ShardInfo(i, n, start, files, (int(pos[0]), int(pos[-1]))))
            start += n
        m = Manifest(
            model=first.model, num_experts=first.num_experts, top_k=int(first.top_k or 1),
            layer_ids=tuple(int(x) for x in first.layer_ids.tolist()),
            num_hidden_layers=first.num_hidden_layers,
            ids_dtype=str(first.topk_ids.dtype),
            window_dtype="int64",
            num_tokens=start, shard_tokens=shard_tokens,
            window_values=tuple(values), window_names=tuple(names[v] for v in values),
            window_tokens=tuple(int(x) for x in wtok), num_source_ranks=ranks + 1 if ranks >= 0
            else None, has_weights=first.topk_weights is not None, shards=tuple(infos),
        )
        atomic_write_text(tmp / MANIFEST, _manifest_text(m.to_json()))
        opened = open_sharded(tmp, verify=verify)
        # 4. into place
        _replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _signals.untrack_temp(tmp)
    return ShardedTrace(root, opened.manifest)


def _manifest_text(data: dict[str, Any]) -> str:
    """The manifest as JSON: a field per line, a window or shard per line."""
    def dump(v: Any) -> str:
        return json.dumps(v, separators=(", ", ": "))

    lines = []
    for k, v in data.items():
        if k in ("windows", "shards") and isinstance(v, list):
            body = ",\n".join(f"  {dump(x)}" for x in v)
            lines.append(f" {json.dumps(k)}: [\n{body}\n ]")
        else:
            lines.append(f" {json.dumps(k)}: {dump(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _check_same(first: Trace, t: Trace) -> None:
    if t.num_experts != first.num_experts or not np.array_equal(t.layer_ids, first.layer_ids) \
            or t.top_k != first.top_k:
        raise InputError(
            f"chunks of one trace disagree: {t.num_experts} experts, layers "
            f"{t.layer_ids.tolist()[:8]}, top-{t.top_k} after {first.num_experts} experts, "
            f"layers {first.layer_ids.tolist()[:8]}, top-{first.top_k}.")


def _replace_dir(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``; an existing ``root`` (checked by the caller) is moved aside
    first and removed after."""
    old: Path | None = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, root)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------------------------------
# the kind, for load_trace and identify
# -------------------------------------------------------------------------------------------
def _sniff(probe: Probe) -> bool:
    return probe.container == "dir" and MANIFEST in probe.entries and is_sharded_dir(probe.path)


READER = Reader(
    kind=FileKind("sharded-trace", "trace", "a routing trace (sharded directory)"),
    sniff=_sniff,
    read=lambda p: open_sharded(p.path).to_trace(),
)
"""A sharded trace directory, read whole by :func:`load_trace` (commands that stream open it
with :func:`open_trace_source` instead)."""
