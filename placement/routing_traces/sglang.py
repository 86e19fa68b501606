"""SGLang expert-distribution files, read into a :class:`Trace`.

Three kinds of file, all written by SGLang's ``ExpertDistributionRecorder``
(``python/sglang/srt/eplb/expert_distribution.py``) or taken by ``--init-expert-location``:

* ``{"logical_count": [layers][E]}`` JSON (or ``[steps][layers][E]``): tokens routed to each
  logical expert, one row per decoder layer, dense layers included (all-zero rows).
* the ``stat`` recorder dump (``.pt``): a dict ``{"rank", "logical_count": [steps, layers, E],
  "average_utilization_rate_over_window"}``; ``logical_count`` is already summed over ranks.
* the ``per_pass`` / ``per_token`` recorder dumps (``.pt``, one per rank): a dict
  ``{"records": [...], "last_physical_to_logical_map": [layers, P]}``; every record holds
  ``forward_pass_id``, ``rank``, ``global_physical_count [layers, P]`` and, in ``per_token`` mode,
  ``topk_ids_of_layer [layers, tokens, 8]`` int32 PHYSICAL expert ids padded with ``-1``.

The layer axis of every SGLang file counts ALL decoder layers. A :class:`Trace` holds the MoE
layers only: rows that are zero everywhere (no token routed in any window) are the dense layers,
``layer_ids`` are the other rows' indices and ``num_hidden_layers`` is the number of rows, so
``trace.dense_layer_ids`` gives the dense rows back for export.

``.pt`` files are read with ``torch.load(weights_only=True, map_location="cpu")`` only: a pickle
that asks for anything but plain tensors and containers is refused, never run.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import json_loads
from placement._util import int_array
from placement.errors import TraceFormatError
from placement.filekinds import INVALID, FileKind, Probe
from placement.routing_traces.registry import Reader
from placement.routing_traces.trace import Trace

__all__ = [
    "COUNTS_READER",
    "RANK_DUMP_READER",
    "STAT_READER",
    "SglangRankDump",
    "parse_sglang_pt",
    "read_sglang_json",
    "torch_load_safe",
    "trace_from_logical_count",
    "trace_from_rank_dumps",
]


# -------------------------------------------------------------------------------------------
# safe loading
# -------------------------------------------------------------------------------------------
_REFUSED = re.compile(
    r"(unsupported GLOBAL [^\s]+|Unsupported global: GLOBAL [^\s]+|Unsupported operand \d+)",
    re.IGNORECASE,
)


def torch_load_safe(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")``, errors as one line.

    A pickle that wants to build arbitrary objects (and so could run code) is refused by torch's
    weights-only unpickler before anything runs; that refusal becomes a :class:`TraceFormatError`.
    """
    path = Path(path)
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = _REFUSED.search(str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise TraceFormatError(
            f"refusing to load: the pickle asks for more than plain tensor data{what}; "
            "only torch.load(weights_only=True) files are read and nothing in this one was run.",
            path,
        ) from None
    except FileNotFoundError:
        raise TraceFormatError("no such file.", path) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for broken archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceFormatError(f"not a readable torch file (truncated or corrupt: {first}).",
                               path) from None


def _to_numpy(value: Any, name: str, path: Path) -> np.ndarray:
    """A tensor, array or nested list as a numpy array."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        try:
            return np.asarray(value.detach().cpu().numpy())
        except (TypeError, RuntimeError) as exc:  # e.g. bfloat16, which numpy lacks
            raise TraceFormatError(f"{name} cannot be read as numbers ({exc}).", path) from None
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list | tuple):
        try:
            return np.asarray(value)
        except ValueError:
            raise TraceFormatError(f"{name} has ragged rows.", path) from None
    raise TraceFormatError(f"Expected {name} to be a tensor, got {type(value).__name__}.", path)


def _int_array(value: Any, name: str, ndim: int, path: Path) -> np.ndarray:
    return int_array(_to_numpy(value, name, path), name, ndim, error=TraceFormatError,
                     path=path).astype(np.int64, copy=False)


def _check_counts(a: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Numbers, finite, non-negative; returned as float64."""
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer)
                               or np.issubdtype(a.dtype, np.floating)):
        raise TraceFormatError(f"Expected {name} to hold numbers, got dtype {a.dtype}.", path)
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise TraceFormatError(f"{name} holds NaN or infinite values.", path)
    if a.size and a.min() < 0:
        raise TraceFormatError(f"{name} holds negative counts (min {a.min():g}).", path)
    return a


