"""Megatron-Core router traces (``--moe-routing-trace-path DIR``), read into a :class:`Trace`.

Megatron-Core's ``RouterTracer`` (``megatron/core/transformer/moe/router_trace.py``) writes, in
training or inference, one JSONL file per rank, ``DIR/router_trace_rank{rank}.jsonl``, one
record per (step, block, layer) (``_make_index_record``, ``_flush_records_to_disk``)::

    {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 3, "rank": 0,
     "num_tokens": 128, "topk": 8, "top_indices": [[12, 45, ...], ...]}

``top_indices`` is ``[num_tokens, topk]`` (the router's top-k, or the non-zero columns of its
routing map); MTP records carry ``"block": "mtp"`` and ``"mtp_idx"``; optional sidecar fields
(``hs_offset``, ``logit_offset``, ...) point into binary files this reader does not need.

The trace: one window per step; in a step, the tokens of every rank one after another (rank
order, ``source_rank`` = the record's rank), each with its top-k at every decoder layer of the
step. MTP records are left out (they are no decoder layer). The JSONL does not record the number
of experts: ``num_experts`` is the largest id + 1 (an expert no token chose at the end of the
range is missing). The ranks of one run must trace the same layers (one pipeline stage: the
``layer`` of a record is its index in the stage's module list).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from placement.errors import TraceFormatError
from placement.filekinds import FileKind, Probe
from placement.routing_traces.registry import Reader
from placement.routing_traces.trace import Trace

__all__ = ["READER", "read_megatron_trace"]

_RANK_FILE = re.compile(r"^router_trace_rank(\d+)\.jsonl$")


def _looks_like_record(head: bytes) -> bool:
    """The first bytes of a RouterTracer JSONL file (``json.dumps`` keeps the key order)."""
    return head.startswith(b'{"step": ') and b'"stage": ' in head


def is_megatron_trace(probe: Probe) -> bool:
    """A RouterTracer JSONL file, or a directory of ``router_trace_rank*.jsonl`` files."""
    if probe.is_dir:
        return any(_RANK_FILE.match(n) for n in probe.entries)
    return _looks_like_record(probe.head)


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of one JSONL file, checked one line at a time."""
    out: list[dict[str, Any]] = []
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise TraceFormatError(f"cannot read ({exc.strerror}).", path) from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise TraceFormatError(f"line {n} is not JSON ({exc}).", path) from None
            if not isinstance(rec, dict) or not {"step", "layer", "top_indices"} <= set(rec):
                raise TraceFormatError(
                    f"line {n}: Expected a record with step, layer and top_indices.", path)
            out.append(rec)
    return out


def read_megatron_trace(path: str | Path) -> Trace:
    """Read ``router_trace_rank*.jsonl`` (a directory of them, or one file)."""
    path = Path(path)
    # 1. the files: every rank of a directory, or the one file given
    if path.is_dir():
        files = {int(m.group(1)): path / n for n in sorted(p.name for p in path.iterdir())
                 if (m := _RANK_FILE.match(n))}
        if not files:
            raise TraceFormatError("no router_trace_rank*.jsonl files.", path)
    else:
        files = {0: path}
    # 2. per (step, rank): layer -> [num_tokens, topk]
    steps: dict[int, dict[int, dict[int, np.ndarray]]] = {}
    topk: int | None = None
    for file_rank, f in sorted(files.items()):
        for rec in _records(f):
            if rec.get("block", "decoder") != "decoder":
                continue  # MTP heads: no decoder layer
            rank = int(rec.get("rank", file_rank))
            a = np.asarray(rec["top_indices"])
            if a.ndim != 2 or (a.size and not np.issubdtype(a.dtype, np.integer)):
                raise TraceFormatError(
                    f"step {rec['step']} layer {rec['layer']}: Expected top_indices "
                    f"[num_tokens, topk] of integers, got {a.dtype} {a.shape}.", f)
            if topk is None:
                topk = a.shape[1]
            if a.shape[1] != topk:
                raise TraceFormatError(
                    f"step {rec['step']} layer {rec['layer']}: Expected top-k {topk}, got "
                    f"{a.shape[1]}.", f)
            steps.setdefault(int(rec["step"]), {}).setdefault(rank, {})[int(rec["layer"])] = a
    if not steps or topk is None:
        raise TraceFormatError("no decoder-layer records.", path)
    # 3. every (step, rank) must hold the same layers, and one token count across them
    layers = sorted(next(iter(next(iter(steps.values())).values())))
    chunks: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    windows: list[np.ndarray] = []
    step_ids = sorted(steps)
    for w, step in enumerate(step_ids):
        for rank in sorted(steps[step]):
            per_layer = steps[step][rank]
            if sorted(per_layer) != layers:
                raise TraceFormatError(
                    f"step {step} rank {rank} traces layers {sorted(per_layer)}, not {layers} "
                    "like the first step (one pipeline stage per trace).", path)
            sizes = {a.shape[0] for a in per_layer.values()}
            if len(sizes) != 1:
                raise TraceFormatError(
                    f"step {step} rank {rank}: the layers hold different token counts "
                    f"{sorted(sizes)}.", path)
            n = sizes.pop()
            chunks.append(np.stack([per_layer[layer].reshape(n, topk) for layer in layers],
                                   axis=1))
            ranks.append(np.full(n, rank, dtype=np.int64))
            windows.append(np.full(n, w, dtype=np.int64))
    ids = np.concatenate(chunks).astype(np.int64)
    if ids.shape[0] == 0:
        raise TraceFormatError("the records hold no tokens.", path)
    if ids.min() < 0:
        raise TraceFormatError(f"negative expert id {int(ids.min())}.", path)
    try:
        return Trace(num_experts=int(ids.max()) + 1, topk_ids=ids, layer_ids=layers,
                     source_rank=np.concatenate(ranks), window=np.concatenate(windows),
                     window_names=[str(s) for s in step_ids])
    except TraceFormatError as exc:
        raise TraceFormatError(exc.reason, path) from None


READER = Reader(
    kind=FileKind("megatron-router-trace", "trace",
                  "a routing trace (Megatron-Core router_trace JSONL)"),
    sniff=is_megatron_trace,
    read=lambda p: read_megatron_trace(p.path),
)
"""The Megatron-Core ``--moe-routing-trace-path`` reader."""
