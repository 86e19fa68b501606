"""Native trace format v1 (``.npz``), read and written (see ``docs/definitions.md``).

Token-level files hold ``topk_ids [T, L, k]`` and ``num_experts``, optionally ``source_rank [T]``,
``window [T]``, ``topk_weights [T, L, k]``; aggregated files hold ``counts [L, E]`` or
``[W, L, E]``. Both may carry ``layer_ids [L]``, ``window_names [W]`` and ``model``. This
package also writes and reads two optional extensions: ``rank_counts [W, R, L, E]`` (aggregated
counts split by source rank; ``counts`` is then their sum over R) and ``num_hidden_layers``
(decoder layers, dense ones included) and ``top_k`` for aggregated traces.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import (
    MAX_EXPERTS_ENV,
    allowed_bytes,
    atomic_write_bytes,
    max_experts,
    read_npz,
    too_large,
)
from placement.errors import TraceFormatError
from placement.filekinds import FileKind
from placement.routing_traces.registry import Reader
from placement.routing_traces.trace import Trace

__all__ = ["FORMAT_VERSION", "READER", "read_native", "write_native"]

FORMAT_VERSION = 1

_KNOWN = {
    "topk_ids", "num_experts", "source_rank", "window", "topk_weights", "layer_ids",
    "window_names", "model", "counts", "rank_counts", "num_hidden_layers", "top_k",
    "format_version",
}


def _scalar(z: Any, key: str, path: Path) -> Any:
    a = z[key]
    if a.ndim != 0:
        raise TraceFormatError(f"Expected {key} to be a scalar, got shape {a.shape}.", path)
    return a.item()


def read_native(path: str | Path) -> Trace:
    """Read a native v1 ``.npz`` trace. Refuses pickled object arrays."""
    path = Path(path)
    if not path.exists():
        raise TraceFormatError("no such file.", path)
    with path.open("rb") as fh:
        if not fh.read(4).startswith(b"PK"):
            raise TraceFormatError("not a .npz archive (no zip header).", path)
    data = read_npz(path, TraceFormatError)
    try:
        return _trace_from_arrays(data, path)
    except TraceFormatError as exc:
        if exc.path is None:
            raise TraceFormatError(exc.reason, path) from None
        raise
    except (ValueError, TypeError) as exc:  # a field of the wrong kind (string, non-scalar...)
        raise TraceFormatError(f"malformed field ({exc}).", path) from None


def _trace_from_arrays(data: dict[str, np.ndarray], path: Path) -> Trace:
    version = data.get("format_version")
    if version is not None and int(_scalar(data, "format_version", path)) != FORMAT_VERSION:
        raise TraceFormatError(
            f"native trace format version {int(np.asarray(version))} is not supported "
            f"(this version reads {FORMAT_VERSION}).", path,
        )
    _check_declared(data, path)
    has_ids, has_counts = "topk_ids" in data, ("counts" in data or "rank_counts" in data)
    if not has_ids and not has_counts:
        raise TraceFormatError(
            "not a placement trace: needs topk_ids (token-level) or counts (aggregated); "
            f"found keys {sorted(data)}.", path,
        )
    model = data["model"].item() if "model" in data else None
    names = data["window_names"].tolist() if "window_names" in data else None
    common: dict[str, Any] = dict(
        layer_ids=data.get("layer_ids"),
        window_names=names,
        model=model,
        num_hidden_layers=(int(_scalar(data, "num_hidden_layers", path))
                           if "num_hidden_layers" in data else None),
    )
    if has_ids:
        if "num_experts" not in data:
            raise TraceFormatError("token-level trace lacks num_experts.", path)
        return Trace(
            num_experts=int(_scalar(data, "num_experts", path)),
            topk_ids=data["topk_ids"],
            source_rank=data.get("source_rank"),
            window=data.get("window"),
            topk_weights=data.get("topk_weights"),
            **common,
        )
    counts = data["rank_counts"] if "rank_counts" in data else data["counts"]
    counts = np.asarray(counts)
    if "num_experts" in data:
        E = int(_scalar(data, "num_experts", path))
    elif counts.ndim >= 2:
        E = int(counts.shape[-1])
    else:
        raise TraceFormatError(
            f"Expected counts [L, E] or [W, L, E], got shape {counts.shape}.", path
        )
    if "rank_counts" in data and "counts" in data:
        rc = np.asarray(data["rank_counts"], dtype=np.float64)
        c = np.asarray(data["counts"], dtype=np.float64)
        if rc.ndim != 4 or c.shape != rc.shape[:1] + rc.shape[2:] or not np.allclose(rc.sum(1), c):
            raise TraceFormatError("rank_counts does not sum over ranks to counts.", path)
    top_k = int(_scalar(data, "top_k", path)) if "top_k" in data else None
    return Trace(num_experts=E, counts=counts, top_k=top_k, **common)


def _check_declared(data: dict[str, np.ndarray], path: Path) -> None:
    """Refuse a scalar that declares more than the reader may build: ``num_experts`` beyond
    :func:`~placement._io.max_experts`, or per-layer expert counts (windows x layers x experts
    x 8 bytes) beyond the read limit of this file."""
    if "num_experts" not in data:
        return
    E = int(_scalar(data, "num_experts", path))
    if E < 1:
        raise TraceFormatError(f"Expected num_experts >= 1, got {E}.", path)
    if E > max_experts():
        raise TraceFormatError(
            f"declares num_experts = {E:,}, beyond the {max_experts():,} experts a trace may "
            f"have; if the file is genuine, raise the bound ({MAX_EXPERTS_ENV}={E}, see "
            "docs/reliability.md).", path)
    ids = data.get("topk_ids")
    layers = int(ids.shape[1]) if ids is not None and ids.ndim == 3 else 1
    win = data.get("window_names")
    windows = max(int(win.size), 1) if win is not None else 1
    need = windows * layers * E * 8
    allowed = allowed_bytes(path.stat().st_size if path.is_file() else 0)
    if need > allowed:
        raise TraceFormatError(too_large(f"counts of {E:,} experts x {layers} layers x "
                                         f"{windows} windows", need, allowed), path)


def write_native(trace: Trace, path: str | Path, *, compress: bool = True) -> None:
    """Write ``trace`` as a native v1 ``.npz`` file, atomically."""
    out: dict[str, Any] = {
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        "num_experts": np.asarray(trace.num_experts, dtype=np.int64),
        "layer_ids": np.asarray(trace.layer_ids, dtype=np.int64),
    }
    if trace.model is not None:
        out["model"] = np.asarray(trace.model)
    if trace.num_hidden_layers is not None:
        out["num_hidden_layers"] = np.asarray(trace.num_hidden_layers, dtype=np.int64)
    if trace.is_token_level:
        out["topk_ids"] = trace.topk_ids
        if trace.source_rank is not None:
            out["source_rank"] = trace.source_rank
        if trace.window is not None:
            out["window"] = trace.window
        if trace.topk_weights is not None:
            out["topk_weights"] = trace.topk_weights
        out["window_names"] = np.asarray(trace.window_names)
    else:
        wrc = trace.window_rank_counts()
        out["counts"] = wrc.sum(axis=1)
        if trace.has_source_rank:
            out["rank_counts"] = wrc
        if trace.top_k is not None:
            out["top_k"] = np.asarray(trace.top_k, dtype=np.int64)
        out["window_names"] = np.asarray(trace.window_names)
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **out)
    atomic_write_bytes(path, buf.getvalue())


READER = Reader(
    kind=FileKind("native-trace", "trace", "a routing trace (native .npz)"),
    sniff=lambda p: p.container == "npz" and bool(
        {"topk_ids", "counts", "rank_counts"} & set(p.npz_keys)),
    read=lambda p: read_native(p.path),
)
"""The native v1 ``.npz`` reader."""