# -------------------------------------------------------------------------------------------
# logical_count (JSON and the stat dump)
# -------------------------------------------------------------------------------------------
def trace_from_logical_count(
    logical_count: Any, path: Path, *, drop_empty_steps: bool = False, model: str | None = None
) -> Trace:
    """A counts :class:`Trace` from SGLang's ``logical_count``.

    Args:
        logical_count: ``[layers, E]`` or ``[steps, layers, E]`` tokens per logical expert, one
            row per decoder layer (dense layers all zero).
        path: the file it came from (for messages).
        drop_empty_steps: drop steps that are zero everywhere (the recorder's unfilled buffer).

    Returns a trace with windows = steps (one window for 2-D input; named after the file), the
    MoE layers (rows with any count) as ``layer_ids`` and ``num_hidden_layers`` = rows.
    """
    a = _check_counts(logical_count, "logical_count", path)
    if a.ndim == 2:
        a = a[None]
        names: list[str] = [path.stem]
    elif a.ndim == 3:
        names = [str(i) for i in range(a.shape[0])]
    else:
        raise TraceFormatError(
            f"Expected logical_count [layers, E] or [steps, layers, E], got shape {a.shape}.", path
        )
    if min(a.shape) < 1:
        raise TraceFormatError(f"logical_count is empty (shape {a.shape}).", path)
    # 1. steps the recorder never filled are all zero
    if drop_empty_steps:
        filled = np.flatnonzero(a.reshape(a.shape[0], -1).any(axis=1))
        a = a[filled]
        names = [names[i] for i in filled.tolist()]
    # 2. decoder layers that never routed a token are the dense ones
    moe = a.any(axis=(0, 2))
    if a.size == 0 or not moe.any():
        raise TraceFormatError("logical_count is all zero: no token was routed.", path)
    layer_ids = np.flatnonzero(moe)
    try:
        return Trace(
            num_experts=a.shape[2],
            counts=a[:, layer_ids],
            layer_ids=layer_ids,
            window_names=names,
            num_hidden_layers=a.shape[1],
            model=model,
        )
    except TraceFormatError as exc:
        raise TraceFormatError(exc.reason, path) from None


def _first_ragged(rows: list[Any]) -> str:
    """Describe the first row whose length differs from row 0's (JSON lists)."""
    def shape(x: Any) -> tuple[int, ...]:
        if isinstance(x, list):
            return (len(x), *(shape(x[0]) if x else ()))
        return ()

    ref = shape(rows[0]) if rows else ()
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return f"row {i} is not a list"
        if len(row) != (ref[0] if ref else 0):
            return f"row {i} has {len(row)} entries, row 0 has {ref[0] if ref else 0}"
        for j, sub in enumerate(row):
            if isinstance(sub, list) and len(ref) > 1 and len(sub) != ref[1]:
                return f"row {i}.{j} has {len(sub)} entries, row 0.0 has {ref[1]}"
    return "rows of different lengths"


def read_sglang_json(path: str | Path, data: Any = INVALID) -> Trace:
    """Read ``{"logical_count": [layers][E]}`` (SGLang ``--init-expert-location`` input);
    ``data`` is the file's parsed JSON when the caller has it already."""
    path = Path(path)
    if data is not INVALID:
        return _from_json(data, path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceFormatError("no such file.", path) from None
    except UnicodeDecodeError:
        raise TraceFormatError("not a UTF-8 text file, so not JSON.", path) from None
    try:
        data = json_loads(text)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}).", path
        ) from None
    return _from_json(data, path)


