"""TensorRT-LLM ``moe_config.load_balancer``: a YAML file of ``MoeLoadBalancerConfig``.

Read from TensorRT-LLM's source (NVIDIA/TensorRT-LLM):

* ``tensorrt_llm/llmapi/llm_args.py``: ``MoeLoadBalancerConfig`` (a strict pydantic model: no
  other keys) has ``num_slots``, ``initial_global_assignments: Dict[int, List[int]]`` and
  ``layer_updates_per_iter`` (0 = static routing, ``MoeLoadBalancer.is_static_routing``);
  ``setup()`` raises unless ``num_slots % ep_size == 0``;
  ``get_layer_initial_global_assignments(layer_idx)`` raises ``KeyError`` for a layer that has no
  entry (so every MoE layer, MTP included, needs one) and checks ``len == num_slots``.
  ``MoeConfig.load_balancer`` may be that dict or a path: ``TorchLlmArgs.validate_load_balancer``
  reads a path with ``yaml.safe_load`` into ``MoeLoadBalancerConfig(**data)``.
* ``tensorrt_llm/_torch/modules/fused_moe/*``: the MoE module of decoder layer ``layer_idx``
  looks up its own index; asserts ``set(assignments) == set(range(num_experts))``; without a
  file a rank ``r`` holds ``(r * E // ep_size + i) % E`` for its ``i``-th local slot.
* ``examples/wide_ep/ep_load_balancer/generate_eplb_config.py`` writes the same layout (keys are
  decoder-layer ids 3..60 for DeepSeek-R1, lists in flow style).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import atomic_write_text
from placement.engines._common import (
    Built,
    EngineFile,
    ExportRequest,
    Usage,
    check_rows,
    format_ids,
    layers_phrase,
    resolve_layout,
    safe_yaml_loader,
)
from placement.errors import EngineFormatError, PlanError
from placement.filekinds import FileKind, Probe
from placement.plan import Plan

__all__ = ["FORMAT", "build_trtllm", "read_trtllm", "trtllm_default_row", "write_trtllm"]

KEYS = ("num_slots", "initial_global_assignments", "layer_updates_per_iter")
META_PREFIX = "# placement:"


def trtllm_default_row(num_slots: int, num_experts: int, ep_size: int) -> np.ndarray:
    """``[P]`` TensorRT-LLM's placement without a file: rank ``r``, local slot ``i`` holds
    ``(r * E // ep_size + i) % E``."""
    local = num_slots // ep_size
    r = np.repeat(np.arange(ep_size, dtype=np.int64), local)
    i = np.tile(np.arange(local, dtype=np.int64), ep_size)
    return (r * num_experts // ep_size + i) % num_experts


def build_trtllm(
    plan: Plan,
    *,
    num_hidden_layers: int | None = None,
    dense_layers: tuple[int, ...] | None = None,
    fill_missing: str = "error",
    mtp_layers: tuple[int, ...] = (),
    mtp_copy_from: int | None = None,
) -> dict[str, Any]:
    """The ``MoeLoadBalancerConfig`` dict: ``num_slots``, ``initial_global_assignments``
    (decoder-layer id -> ``P`` logical ids in slot order) and ``layer_updates_per_iter: 0``.

    MoE layers the plan misses (known when ``num_hidden_layers`` is) get TensorRT-LLM's default
    placement with ``fill_missing="trivial"``; every id in ``mtp_layers`` gets a copy of layer
    ``mtp_copy_from`` (default: the last planned layer).
    """
    nhl = num_hidden_layers if num_hidden_layers is not None else plan.num_hidden_layers
    layout = resolve_layout(plan.layer_ids, num_hidden_layers=nhl, dense_layers=dense_layers,
                            fill_missing=fill_missing, fmt="TensorRT-LLM")
    P, E, G = plan.num_slots, plan.num_experts, plan.cluster.num_gpus
    rows: dict[int, np.ndarray] = {int(lid): plan.phy2log[i]
                                   for i, lid in enumerate(plan.layer_ids.tolist())}
    for lid in layout.filled:
        rows[lid] = trtllm_default_row(P, E, G)
    mtp = tuple(sorted(int(m) for m in mtp_layers))
    if mtp:
        clash = sorted(set(mtp) & set(rows))
        if clash:
            raise PlanError(f"MTP layer ids {format_ids(clash)} are MoE layers of the plan.")
        if layout.num_hidden_layers is not None and mtp[0] < layout.num_hidden_layers:
            raise PlanError(
                f"MTP layer ids follow the decoder layers (>= num_hidden_layers="
                f"{layout.num_hidden_layers}), got {format_ids(mtp)}."
            )
        src = int(plan.layer_ids.max()) if mtp_copy_from is None else int(mtp_copy_from)
        if src not in rows:
            raise PlanError(f"cannot copy layer {src} to the MTP layers: it is not in the plan.")
        for m in mtp:
            rows[m] = rows[src]
    return {
        "num_slots": P,
        "initial_global_assignments": {k: [int(x) for x in rows[k]] for k in sorted(rows)},
        "layer_updates_per_iter": 0,
    }


def check_trtllm(obj: dict[str, Any], plan: Plan) -> None:
    """Check the object before writing (keys, ``num_slots``, every expert in every layer)."""
    if set(obj) != set(KEYS):
        raise EngineFormatError(f"TensorRT-LLM config must hold {KEYS}, got {sorted(obj)}.")
    ga = obj["initial_global_assignments"]
    labels = sorted(ga)
    rows = np.asarray([ga[k] for k in labels], dtype=np.int64)
    if rows.shape[1] != obj["num_slots"]:
        raise EngineFormatError("TensorRT-LLM config: assignment length differs from num_slots.")
    check_rows(rows, plan.num_experts, plan.cluster.num_gpus, labels,
               "TensorRT-LLM initial_global_assignments")


def dumps_trtllm(obj: dict[str, Any], meta: dict[str, Any] | None = None) -> str:
    """YAML text in the layout of TensorRT-LLM's ``generate_eplb_config.py`` (flow-style lists,
    integer keys), led by comment lines (``meta`` as JSON after ``# placement:``), which
    ``yaml.safe_load`` skips."""
    lines = [
        "# TensorRT-LLM MoE load balancer (static placement, written by placement).",
        "# Use it as  moe_config: {load_balancer: <this file>}  in the LLM API options YAML.",
    ]
    if meta:
        lines.append(f"{META_PREFIX} {json.dumps(meta, sort_keys=True)}")
    lines.append(f"num_slots: {int(obj['num_slots'])}")
    lines.append("initial_global_assignments:")
    for k, row in obj["initial_global_assignments"].items():
        lines.append(f"  {int(k)}: [" + ", ".join(str(int(x)) for x in row) + "]")
    lines.append(f"layer_updates_per_iter: {int(obj['layer_updates_per_iter'])}")
    return "\n".join(lines) + "\n"


def write_trtllm(obj: dict[str, Any], path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write the YAML atomically, after checking that it reads back to ``obj``; a ``.json``
    path gets JSON (which ``yaml.safe_load``, TensorRT-LLM's reader, reads too; JSON has no
    comments, so ``meta`` is left out)."""
    import yaml

    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(obj) + "\n")
        return
    text = dumps_trtllm(obj, meta)
    if yaml.load(text, Loader=safe_yaml_loader()) != obj:  # writer and reader must agree
        raise EngineFormatError("internal error: the YAML does not read back to the config.")
    atomic_write_text(path, text)


def _meta(text: str) -> dict[str, Any]:
    for line in text.splitlines()[:10]:
        if line.startswith(META_PREFIX):
            try:
                meta = json.loads(line[len(META_PREFIX):])
            except json.JSONDecodeError:
                return {}
            return meta if isinstance(meta, dict) else {}
    return {}


def read_trtllm(path: Path, data: Any, text: str = "") -> EngineFile:
    """A TensorRT-LLM load-balancer YAML (or an LLM API options file holding one inline)."""
    notes: list[str] = []
    lb = data
    if isinstance(data, dict) and ("moe_config" in data or "load_balancer" in data):
        moe = data.get("moe_config", data)
        lb = moe.get("load_balancer") if isinstance(moe, dict) else None
        if isinstance(lb, str):
            raise EngineFormatError(
                f"moe_config.load_balancer points to another file ({lb}): import that file.", path
            )
        if lb is None:
            raise EngineFormatError("has no moe_config.load_balancer.", path)
    if not isinstance(lb, dict):
        raise EngineFormatError(
            f"expected a mapping with {', '.join(KEYS)}, got {type(lb).__name__}.", path
        )
    unknown = sorted(str(k) for k in lb if k not in KEYS)
    if unknown:
        raise EngineFormatError(
            f"unknown key(s) {', '.join(unknown)}: TensorRT-LLM's MoeLoadBalancerConfig accepts "
            f"only {', '.join(KEYS)}.", path
        )
    ga = lb.get("initial_global_assignments")
    if ga is None:
        raise EngineFormatError(
            "has no initial_global_assignments: TensorRT-LLM starts from its default placement "
            "(and rebalances online if layer_updates_per_iter > 0); there is no plan to import.",
            path,
        )
    if not isinstance(ga, dict) or not ga:
        raise EngineFormatError("initial_global_assignments must map layer ids to lists.", path)
    num_slots = lb.get("num_slots")
    if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
        raise EngineFormatError(f"num_slots must be a positive integer, got {num_slots!r}.", path)
    updates = lb.get("layer_updates_per_iter", 0)
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        raise EngineFormatError(
            f"layer_updates_per_iter must be an integer >= 0, got {updates!r}.", path
        )
    if updates > 0:
        notes.append(f"layer_updates_per_iter={updates}: TensorRT-LLM rebalances online; this is "
                     "only the placement it starts from")
    keys: list[int] = []
    rows: list[list[int]] = []
    for k, v in ga.items():
        try:
            lid = int(k)
        except (TypeError, ValueError):
            raise EngineFormatError(f"layer key {k!r} is not an integer.", path) from None
        if isinstance(k, bool) or lid < 0 or str(k).strip() != str(lid):
            raise EngineFormatError(f"layer key {k!r} is not a layer id >= 0.", path)
        if lid in keys:
            raise EngineFormatError(f"layer {lid} appears twice.", path)
        if not isinstance(v, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in v
        ):
            raise EngineFormatError(f"layer {lid}: expected a list of expert ids.", path)
        if len(v) != num_slots:
            raise EngineFormatError(
                f"layer {lid} has {len(v)} slots but num_slots is {num_slots}.", path
            )
        keys.append(lid)
        rows.append(v)
    order = np.argsort(keys)
    phy2log = np.asarray(rows, dtype=np.int64)[order]
    meta = _meta(text)
    mtp = tuple(int(m) for m in meta.get("mtp_layers", []) if isinstance(m, int))
    nhl = meta.get("num_hidden_layers")
    E = meta.get("num_experts")
    return EngineFile(
        path=path, fmt="trtllm", phy2log=phy2log, may_hold_mtp=True,
        row_layer_ids=np.asarray(keys, dtype=np.int64)[order],
        num_experts=E if isinstance(E, int) else None,
        num_hidden_layers=nhl if isinstance(nhl, int) else None,
        mtp_layers=mtp, model=meta.get("model") if isinstance(meta.get("model"), str) else None,
        notes=notes,
    )


def trtllm_usage(plan: Plan, path: Path) -> tuple[list[str], list[str]]:
    """How to use the file: ``(options YAML lines, run line)``."""
    c = plan.cluster
    return [
        "moe_config:",
        "  backend: WIDEEP",
        f"  load_balancer: {path.resolve()}",
    ], [
        f"run with EP size {c.num_gpus} (trtllm-serve MODEL --tp_size {c.num_gpus} --ep_size "
        f"{c.num_gpus} --extra_llm_api_options OPTIONS.yaml); num_slots {plan.num_slots} = "
        f"{c.num_gpus} x {c.slots_per_gpu}",
    ]


MTP_MODELS = ("deepseek-v3",)
"""Models served with MTP speculative decoding, whose MTP layer (the layer after the last
decoder layer: 61 for DeepSeek-V3/R1) TensorRT-LLM looks up in the load balancer."""


def _mtp_warning(plan: Plan, num_hidden_layers: int | None) -> tuple[str, ...]:
    """The warning for an export without ``--mtp-layers`` of a plan for a model with an MTP
    layer (its model name, else its expert count, points to one of :data:`MTP_MODELS`)."""
    from placement.models import guess_model

    m = guess_model(plan.model, num_experts=plan.num_experts)
    if m is None or m.name not in MTP_MODELS or m.num_experts != plan.num_experts:
        return ()
    mtp = num_hidden_layers if num_hidden_layers is not None else m.num_hidden_layers
    return (f"no --mtp-layers: {m.name} has an MTP layer ({mtp}), and with MTP speculative "
            f"decoding TensorRT-LLM fails at start-up without an assignment for it: export "
            f"again with --mtp-layers {mtp} (without MTP, ignore this).",)


class TrtllmFormat:
    """The ``trtllm`` format: TensorRT-LLM's ``moe_config.load_balancer`` file."""

    name = "trtllm"
    engine = "TensorRT-LLM moe_config.load_balancer"
    suffixes = (".yaml", ".yml", ".json")
    suffix_reason = " (.json writes JSON, the others YAML; TensorRT-LLM reads both)"
    options = frozenset({"mtp_layers", "mtp_copy_from"})
    kind = FileKind("trtllm", "engine",
                    "a TensorRT-LLM load-balancer config (moe_config.load_balancer)")

    def detect(self, probe: Probe) -> bool:
        return probe.container in ("json", "text") and bool(
            {"initial_global_assignments", "num_slots", "moe_config", "load_balancer"}
            & probe.keys())

    def build(self, plan: Plan, request: ExportRequest, path: Path) -> Built:
        mtp = tuple(sorted(int(m) for m in request.mtp_layers))
        cfg = build_trtllm(plan, mtp_layers=mtp, mtp_copy_from=request.mtp_copy_from,
                           **request.layout_kw)
        layout = resolve_layout(plan.layer_ids, **request.layout_kw)
        notes = layout.notes("TensorRT-LLM's default placement")
        if mtp:
            src = (int(plan.layer_ids.max()) if request.mtp_copy_from is None
                   else int(request.mtp_copy_from))
            notes.append(f"MTP {layers_phrase(mtp)} {'gets' if len(mtp) == 1 else 'get'} a "
                         f"copy of layer {src}'s assignment (TensorRT-LLM fails at start-up "
                         "without one)")
        meta: dict[str, Any] = {"num_experts": plan.num_experts}
        if layout.num_hidden_layers is not None:
            meta["num_hidden_layers"] = layout.num_hidden_layers
        if mtp:
            meta["mtp_layers"] = list(mtp)
        if plan.model:
            meta["model"] = plan.model
        if path.suffix.lower() == ".json":
            notes.append("written as JSON, which TensorRT-LLM reads like YAML (yaml.safe_load); "
                         "JSON has no comment line for the layers' metadata, so give "
                         "--mtp-layers again when you import it" if mtp else
                         "written as JSON, which TensorRT-LLM reads like YAML (yaml.safe_load)")
        ids = tuple(cfg["initial_global_assignments"])
        warnings = () if mtp else _mtp_warning(plan, layout.num_hidden_layers)
        return Built(
            obj=cfg,
            description=f"TensorRT-LLM load balancer, num_slots {plan.num_slots}, {len(ids)} "
                        f"layers ({format_ids(ids)}), layer_updates_per_iter 0 (static)",
            layer_ids=ids,
            notes=tuple(notes),
            meta=meta,
            warnings=warnings,
        )

    def check(self, built: Built, plan: Plan) -> None:
        check_trtllm(built.obj, plan)

    def write(self, built: Built, path: Path) -> None:
        write_trtllm(built.obj, path, built.meta)

    def read(self, path: Path, container: str, data: Any, text: str) -> EngineFile:
        return read_trtllm(path, data, text)

    def usage(self, plan: Plan, path: Path) -> Usage:
        snippet, run = trtllm_usage(plan, path)
        return Usage(
            lines=("put this in the LLM API options YAML (--extra_llm_api_options / --config):",
                   *(f"  {u}" for u in snippet), *run),
            warnings=("layer_updates_per_iter > 0 would make TensorRT-LLM rebalance online and "
                      "move away from this placement.",),
        )


FORMAT = TrtllmFormat()
"""The format object :mod:`placement.engines.registry` registers."""
