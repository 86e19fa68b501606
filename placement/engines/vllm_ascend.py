"""vLLM-Ascend static expert map (``expert_map_path``).

Read from vLLM-Ascend's source (vllm-project/vllm-ascend,
``vllm_ascend/ops/expert_load_balancer.py`` and the fused-MoE layers that use it):

* ``ExpertLoadBalancer._expert_file_to_tensor`` reads ``moe_layer_count``, takes
  ``layer_list[0]["device_count"]`` as the number of ranks and stacks every layer's
  ``device_list[*]["device_expert"]`` into ``[layers, ranks, local_slots]``: the lists must be
  rectangular; rank ``r`` is the ``r``-th entry of ``device_list`` (``device_id`` and ``layer_id``
  are not read).
* The MoE layer looks itself up with ``get_rank_placement_map(self.moe_instance_id, ep_rank)``:
  the layer axis is the MoE-layer index ``0..moe_layer_count-1`` in model order, not the
  decoder-layer id; vLLM-Ascend's own recorder (``export_tensor_to_file``) writes
  ``"layer_id": <MoE index>``, and so does :func:`build_vllm_ascend`.
* Redundant experts = ``len(device_expert) * ranks - num_experts``
  (``get_global_redundant_expert_num``).

Pass the file as ``--additional-config '{"eplb_config": {"expert_map_path": FILE}}'`` (older
releases: ``'{"expert_map_path": FILE}'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import atomic_write_text
from placement._util import format_ids
from placement.engines._common import (
    Built,
    EngineFile,
    ExportRequest,
    Usage,
    check_rows,
    resolve_layout,
    trivial_row,
)
from placement.errors import EngineFormatError
from placement.filekinds import FileKind, Probe
from placement.plan import Plan

__all__ = ["FORMAT", "build_vllm_ascend", "read_vllm_ascend", "write_vllm_ascend"]


def build_vllm_ascend(
    plan: Plan,
    *,
    num_hidden_layers: int | None = None,
    dense_layers: tuple[int, ...] | None = None,
    fill_missing: str = "error",
) -> dict[str, Any]:
    """``{"moe_layer_count", "layer_list": [{"layer_id", "device_count", "device_list":
    [{"device_id", "device_expert": [logical ids]}]}]}`` with one entry per MoE layer of the
    model in order; MoE layers the plan misses get ``arange(P) % E`` with
    ``fill_missing="trivial"``."""
    nhl = num_hidden_layers if num_hidden_layers is not None else plan.num_hidden_layers
    layout = resolve_layout(plan.layer_ids, num_hidden_layers=nhl, dense_layers=dense_layers,
                            fill_missing=fill_missing, fmt="vLLM-Ascend")
    c = plan.cluster
    G, spg = c.num_gpus, c.slots_per_gpu
    row_of = {int(lid): plan.phy2log[i] for i, lid in enumerate(plan.layer_ids.tolist())}
    fill = trivial_row(plan.num_slots, plan.num_experts)
    layer_list = []
    for moe_index, lid in enumerate(layout.moe):
        per_gpu = row_of.get(lid, fill).reshape(G, spg).tolist()
        layer_list.append({
            "layer_id": moe_index,
            "device_count": G,
            "device_list": [{"device_id": g, "device_expert": per_gpu[g]} for g in range(G)],
        })
    return {"moe_layer_count": len(layer_list), "layer_list": layer_list}


def _rows(obj: dict[str, Any]) -> np.ndarray:
    return np.asarray([[e for d in layer["device_list"] for e in d["device_expert"]]
                       for layer in obj["layer_list"]], dtype=np.int64)


def check_vllm_ascend(obj: dict[str, Any], plan: Plan) -> None:
    """Check the object before writing (counts, rectangular, every expert in every layer)."""
    if obj["moe_layer_count"] != len(obj["layer_list"]):
        raise EngineFormatError("vLLM-Ascend map: moe_layer_count differs from layer_list.")
    for layer in obj["layer_list"]:
        if not layer["device_count"] == len(layer["device_list"]) == plan.cluster.num_gpus:
            raise EngineFormatError("vLLM-Ascend map: device_count differs from device_list.")
    rows = _rows(obj)
    check_rows(rows, plan.num_experts, plan.cluster.num_gpus, list(range(rows.shape[0])),
               "vLLM-Ascend expert map")


def write_vllm_ascend(obj: dict[str, Any], path: Path) -> None:
    """Write the JSON atomically (indented like vLLM-Ascend's own recorder)."""
    atomic_write_text(path, json.dumps(obj, indent=4) + "\n")


def read_vllm_ascend(path: Path, data: Any) -> EngineFile:
    """A vLLM-Ascend expert map."""
    if not isinstance(data, dict):
        raise EngineFormatError(f"expected a JSON object, got {type(data).__name__}.", path)
    for key in ("moe_layer_count", "layer_list"):
        if key not in data:
            raise EngineFormatError(f"lacks {key!r}.", path)
    layers = data["layer_list"]
    count = data["moe_layer_count"]
    if not isinstance(layers, list) or not layers:
        raise EngineFormatError("layer_list must be a non-empty list.", path)
    if isinstance(count, bool) or not isinstance(count, int) or count != len(layers):
        raise EngineFormatError(
            f"moe_layer_count is {count!r} but layer_list has {len(layers)} layers.", path
        )
    notes: list[str] = []
    rows: list[list[int]] = []
    G = spg = None
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("device_list"), list):
            raise EngineFormatError(f"layer_list[{i}] lacks a device_list.", path)
        devs = layer["device_list"]
        dc = layer.get("device_count", len(devs))
        if isinstance(dc, bool) or not isinstance(dc, int) or dc != len(devs):
            raise EngineFormatError(
                f"layer_list[{i}]: device_count is {dc!r} but device_list has {len(devs)} "
                "devices.", path
            )
        if G is None:
            G = dc
        elif dc != G:
            raise EngineFormatError(
                f"layer_list[{i}] has {dc} devices, layer 0 has {G}: vLLM-Ascend needs the "
                "same device count in every layer.", path
            )
        if layer.get("layer_id", i) != i and not notes:
            notes.append("layer_id fields are not 0, 1, ...; vLLM-Ascend uses list order")
        row: list[int] = []
        for g, d in enumerate(devs):
            ex = d.get("device_expert") if isinstance(d, dict) else None
            if not isinstance(ex, list) or not ex or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ex
            ):
                raise EngineFormatError(
                    f"layer_list[{i}].device_list[{g}].device_expert must be a non-empty list "
                    "of expert ids >= 0.", path
                )
            if spg is None:
                spg = len(ex)
            elif len(ex) != spg:
                raise EngineFormatError(
                    f"layer_list[{i}].device_list[{g}] has {len(ex)} experts, others {spg}: "
                    "vLLM-Ascend needs the same number on every device.", path
                )
            row.extend(ex)
        rows.append(row)
    return EngineFile(path=path, fmt="vllm-ascend", phy2log=np.asarray(rows, dtype=np.int64),
                      row_layer_ids=None, num_devices=G, notes=notes)