def _from_json(data: Any, path: Path) -> Trace:
    if not isinstance(data, dict):
        raise TraceFormatError(
            f"Expected a JSON object with logical_count, got a {type(data).__name__}.", path
        )
    if "logical_count" not in data:
        if "physical_to_logical_map" in data:
            raise TraceFormatError(
                "an SGLang placement file (physical_to_logical_map), not a routing trace.", path
            )
        if "num_experts_per_token" in data:
            raise TraceFormatError(
                "a TensorRT-LLM meta_info.json: pass the directory that holds it and "
                "rank*.safetensors.", path,
            )
        raise TraceFormatError(
            f"JSON without logical_count (found keys {sorted(data)[:8]}).", path
        )
    rows = data["logical_count"]
    if not isinstance(rows, list) or not rows:
        raise TraceFormatError("Expected logical_count to be a non-empty list of rows.", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            a = np.asarray(rows, dtype=np.float64)
    except ValueError as exc:
        if "inhomogeneous" in str(exc) or "sequence" in str(exc):
            raise TraceFormatError(f"logical_count has ragged rows ({_first_ragged(rows)}).",
                                   path) from None
        raise TraceFormatError(f"logical_count holds non-numbers ({exc}).", path) from None
    except TypeError as exc:
        raise TraceFormatError(f"logical_count holds non-numbers ({exc}).", path) from None
    return trace_from_logical_count(a, path)


# -------------------------------------------------------------------------------------------
# per_pass / per_token dumps
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SglangRankDump:
    """One rank's ``per_pass`` / ``per_token`` dump, checked and converted to numpy.

    Attributes:
        path: the file.
        physical_to_logical_map: ``[layers, P]`` (``last_physical_to_logical_map``).
        forward_pass_id: ``[n]`` per record.
        rank: ``[n]`` per record.
        global_physical_count: ``[n, layers, P]`` tokens per physical expert, per record.
        topk_ids: per record ``[layers, tokens, k]`` physical ids (``-1`` pad), or None
            (``per_pass`` mode).
    """

    path: Path
    physical_to_logical_map: np.ndarray
    forward_pass_id: np.ndarray
    rank: np.ndarray
    global_physical_count: np.ndarray
    topk_ids: tuple[np.ndarray, ...] | None

    @property
    def num_layers(self) -> int:
        return int(self.physical_to_logical_map.shape[0])

    @property
    def num_physical(self) -> int:
        return int(self.physical_to_logical_map.shape[1])

    @property
    def num_logical(self) -> int:
        return int(self.physical_to_logical_map.max()) + 1

    @property
    def mode(self) -> str:
        return "per_pass" if self.topk_ids is None else "per_token"


def rank_dump(obj: dict[str, Any], path: Path) -> SglangRankDump:
    records = obj["records"]
    if not isinstance(records, list):
        raise TraceFormatError(f"Expected records to be a list, got {type(records).__name__}.",
                               path)
    if "last_physical_to_logical_map" not in obj:
        raise TraceFormatError("per-pass dump lacks last_physical_to_logical_map.", path)
    p2l = _int_array(obj["last_physical_to_logical_map"], "last_physical_to_logical_map", 2, path)
    layers, P = p2l.shape
    if layers < 1 or P < 1:
        raise TraceFormatError(f"last_physical_to_logical_map is empty (shape {p2l.shape}).", path)
    if p2l.min() < 0:
        raise TraceFormatError(
            f"last_physical_to_logical_map holds a negative logical id ({int(p2l.min())}).", path
        )
    fpid = np.zeros(len(records), dtype=np.int64)
    rank = np.zeros(len(records), dtype=np.int64)
    gpc = np.zeros((len(records), layers, P), dtype=np.float64)
    ids: list[np.ndarray] = []
    for i, rec in enumerate(records):
        where = f"records[{i}]"
        if not isinstance(rec, dict):
            raise TraceFormatError(f"Expected {where} to be a dict, got {type(rec).__name__}.",
                                   path)
        for key in ("forward_pass_id", "rank", "global_physical_count"):
            if key not in rec:
                raise TraceFormatError(f"{where} lacks {key}.", path)
        for key, out in (("forward_pass_id", fpid), ("rank", rank)):
            v = rec[key]
            v = v.item() if hasattr(v, "item") else v
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise TraceFormatError(f"Expected {where}.{key} to be an integer >= 0, got {v!r}.",
                                       path)
            out[i] = v
        c = _check_counts(_to_numpy(rec["global_physical_count"], f"{where}.global_physical_count",
                                    path), f"{where}.global_physical_count", path)
        if c.shape != (layers, P):
            raise TraceFormatError(
                f"Expected {where}.global_physical_count of shape {(layers, P)} like "
                f"last_physical_to_logical_map, got {c.shape}.", path,
            )
        gpc[i] = c
        if "topk_ids_of_layer" in rec:
            t = _int_array(rec["topk_ids_of_layer"], f"{where}.topk_ids_of_layer", 3, path)
            if t.shape[0] != layers:
                raise TraceFormatError(
                    f"Expected {where}.topk_ids_of_layer [layers={layers}, tokens, k], got "
                    f"shape {t.shape}.", path,
                )
            if t.size and (t.min() < -1 or t.max() >= P):
                bad = int(t.min()) if t.min() < -1 else int(t.max())
                raise TraceFormatError(
                    f"{where}.topk_ids_of_layer holds physical id {bad}, outside [-1, {P}).", path
                )
            ids.append(t)
    if ids and len(ids) != len(records):
        raise TraceFormatError(
            "some records have topk_ids_of_layer (per_token) and some do not (per_pass).", path
        )
    if ids and len({t.shape[2] for t in ids}) > 1:
        raise TraceFormatError("records' topk_ids_of_layer disagree on k.", path)
    return SglangRankDump(path, p2l, fpid, rank, gpc, tuple(ids) if ids else None)


def parse_sglang_pt(path: str | Path) -> Trace | SglangRankDump:
    """Read an SGLang recorder ``.pt`` dump.

    Returns a counts :class:`Trace` for a ``stat`` dump (windows = recorded steps, unfilled
    all-zero steps dropped) or a :class:`SglangRankDump` for one rank's ``per_pass`` /
    ``per_token`` dump (turn a set of them into a trace with :func:`trace_from_rank_dumps`).
    """
    path = Path(path)
    obj = torch_load_safe(path)
    if not isinstance(obj, dict):
        raise TraceFormatError(
            f"Expected an SGLang recorder dump (a dict), got a {type(obj).__name__}.", path
        )
    if "logical_count" in obj:
        a = _to_numpy(obj["logical_count"], "logical_count", path)
        return trace_from_logical_count(a, path, drop_empty_steps=a.ndim == 3)
    if "records" in obj:
        return rank_dump(obj, path)
    if "physical_to_logical_map" in obj:
        raise TraceFormatError(
            "an SGLang placement file (physical_to_logical_map), not a routing trace.", path
        )
    keys = sorted(str(k) for k in obj)[:8]
    raise TraceFormatError(
        f"not an SGLang recorder dump: needs logical_count (stat) or records (per_pass / "
        f"per_token); found keys {keys}.", path,
    )


def check_same_run(d: SglangRankDump, first_path: Path, map_shape: tuple[int, ...],
                   num_logical: int, mode: str) -> None:
    """Raise :class:`TraceFormatError` (naming ``d``'s file) unless rank dump ``d`` describes the
    model and mode of the directory's first file (``first_path``, its map's shape, its logical
    expert count and its mode)."""
    if d.physical_to_logical_map.shape != map_shape:
        raise TraceFormatError(
            f"last_physical_to_logical_map has shape {d.physical_to_logical_map.shape} but "
            f"{first_path.name} has {map_shape} (one model per directory).", d.path,
        )
    if d.num_logical != num_logical:
        raise TraceFormatError(
            f"maps onto {d.num_logical} logical experts but {first_path.name} onto "
            f"{num_logical} (one model per directory).", d.path,
        )
    if d.mode != mode:
        raise TraceFormatError(
            f"is a {d.mode} dump but {first_path.name} is a {mode} dump.", d.path
        )


def trace_from_rank_dumps(dumps: Sequence[SglangRankDump]) -> Trace:
    """One :class:`Trace` from the per-rank ``per_pass`` / ``per_token`` dumps of one run.

    Physical ids are mapped to logical ids with each file's ``last_physical_to_logical_map``;
    each record's ``rank`` becomes the source rank and its ``forward_pass_id`` the window.
    ``per_token`` dumps give a token-level trace (the recorder's fixed 8 columns are trimmed to
    the last column that holds an id); ``per_pass`` dumps give counts ``[W, R, L, E]`` with the
    physical counts summed onto their logical experts.
    """
    if not dumps:
        raise TraceFormatError("no SGLang per-pass dumps given.")
    first = dumps[0]
    # 1. the dumps must describe one model and one mode
    for d in dumps[1:]:
        check_same_run(d, first.path, first.physical_to_logical_map.shape, first.num_logical,
                       first.mode)
    E = first.num_logical
    layers = first.num_layers
    fpid = np.concatenate([d.forward_pass_id for d in dumps])
    rank = np.concatenate([d.rank for d in dumps])
    if fpid.size == 0:
        raise TraceFormatError("the dumps hold no records.", first.path)
    where = first.path.parent if len(dumps) > 1 else first.path
    order = np.lexsort((rank, fpid))  # records by forward pass, then rank

    if first.topk_ids is None:
        # 2a. per_pass: physical counts summed onto logical experts, per (pass, rank)
        passes, w_of = np.unique(fpid, return_inverse=True)
        R = int(rank.max()) + 1
        out = np.zeros((len(passes), R, layers, E), dtype=np.float64)
        row = 0
        for d in dumps:
            flat = (np.arange(layers)[:, None] * E + d.physical_to_logical_map).reshape(-1)
            for j in range(d.global_physical_count.shape[0]):
                logical = np.bincount(flat, weights=d.global_physical_count[j].reshape(-1),
                                      minlength=layers * E).reshape(layers, E)
                out[w_of[row], rank[row]] += logical
                row += 1
        moe = out.any(axis=(0, 1, 3))
        if not moe.any():
            raise TraceFormatError("global_physical_count is all zero: no token was routed.",
                                   where)
        lids = np.flatnonzero(moe)
        return Trace(num_experts=E, counts=out[:, :, lids], layer_ids=lids,
                     window_names=[str(int(p)) for p in passes], num_hidden_layers=layers)

    # 2b. per_token: physical ids -> logical ids, tokens of all records in (pass, rank) order
    chunks: list[np.ndarray] = []
    tok_fpid: list[np.ndarray] = []
    tok_rank: list[np.ndarray] = []
    layer_idx = np.arange(layers)[:, None, None]
    all_ids = [t for d in dumps for t in (d.topk_ids or ())]
    maps = [d.physical_to_logical_map for d in dumps for _ in (d.topk_ids or ())]
    for r in order.tolist():
        phys = all_ids[r]
        logical = np.where(phys >= 0, maps[r][layer_idx, np.maximum(phys, 0)], -1)
        chunks.append(logical.transpose(1, 0, 2))  # [tokens, layers, k]
        tok_fpid.append(np.full(phys.shape[1], fpid[r], dtype=np.int64))
        tok_rank.append(np.full(phys.shape[1], rank[r], dtype=np.int64))
    ids = np.concatenate(chunks, axis=0)
    if ids.shape[0] == 0:
        raise TraceFormatError("the per_token dumps hold no tokens.", where)
    valid = ids >= 0
    moe = valid.any(axis=(0, 2))
    if not moe.any():
        raise TraceFormatError("topk_ids_of_layer holds no expert id (all -1).", where)
    cols = np.flatnonzero(valid.any(axis=(0, 1)))
    k = int(cols.max()) + 1
    lids = np.flatnonzero(moe)
    return Trace(
        num_experts=E,
        topk_ids=ids[:, lids, :k],
        layer_ids=lids,
        source_rank=np.concatenate(tok_rank),
        window=np.concatenate(tok_fpid),
        num_hidden_layers=layers,
    )


def _pickle_has(p: Probe, *names: str) -> bool:
    return p.container in ("torch", "pickle") and all(n in p.pickle_strings for n in names)


COUNTS_READER = Reader(
    kind=FileKind("sglang-counts", "trace", "a routing trace (SGLang logical_count JSON)"),
    sniff=lambda p: isinstance(p.json, dict) and "logical_count" in p.json,
    read=lambda p: read_sglang_json(p.path, p.json),
)
"""``{"logical_count": ...}`` JSON."""

STAT_READER = Reader(
    kind=FileKind("sglang-stat", "trace", "a routing trace (SGLang stat recorder dump)"),
    sniff=lambda p: _pickle_has(p, "logical_count") and "records" not in p.pickle_strings,
    read=lambda p: parse_sglang_pt(p.path),
)
"""The ``stat`` recorder dump ``.pt``."""

RANK_DUMP_READER = Reader(
    kind=FileKind("sglang-rank-dump", "trace",
                  "a routing trace (one rank's SGLang per_pass / per_token dump)"),
    sniff=lambda p: _pickle_has(p, "records", "last_physical_to_logical_map"),
    read=lambda p: parse_sglang_pt(p.path),
    combine=lambda parts: trace_from_rank_dumps(list(parts)),
)
"""One rank's ``per_pass`` / ``per_token`` recorder dump ``.pt`` (a run is a directory of
them)."""
