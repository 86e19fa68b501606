"""DeepSeek EPLB tensors: ``phy2log [L, P]``, ``log2phy [L, E, R]`` (-1 padded), ``logcnt [L, E]``.

These are the outputs of ``eplb.rebalance_experts(weight, num_replicas, num_groups, num_nodes,
num_gpus)`` (deepseek-ai/EPLB, ``eplb.py``), for code that consumes them directly (SGLang's and
vLLM's EPLB integrations take the same three tensors). The file is a ``.pt`` (``torch.save`` of a
dict of int64 tensors, loadable with ``weights_only=True``) or a ``.npz`` (loads with
``allow_pickle=False``); besides the three tensors it holds ``layer_ids [L]``, ``num_experts``,
``num_nodes``, ``num_gpus`` and, when known, ``num_hidden_layers`` (all int64).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import atomic_write_bytes
from placement._util import format_ids
from placement.engines._common import (
    Built,
    EngineFile,
    ExportRequest,
    Usage,
    check_rows,
    int_rows,
    scalar_int,
    to_numpy,
)
from placement.errors import EngineFormatError
from placement.filekinds import FileKind, Probe
from placement.plan import Plan, compute_log2phy, compute_logcnt

__all__ = ["FORMAT", "build_eplb", "read_eplb", "write_eplb"]
_SCALARS = ("num_experts", "num_nodes", "num_gpus", "num_hidden_layers")


def build_eplb(plan: Plan) -> dict[str, np.ndarray]:
    """The tensors as int64 numpy arrays: ``phy2log [L, P]``, ``log2phy [L, E, R]`` (-1 padded),
    ``logcnt [L, E]``, ``layer_ids [L]`` and the scalars ``num_experts``, ``num_nodes``,
    ``num_gpus`` (and ``num_hidden_layers`` when the plan knows it)."""
    c = plan.cluster
    out = {
        "phy2log": plan.phy2log.astype(np.int64),
        "log2phy": plan.log2phy.astype(np.int64),
        "logcnt": plan.logcnt.astype(np.int64),
        "layer_ids": plan.layer_ids.astype(np.int64),
        "num_experts": np.asarray(plan.num_experts, dtype=np.int64),
        "num_nodes": np.asarray(c.num_nodes, dtype=np.int64),
        "num_gpus": np.asarray(c.num_gpus, dtype=np.int64),
    }
    if plan.num_hidden_layers is not None:
        out["num_hidden_layers"] = np.asarray(plan.num_hidden_layers, dtype=np.int64)
    return out


def check_eplb(obj: dict[str, np.ndarray], plan: Plan) -> None:
    """Check the tensors before writing: shapes and the three views agree."""
    phy2log = obj["phy2log"]
    check_rows(phy2log, plan.num_experts, plan.cluster.num_gpus, obj["layer_ids"].tolist(),
               "EPLB phy2log")
    _check_views(phy2log, obj["logcnt"], obj["log2phy"], plan.num_experts, None)


def _check_views(phy2log: np.ndarray, logcnt: np.ndarray | None, log2phy: np.ndarray | None,
                 num_experts: int, path: Path | None) -> None:
    L = phy2log.shape[0]
    if logcnt is not None:
        if logcnt.shape != (L, num_experts):
            raise EngineFormatError(
                f"logcnt has shape {logcnt.shape}, expected {(L, num_experts)}.", path
            )
        if not np.array_equal(logcnt, compute_logcnt(phy2log, num_experts)):
            raise EngineFormatError("logcnt does not count the replicas in phy2log.", path)
    if log2phy is not None:
        if log2phy.ndim != 3 or log2phy.shape[:2] != (L, num_experts):
            raise EngineFormatError(
                f"log2phy has shape {log2phy.shape}, expected ({L}, {num_experts}, R).", path
            )
        want = compute_log2phy(phy2log, num_experts)
        R = max(want.shape[2], log2phy.shape[2])
        a = np.full((L, num_experts, R), -1, dtype=np.int64)
        b = a.copy()
        a[:, :, : want.shape[2]] = want
        b[:, :, : log2phy.shape[2]] = log2phy
        if not np.array_equal(np.sort(a, axis=2), np.sort(b, axis=2)):
            raise EngineFormatError("log2phy does not list the slots of phy2log.", path)


def write_eplb(obj: dict[str, np.ndarray], path: Path) -> None:
    """Write atomically as ``.pt`` (dict of int64 tensors) or ``.npz``."""
    buf = io.BytesIO()
    if path.suffix.lower() == ".pt":
        import torch

        tensors = {k: torch.from_numpy(np.array(v, dtype=np.int64, order="C"))
                   for k, v in obj.items()}
        torch.save(tensors, buf)
    else:
        np.savez_compressed(buf, **obj)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())


def read_eplb(path: Path, data: Any) -> EngineFile:
    """EPLB tensors (``phy2log`` required; the rest checked against it when present)."""
    data = to_numpy(data)
    if not isinstance(data, dict) or "phy2log" not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise EngineFormatError(f"lacks phy2log (found {keys}).", path)
    phy2log = int_rows(path, "phy2log", data["phy2log"], 2)
    if phy2log.min() < 0:
        raise EngineFormatError(f"phy2log holds negative expert ids ({int(phy2log.min())}).", path)
    L = phy2log.shape[0]
    scal = {k: scalar_int(path, k, data[k]) for k in _SCALARS if k in data}
    logcnt = int_rows(path, "logcnt", data["logcnt"], 2) if "logcnt" in data else None
    log2phy = int_rows(path, "log2phy", data["log2phy"], 3) if "log2phy" in data else None
    E = scal.get("num_experts")
    if E is None:
        E = (logcnt.shape[1] if logcnt is not None else
             log2phy.shape[1] if log2phy is not None else None)
    if E is not None:
        if phy2log.max() >= E:
            raise EngineFormatError(
                f"phy2log holds expert {int(phy2log.max())} but num_experts is {E}.", path
            )
        _check_views(phy2log, logcnt, log2phy, E, path)
    layer_ids = None
    if "layer_ids" in data:
        layer_ids = int_rows(path, "layer_ids", data["layer_ids"], 1)
        if layer_ids.shape[0] != L:
            raise EngineFormatError(
                f"layer_ids has {layer_ids.shape[0]} entries for {L} phy2log rows.", path
            )
    G = scal.get("num_gpus")
    if G is not None and (G < 1 or phy2log.shape[1] % G):
        raise EngineFormatError(
            f"num_gpus={G} does not divide the {phy2log.shape[1]} slots per layer.", path
        )
    return EngineFile(
        path=path, fmt="eplb", phy2log=phy2log, row_layer_ids=layer_ids, num_experts=E,
        num_devices=G, num_nodes=scal.get("num_nodes"),
        num_hidden_layers=scal.get("num_hidden_layers"),
    )


class EplbFormat:
    """The ``eplb`` format: DeepSeek EPLB's tensors (see the module docstring)."""

    name = "eplb"
    engine = "code calling DeepSeek's EPLB API (phy2log, log2phy, logcnt)"
    suffixes = (".pt", ".npz")
    suffix_reason = ""
    options: frozenset[str] = frozenset()
    kind = FileKind("eplb", "engine", "EPLB tensors (phy2log, log2phy, logcnt)")

    def detect(self, probe: Probe) -> bool:
        return probe.container in ("npz", "torch", "pickle") and "phy2log" in probe.keys()

    def build(self, plan: Plan, request: ExportRequest, path: Path) -> Built:
        tensors = build_eplb(plan)
        if request.num_hidden_layers is not None:
            tensors["num_hidden_layers"] = np.asarray(request.num_hidden_layers, dtype=np.int64)
        L, P, E = plan.num_layers, plan.num_slots, plan.num_experts
        R = tensors["log2phy"].shape[2]
        ids = tuple(plan.layer_ids.tolist())
        return Built(
            obj=tensors,
            description=f"EPLB tensors phy2log [{L}, {P}], log2phy [{L}, {E}, {R}], logcnt "
                        f"[{L}, {E}] (layers {format_ids(ids)})",
            layer_ids=ids,
        )

    def check(self, built: Built, plan: Plan) -> None:
        check_eplb(built.obj, plan)

    def write(self, built: Built, path: Path) -> None:
        write_eplb(built.obj, path)

    def read(self, path: Path, container: str, data: Any, text: str) -> EngineFile:
        return read_eplb(path, data)

    def usage(self, plan: Plan, path: Path) -> Usage:
        loader = ("torch.load(path, weights_only=True)" if path.suffix.lower() == ".pt"
                  else "numpy.load(path, allow_pickle=False)")
        return Usage(lines=(f"load with {loader}; rows follow layer_ids",))


FORMAT = EplbFormat()
"""The format object :mod:`placement.engines.registry` registers."""