def vllm_ascend_usage(path: Path) -> list[str]:
    """How to use the file."""
    p = path.resolve()
    return [
        f"vllm serve MODEL --enable-expert-parallel --additional-config "
        f"'{{\"eplb_config\": {{\"expert_map_path\": \"{p}\"}}}}'",
        f"(vLLM-Ascend <= 0.11: --additional-config '{{\"expert_map_path\": \"{p}\"}}')",
    ]


class VllmAscendFormat:
    """The ``vllm-ascend`` format: vLLM-Ascend's ``expert_map_path`` JSON."""

    name = "vllm-ascend"
    engine = "vLLM-Ascend expert_map_path"
    suffixes = (".json",)
    suffix_reason = " (vLLM-Ascend reads it with json.load)"
    options: frozenset[str] = frozenset()
    kind = FileKind("vllm-ascend", "engine", "a vLLM-Ascend expert map (expert_map_path)")

    def detect(self, probe: Probe) -> bool:
        return probe.container in ("json", "text") and bool(
            {"moe_layer_count", "layer_list"} & probe.keys())

    def build(self, plan: Plan, request: ExportRequest, path: Path) -> Built:
        vmap = build_vllm_ascend(plan, **request.layout_kw)
        layout = resolve_layout(plan.layer_ids, **request.layout_kw)
        P, E, c = plan.num_slots, plan.num_experts, plan.cluster
        notes = layout.notes(f"arange({P}) % {E}")
        notes.append(f"layer_list entries are MoE layers {format_ids(layout.moe)} in order "
                     f"(layer_id 0..{len(layout.moe) - 1}, as vLLM-Ascend indexes them)")
        n = vmap["moe_layer_count"]
        return Built(
            obj=vmap,
            description=f"vLLM-Ascend expert map, {n} MoE layers x {c.num_gpus} devices x "
                        f"{c.slots_per_gpu} experts",
            layer_ids=tuple(range(n)),
            notes=tuple(notes),
        )

    def check(self, built: Built, plan: Plan) -> None:
        check_vllm_ascend(built.obj, plan)

    def write(self, built: Built, path: Path) -> None:
        write_vllm_ascend(built.obj, path)

    def read(self, path: Path, container: str, data: Any, text: str) -> EngineFile:
        return read_vllm_ascend(path, data)

    def usage(self, plan: Plan, path: Path) -> Usage:
        return Usage(
            lines=("serve with:", *(f"  {u}" for u in vllm_ascend_usage(path))),
            warnings=("dynamic_eplb would rebalance online and move away from this placement.",),
        )


FORMAT = VllmAscendFormat()
"""The format object :mod:`placement.engines.registry` registers."""
