"""SGLang ``--init-expert-location``: ``{"physical_to_logical_map": [num_hidden_layers, P]}``.

Read from SGLang's source (sgl-project/sglang, ``python/sglang/srt/eplb/expert_location.py``):

* ``compute_initial_expert_location_metadata`` loads the file with ``torch.load(weights_only=True)``
  when the path ends in ``.pt``, with ``json.loads`` when it ends in ``.json`` (any other string is
  parsed as inline JSON), then calls ``ExpertLocationMetadata.init_by_mapping(server_args,
  model_config, **data_dict)`` when ``"physical_to_logical_map"`` is a key: every other key
  becomes an unexpected keyword argument, so the file holds that one key only. A file with
  ``"logical_count"`` instead makes SGLang run its own EPLB (``init_by_eplb``).
* The map has one row per decoder layer: ``ModelConfigForExpertLocation.num_layers`` is
  ``config.num_hidden_layers`` (``get_model_config_for_expert_location`` of the DeepSeek models),
  dense layers included; ``init_trivial`` fills rows with ``arange(P) % E``.
* ``P = num_logical_experts + --ep-num-redundant-experts`` and ``P % ep_size == 0``
  (``_init_common``); slot ``p`` is on rank ``p // (P / ep_size)``
  (``_compute_gpu_id_of_physical_expert``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import atomic_write_bytes, atomic_write_text
from placement.engines._common import (
    Built,
    EngineFile,
    ExportRequest,
    Usage,
    check_rows,
    int_rows,
    resolve_layout,
    to_numpy,
    trivial_row,
)
from placement.errors import EngineFormatError
from placement.filekinds import FileKind, Probe
from placement.plan import Plan

__all__ = ["FORMAT", "build_sglang", "read_sglang", "write_sglang"]

KEY = "physical_to_logical_map"


def build_sglang(
    plan: Plan,
    *,
    num_hidden_layers: int | None = None,
    dense_layers: tuple[int, ...] | None = None,
    fill_missing: str = "error",
) -> dict[str, np.ndarray]:
    """The ``--init-expert-location`` object: ``{"physical_to_logical_map": [N, P] int64}``.

    ``N`` is the model's number of decoder layers (``num_hidden_layers``, from the plan or given);
    rows of layers the plan does not place get SGLang's trivial row ``arange(P) % E``: dense
    layers always, MoE layers only with ``fill_missing="trivial"`` (see
    :func:`~placement.engines._common.resolve_layout`).
    """
    layout = resolve_layout(
        plan.layer_ids,
        num_hidden_layers=num_hidden_layers if num_hidden_layers is not None
        else plan.num_hidden_layers,
        dense_layers=dense_layers, fill_missing=fill_missing, need_num_hidden_layers=True,
        fmt="SGLang",
    )
    assert layout.num_hidden_layers is not None  # need_num_hidden_layers guarantees it
    P, E = plan.num_slots, plan.num_experts
    # 1. every row trivial, 2. the planned rows from the plan
    rows = np.tile(trivial_row(P, E), (layout.num_hidden_layers, 1))
    rows[plan.layer_ids] = plan.phy2log
    return {KEY: rows}


def check_sglang(obj: dict[str, np.ndarray], plan: Plan) -> None:
    """Check the object before writing (one key, shape, experts, EP size)."""
    if set(obj) != {KEY}:
        raise EngineFormatError(f"SGLang file must hold only {KEY!r}, got {sorted(obj)}.")
    rows = obj[KEY]
    check_rows(rows, plan.num_experts, plan.cluster.num_gpus, list(range(rows.shape[0])),
               "SGLang physical_to_logical_map")


def write_sglang(obj: dict[str, np.ndarray], path: Path) -> None:
    """Write atomically: ``.json`` (one row per line) or ``.pt`` (``torch.save`` of a dict of
    one int64 tensor, loadable with ``weights_only=True``)."""
    rows = obj[KEY]
    if path.suffix.lower() == ".pt":
        import torch

        buf = io.BytesIO()
        torch.save({KEY: torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))}, buf)
        atomic_write_bytes(path, buf.getvalue())
        return
    lines = ",\n".join("  [" + ", ".join(map(str, r)) + "]" for r in rows.tolist())
    atomic_write_text(path, '{"' + KEY + '": [\n' + lines + "\n]}\n")


def read_sglang(path: Path, data: Any) -> EngineFile:
    """An SGLang ``physical_to_logical_map`` file (already loaded as ``data``)."""
    data = to_numpy(data)
    if not isinstance(data, dict):
        raise EngineFormatError(
            f"expected an object with {KEY!r}, got {type(data).__name__}.", path
        )
    if KEY not in data:
        if "logical_count" in data:
            raise EngineFormatError(
                "holds logical_count (expert statistics that SGLang rebalances itself at "
                "start-up), not a placement; read it as a routing trace instead.", path
            )
        raise EngineFormatError(f"lacks {KEY!r} (keys: {sorted(map(str, data))}).", path)
    extra = sorted(str(k) for k in data if k != KEY)
    if extra:
        raise EngineFormatError(
            f"holds keys besides {KEY!r} ({', '.join(extra)}); SGLang passes them to "
            "init_by_mapping as arguments and fails at start-up.", path
        )
    rows = int_rows(path, KEY, data[KEY], 2)
    if rows.min() < 0:
        raise EngineFormatError(f"{KEY} holds negative expert ids ({int(rows.min())}).", path)
    return EngineFile(
        path=path, fmt="sglang", phy2log=rows,
        row_layer_ids=np.arange(rows.shape[0], dtype=np.int64), all_decoder_layers=True,
        num_hidden_layers=int(rows.shape[0]),
    )


def sglang_flags(plan: Plan, path: Path) -> list[str]:
    """The ``sglang.launch_server`` flags that must go with the file."""
    c = plan.cluster
    par = f"--tp-size {c.num_gpus} --ep-size {c.num_gpus}"
    if c.num_nodes > 1:
        par += f" --nnodes {c.num_nodes}"
    return [
        par,
        f"--ep-num-redundant-experts {plan.num_redundant}",
        # the rule the plan was made for (solve --dispatch)
        f"--ep-dispatch-algorithm {plan.settings.get('dispatch', 'static')}",
        f"--init-expert-location {path.resolve()}",
    ]



class SGLangFormat:
    """The ``sglang`` engine format (see the module docstring)."""

    name = "sglang"
    engine = "SGLang --init-expert-location"
    suffixes = (".json", ".pt")
    suffix_reason = " (SGLang parses any other --init-expert-location value as inline JSON)"
    options: frozenset[str] = frozenset()
    kind = FileKind("sglang", "engine", "an SGLang placement file (physical_to_logical_map)")

    def detect(self, probe: Probe) -> bool:
        return probe.container in ("json", "text", "torch", "pickle") and KEY in probe.keys()

    def build(self, plan: Plan, request: ExportRequest, path: Path) -> Built:
        obj = build_sglang(plan, **request.layout_kw)
        layout = resolve_layout(plan.layer_ids, need_num_hidden_layers=True, fmt="SGLang",
                                **request.layout_kw)
        rows = obj[KEY]
        P, E = plan.num_slots, plan.num_experts
        return Built(
            obj=obj,
            description=f"SGLang physical_to_logical_map, {rows.shape[0]} rows (decoder layers) "
                        f"x {P} slots",
            layer_ids=tuple(range(rows.shape[0])),
            notes=tuple(layout.notes(f"trivial rows arange({P}) % {E}", dense_rows=True)),
        )

    def check(self, built: Built, plan: Plan) -> None:
        check_sglang(built.obj, plan)

    def write(self, built: Built, path: Path) -> None:
        write_sglang(built.obj, path)

    def read(self, path: Path, container: str, data: Any, text: str) -> EngineFile:
        return read_sglang(path, data)

    def usage(self, plan: Plan, path: Path) -> Usage:
        return Usage(
            lines=("launch SGLang (python -m sglang.launch_server ...) with:",
                   *(f"  {f}" for f in sglang_flags(plan, path))),
            warnings=("do not add --enable-eplb: SGLang would rebalance online and overwrite "
                      "this placement.",),
        )


FORMAT = SGLangFormat()
"""The format object :mod:`placement.engines.registry` registers."""
