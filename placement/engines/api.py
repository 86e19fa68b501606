"""Plans out to engine files (:func:`export_plan`) and engine files in to plans
(:func:`import_plan`).

Formats (see each module for the engine source it follows):

* ``sglang``: ``--init-expert-location`` ``physical_to_logical_map [num_hidden_layers, P]``
  (``.json`` or ``.pt``), :mod:`placement.engines.sglang`;
* ``trtllm``: TensorRT-LLM ``moe_config.load_balancer`` YAML, :mod:`placement.engines.trtllm`;
* ``eplb``: DeepSeek EPLB tensors ``phy2log``/``log2phy``/``logcnt`` (``.pt`` or ``.npz``),
  :mod:`placement.engines.eplb`;
* ``vllm-ascend``: vLLM-Ascend ``expert_map_path`` JSON, :mod:`placement.engines.vllm_ascend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from placement.cluster import Cluster, load_cluster
from placement.engines import eplb as _eplb
from placement.engines import sglang as _sglang
from placement.engines import trtllm as _trtllm
from placement.engines import vllm_ascend as _vllm
from placement.engines._common import (
    FILL_CHOICES,
    FORMATS,
    EngineFile,
    format_ids,
    layers_phrase,
    load_container,
    resolve_layout,
    trivial_row,
)
from placement.errors import ClusterError, EngineFormatError, InputError, PlanError
from placement.plan import Plan

__all__ = [
    "ExportResult",
    "ImportResult",
    "complete_cluster",
    "detect_format",
    "engine_file_to_plan",
    "export_plan",
    "import_plan",
    "read_engine_file",
]


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_plan` wrote.

    Args:
        path: the file written.
        fmt: its format.
        layer_ids: decoder-layer id of every layer row in the file (MoE index for vLLM-Ascend,
            whose file is indexed by MoE layer).
        num_slots: P, slots per layer.
        description: one line saying what the file holds.
        notes: what was assumed or filled in.
        usage: lines that say how to use the file (server flags, config snippet).
        warnings: things that would undo the placement.
    """

    path: Path
    fmt: str
    layer_ids: tuple[int, ...]
    num_slots: int
    description: str
    notes: tuple[str, ...] = ()
    usage: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        """Lines for people: what was written, notes, how to use it, warnings."""
        lines = [f"wrote {self.path}: {self.description}"]
        lines += [f"note: {n}" for n in self.notes]
        lines += self.usage
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


_SUFFIXES = {"sglang": _sglang.SUFFIXES, "eplb": _eplb.SUFFIXES}


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"Unknown engine format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
    return fmt


def export_plan(
    plan: Plan,
    fmt: str,
    path: str | Path,
    *,
    num_hidden_layers: int | None = None,
    dense_layers: Sequence[int] | None = None,
    fill_missing: str = "error",
    mtp_layers: Sequence[int] = (),
    mtp_copy_from: int | None = None,
) -> ExportResult:
    """Write ``plan`` as an engine file, checked first, atomically.

    Args:
        plan: the placement.
        fmt: one of ``sglang``, ``trtllm``, ``eplb``, ``vllm-ascend``.
        path: output file; its suffix picks the container for ``sglang`` (``.json``/``.pt``) and
            ``eplb`` (``.pt``/``.npz``).
        num_hidden_layers: decoder layers of the model (dense ones included) when the plan
            does not say; SGLang needs it unless the plan's layers are ``0..L-1``.
        dense_layers: decoder layers without routed experts; default: those below the first
            planned layer (DeepSeek-V3: 0-2).
        fill_missing: ``"error"`` (default) or ``"trivial"``: what to do with MoE layers the plan
            does not cover (known when the number of decoder layers is).
        mtp_layers: ``trtllm`` only: MTP layer ids (DeepSeek-V3: 61) that need an assignment.
        mtp_copy_from: the layer whose assignment the MTP layers copy (default: the last one).
    """
    fmt = _check_format(fmt)
    path = Path(path)
    if fill_missing not in FILL_CHOICES:
        raise InputError(f"Expected fill_missing in {FILL_CHOICES}, got {fill_missing!r}.")
    suffixes = _SUFFIXES.get(fmt)
    if suffixes and path.suffix.lower() not in suffixes:
        why = (" (SGLang parses any other --init-expert-location value as inline JSON)"
               if fmt == "sglang" else "")
        raise InputError(f"{path}: a {fmt} file must end in {' or '.join(suffixes)}{why}.")
    if tuple(mtp_layers) and fmt != "trtllm":
        raise InputError("--mtp-layers applies to the trtllm format only.")
    dense = None if dense_layers is None else tuple(int(d) for d in dense_layers)
    nhl = num_hidden_layers if num_hidden_layers is not None else plan.num_hidden_layers
    if (num_hidden_layers is not None and plan.num_hidden_layers is not None
            and num_hidden_layers != plan.num_hidden_layers):
        raise PlanError(f"num_hidden_layers={num_hidden_layers} but the plan says "
                        f"{plan.num_hidden_layers}.")
    P, E = plan.num_slots, plan.num_experts
    notes: list[str] = []
    usage: list[str] = []
    warnings: list[str] = []
    layout_kw: dict[str, Any] = dict(num_hidden_layers=nhl, dense_layers=dense,
                                     fill_missing=fill_missing)
    if fmt == "sglang":
        obj = _sglang.build_sglang(plan, **layout_kw)
        _sglang.check_sglang(obj, plan)
        rows = obj[_sglang.KEY]
        layout = resolve_layout(plan.layer_ids, need_num_hidden_layers=True, **layout_kw)
        triv = f"trivial rows arange({P}) % {E}"
        notes += layout.notes(triv, dense_rows=True)
        _sglang.write_sglang(obj, path)
        ids = tuple(range(rows.shape[0]))
        desc = (f"SGLang physical_to_logical_map, {rows.shape[0]} rows (decoder layers) x {P} "
                "slots")
        usage += ["launch SGLang (python -m sglang.launch_server ...) with:"]
        usage += [f"  {f}" for f in _sglang.sglang_flags(plan, path)]
        warnings.append("do not add --enable-eplb: SGLang would rebalance online and overwrite "
                        "this placement.")
    elif fmt == "trtllm":
        mtp = tuple(sorted(int(m) for m in mtp_layers))
        cfg = _trtllm.build_trtllm(plan, mtp_layers=mtp, mtp_copy_from=mtp_copy_from,
                                   **layout_kw)
        _trtllm.check_trtllm(cfg, plan)
        layout = resolve_layout(plan.layer_ids, **layout_kw)
        notes += layout.notes("TensorRT-LLM's default placement")
        if mtp:
            src = int(plan.layer_ids.max()) if mtp_copy_from is None else int(mtp_copy_from)
            notes.append(f"MTP {layers_phrase(mtp)} {'gets' if len(mtp) == 1 else 'get'} a copy "
                         f"of layer {src}'s assignment "
                         "(TensorRT-LLM fails at start-up without one)")
        meta: dict[str, Any] = {"num_experts": E}
        if layout.num_hidden_layers is not None:
            meta["num_hidden_layers"] = layout.num_hidden_layers
        if mtp:
            meta["mtp_layers"] = list(mtp)
        if plan.model:
            meta["model"] = plan.model
        _trtllm.write_trtllm(cfg, path, meta)
        ids = tuple(cfg["initial_global_assignments"])
        desc = (f"TensorRT-LLM load balancer, num_slots {P}, {len(ids)} layers "
                f"({format_ids(ids)}), layer_updates_per_iter 0 (static)")
        snippet, run = _trtllm.trtllm_usage(plan, path)
        usage += ["put this in the LLM API options YAML (--extra_llm_api_options / --config):"]
        usage += [f"  {u}" for u in snippet] + run
        warnings.append("layer_updates_per_iter > 0 would make TensorRT-LLM rebalance online and "
                        "move away from this placement.")
    elif fmt == "eplb":
        tensors = _eplb.build_eplb(plan)
        if nhl is not None:
            tensors["num_hidden_layers"] = np.asarray(nhl, dtype=np.int64)
        _eplb.check_eplb(tensors, plan)
        _eplb.write_eplb(tensors, path)
        ids = tuple(plan.layer_ids.tolist())
        R = tensors["log2phy"].shape[2]
        desc = (f"EPLB tensors phy2log [{plan.num_layers}, {P}], log2phy [{plan.num_layers}, "
                f"{E}, {R}], logcnt [{plan.num_layers}, {E}] (layers {format_ids(ids)})")
        loader = ("torch.load(path, weights_only=True)" if path.suffix.lower() == ".pt"
                  else "numpy.load(path, allow_pickle=False)")
        usage.append(f"load with {loader}; rows follow layer_ids")
    else:
        vmap = _vllm.build_vllm_ascend(plan, **layout_kw)
        _vllm.check_vllm_ascend(vmap, plan)
        layout = resolve_layout(plan.layer_ids, **layout_kw)
        notes += layout.notes(f"arange({P}) % {E}")
        notes.append(f"layer_list entries are MoE layers {format_ids(layout.moe)} in order "
                     f"(layer_id 0..{len(layout.moe) - 1}, as vLLM-Ascend indexes them)")
        _vllm.write_vllm_ascend(vmap, path)
        ids = tuple(range(vmap["moe_layer_count"]))
        desc = (f"vLLM-Ascend expert map, {vmap['moe_layer_count']} MoE layers x "
                f"{plan.cluster.num_gpus} devices x {plan.cluster.slots_per_gpu} experts")
        usage += ["serve with:"] + [f"  {u}" for u in _vllm.vllm_ascend_usage(path)]
        warnings.append("dynamic_eplb would rebalance online and move away from this placement.")
    return ExportResult(path=path, fmt=fmt, layer_ids=ids, num_slots=P, description=desc,
                        notes=tuple(notes), usage=tuple(usage), warnings=tuple(warnings))


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_plan` read.

    Args:
        plan: the placement as a :class:`Plan` (method ``imported:<format>``).
        fmt: the file's format.
        path: the file.
        dropped_rows: file rows left out of the plan (dense or MTP layers), by their label.
        notes: what was assumed.
    """

    plan: Plan
    fmt: str
    path: Path
    dropped_rows: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """Lines for people."""
        p = self.plan
        lines = [
            f"imported {self.path} ({self.fmt}): {p.num_layers} MoE layers "
            f"({format_ids(p.layer_ids.tolist())}), {p.num_experts} experts, {p.num_slots} slots "
            f"({p.num_redundant} redundant), cluster {p.cluster.shape}"
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def detect_format(container: str, data: Any) -> str | None:
    """The format a loaded file's content belongs to, or None when it matches none."""
    if container == "npz":
        return "eplb" if "phy2log" in data else None
    if not isinstance(data, dict):
        return None
    keys = set(map(str, data))
    if keys & {"physical_to_logical_map", "logical_count"}:
        return "sglang"
    if keys & {"moe_layer_count", "layer_list"}:
        return "vllm-ascend"
    if keys & {"initial_global_assignments", "num_slots", "moe_config", "load_balancer"}:
        return "trtllm"
    if "phy2log" in keys:
        return "eplb"
    return None


def read_engine_file(path: str | Path, fmt: str = "auto") -> EngineFile:
    """Read an engine placement file; ``fmt="auto"`` detects the format by content."""
    path = Path(path)
    if fmt != "auto":
        _check_format(fmt)
    container, data, text = load_container(path)
    if isinstance(data, dict) and data.get("format") == "placement-plan":
        raise EngineFormatError("is already a placement plan, not an engine file.", path)
    found = detect_format(container, data)
    if fmt == "auto":
        if found is None:
            what = (f"keys {sorted(map(str, data))}" if isinstance(data, dict)
                    else f"a {type(data).__name__}")
            raise EngineFormatError(
                f"not a known engine placement file ({what}); formats: {', '.join(FORMATS)}.",
                path,
            )
        fmt = found
    elif found is not None and found != fmt:
        raise EngineFormatError(f"holds a {found} placement, not {fmt}.", path)
    if fmt == "sglang":
        return _sglang.read_sglang(path, data)
    if fmt == "trtllm":
        return _trtllm.read_trtllm(path, data, text)
    if fmt == "eplb":
        return _eplb.read_eplb(path, data)
    return _vllm.read_vllm_ascend(path, data)


def complete_cluster(
    ef: EngineFile,
    *,
    preset: str | None = None,
    cluster_file: str | Path | None = None,
    num_nodes: int | None = None,
    gpus_per_node: int | None = None,
    slots_per_gpu: int | None = None,
) -> Cluster:
    """The cluster for an imported file: from a preset or TOML file (flags override), from all
    three flags, or completed from what the file says (its slots, device count, nodes)."""
    if preset is not None or cluster_file is not None or None not in (
        num_nodes, gpus_per_node, slots_per_gpu
    ):
        return load_cluster(preset=preset, path=cluster_file, num_nodes=num_nodes,
                            gpus_per_node=gpus_per_node, slots_per_gpu=slots_per_gpu)
    P = ef.num_slots
    G = ef.num_devices
    if G is None and num_nodes is not None and gpus_per_node is not None:
        G = num_nodes * gpus_per_node
    if G is None and slots_per_gpu is not None and P % slots_per_gpu == 0:
        G = P // slots_per_gpu
    if G is None:
        raise ClusterError(
            f"{ef.path}: the file does not say how many GPUs hold its {P} slots: give the "
            "cluster with --preset/--cluster or --nodes, --gpus-per-node and --slots-per-gpu."
        )
    if gpus_per_node is None and num_nodes is None:
        if ef.num_nodes is None:
            raise ClusterError(
                f"{ef.path}: the file places {P} slots on {G} devices; say how they split into "
                "nodes with --nodes or --gpus-per-node (or give --preset/--cluster)."
            )
        num_nodes = ef.num_nodes
    if gpus_per_node is None:
        assert num_nodes is not None
        if G % num_nodes:
            raise ClusterError(f"{ef.path}: {G} devices do not split into {num_nodes} nodes.")
        gpus_per_node = G // num_nodes
    if num_nodes is None:
        if G % gpus_per_node:
            raise ClusterError(
                f"{ef.path}: {G} devices do not split into nodes of {gpus_per_node}."
            )
        num_nodes = G // gpus_per_node
    if slots_per_gpu is None:
        if P % G:
            raise ClusterError(f"{ef.path}: {P} slots do not split over {G} devices.")
        slots_per_gpu = P // G
    return Cluster(num_nodes=num_nodes, gpus_per_node=gpus_per_node, slots_per_gpu=slots_per_gpu)


def _leading_trivial(rows: np.ndarray, num_experts: int) -> int:
    triv = trivial_row(rows.shape[1], num_experts)
    same = np.all(rows == triv[None, :], axis=1)
    return int(np.argmin(same)) if not same.all() else rows.shape[0]


def engine_file_to_plan(
    ef: EngineFile,
    cluster: Cluster,
    *,
    num_experts: int | None = None,
    layer_ids: Sequence[int] | None = None,
    dense_layers: Sequence[int] | None = None,
    num_hidden_layers: int | None = None,
    mtp_layers: Sequence[int] | None = None,
    model: str | None = None,
) -> ImportResult:
    """Tie an engine file's rows to decoder layers and a cluster, and validate them as a Plan.

    Which rows are MoE layers, and their decoder-layer ids:

    * ``layer_ids`` (MoE layers) or ``dense_layers`` when given;
    * SGLang (a row per decoder layer): otherwise the leading rows equal to the trivial row
      ``arange(P) % E`` are dense layers (DeepSeek-V3: rows 0-2), unless every row is;
    * TensorRT-LLM: the keys; rows of MTP layers (``mtp_layers``, the ids the file's
      ``# placement:`` line names, or ids ``>= num_hidden_layers``) are dropped;
    * EPLB: the stored ``layer_ids``, else ``0..L-1``;
    * vLLM-Ascend (rows are MoE layers in order): ``0..L-1``, or the last ``L`` decoder layers
      when ``num_hidden_layers`` is given.
    """
    path = ef.path
    notes = list(ef.notes)
    rows = ef.phy2log
    R, P = rows.shape
    # 1. the cluster must match the file
    if P != cluster.num_slots:
        raise EngineFormatError(
            f"holds {P} slots per layer but cluster {cluster.shape} has {cluster.num_slots} "
            f"({cluster.num_gpus} GPUs x {cluster.slots_per_gpu}).", path
        )
    if ef.num_devices is not None and ef.num_devices != cluster.num_gpus:
        raise EngineFormatError(
            f"places experts on {ef.num_devices} devices but cluster {cluster.shape} has "
            f"{cluster.num_gpus} GPUs.", path
        )
    if ef.num_nodes is not None and ef.num_nodes != cluster.num_nodes:
        notes.append(f"the file was written for {ef.num_nodes} node(s); using "
                     f"{cluster.num_nodes}")
    dense = None if dense_layers is None else tuple(sorted(int(d) for d in dense_layers))
    lids_opt = None if layer_ids is None else tuple(sorted(int(i) for i in layer_ids))
    if dense is not None and lids_opt is not None:
        raise InputError("Give either the MoE layer ids or the dense layers, not both.")
    nhl = num_hidden_layers if num_hidden_layers is not None else ef.num_hidden_layers
    if num_hidden_layers is not None and ef.num_hidden_layers is not None \
            and num_hidden_layers != ef.num_hidden_layers:
        raise EngineFormatError(
            f"has {ef.num_hidden_layers} decoder layers, not num_hidden_layers="
            f"{num_hidden_layers}.", path
        )
    E_hint = num_experts if num_experts is not None else ef.num_experts
    # 2. which rows are MoE layers, and their decoder-layer ids
    labels = (ef.row_layer_ids if ef.row_layer_ids is not None
              else np.arange(R, dtype=np.int64))
    keep = np.ones(R, dtype=bool)
    ids: np.ndarray
    if ef.all_decoder_layers:  # SGLang: row i is decoder layer i
        if lids_opt is not None:
            bad = [i for i in lids_opt if i >= R]
            if bad:
                raise InputError(f"{path}: MoE {layers_phrase(bad)} beyond the file's "
                                 f"{R} rows.")
            keep[:] = False
            keep[list(lids_opt)] = True
        elif dense is not None:
            bad = [d for d in dense if d >= R]
            if bad:
                raise InputError(f"{path}: dense {layers_phrase(bad)} beyond the file's "
                                 f"{R} rows.")
            keep[list(dense)] = False
        else:
            E0 = E_hint if E_hint is not None else int(rows.max()) + 1
            k = _leading_trivial(rows, E0)
            if k == R:
                notes.append(f"every row equals the trivial row arange({P}) % {E0}: all taken "
                             "as MoE layers")
            elif k:
                keep[:k] = False
                notes.append(f"{layers_phrase(range(k), 'row')} "
                             f"{'equals' if k == 1 else 'equal'} the trivial row arange({P}) % "
                             f"{E0}: taken as dense (pass --dense-layers or --layer-ids "
                             "to say otherwise)")
        ids = labels[keep]
    elif ef.row_layer_ids is not None and ef.fmt == "trtllm":
        mtp = set(int(m) for m in (mtp_layers if mtp_layers is not None else ef.mtp_layers))
        if nhl is not None:
            mtp |= {int(i) for i in labels if i >= nhl}
        drop = np.isin(labels, sorted(mtp)) if mtp else np.zeros(R, dtype=bool)
        if drop.any():
            notes.append(f"MTP {layers_phrase(labels[drop].tolist())} left out")
        keep &= ~drop
        ids = labels[keep]
        if dense is not None and set(dense) & set(ids.tolist()):
            both = sorted(set(dense) & set(ids.tolist()))
            raise InputError(f"{path}: {layers_phrase(both)} declared dense, but the file "
                             "assigns experts there.")
        if lids_opt is not None and lids_opt != tuple(ids.tolist()):
            raise InputError(f"{path}: the file's layers are {format_ids(ids.tolist())}, not "
                             f"{format_ids(lids_opt)}.")
    elif ef.row_layer_ids is not None and lids_opt is None and dense is None:
        ids = labels
    else:  # rows are MoE layers in order: vLLM-Ascend, EPLB without layer_ids
        ids = _positional_ids(path, R, lids_opt, dense, nhl, notes, ef.row_layer_ids)
    if not keep.any():
        raise EngineFormatError("holds no MoE layer rows.", path)
    moe_rows = rows[keep]
    # 3. the number of experts
    E = E_hint if E_hint is not None else int(moe_rows.max()) + 1
    if moe_rows.max() >= E:
        raise EngineFormatError(f"holds expert {int(moe_rows.max())} but num_experts is {E}.",
                                path)
    if nhl is None and ef.all_decoder_layers:
        nhl = R
    if nhl is not None and ids.size and int(ids.max()) >= nhl:
        raise EngineFormatError(f"has layer {int(ids.max())} but the model has {nhl} decoder "
                                "layers.", path)
    # 4. a validated plan; engines accept two replicas of one expert on one GPU (DeepSeek's EPLB
    #    makes such placements, and so does SGLang's trivial map when a GPU has more slots than
    #    there are experts), so an imported plan may hold them
    try:
        plan = Plan(
            cluster=cluster, num_experts=E, layer_ids=ids, phy2log=moe_rows,
            num_hidden_layers=nhl, model=model if model is not None else ef.model,
            method=f"imported:{ef.fmt}", settings={"source": str(path), "format": ef.fmt},
            status="IMPORTED", allow_colocated_replicas=True,
        )
    except PlanError as exc:
        raise EngineFormatError(f"not a valid placement: {exc.reason}", path) from None
    return ImportResult(plan=plan, fmt=ef.fmt, path=path,
                        dropped_rows=tuple(labels[~keep].tolist()), notes=tuple(notes))


def _positional_ids(path: Path, R: int, lids: tuple[int, ...] | None,
                    dense: tuple[int, ...] | None, nhl: int | None, notes: list[str],
                    stored: np.ndarray | None) -> np.ndarray:
    """Decoder-layer ids of ``R`` rows that are the MoE layers in model order."""
    if lids is not None:
        if len(lids) != R:
            raise InputError(f"{path}: the file has {R} MoE layers but {len(lids)} layer ids "
                             "were given.")
        out = np.asarray(lids, dtype=np.int64)
    elif dense is not None:
        n = nhl if nhl is not None else R + len(dense)
        out = np.asarray(sorted(set(range(n)) - set(dense)), dtype=np.int64)
        if out.size != R:
            raise InputError(f"{path}: {n} decoder layers minus {len(dense)} dense layers leave "
                             f"{out.size} MoE layers, but the file has {R}.")
    elif nhl is not None:
        if R > nhl:
            raise InputError(f"{path}: the file has {R} MoE layers but the model only {nhl} "
                             "decoder layers.")
        out = np.arange(nhl - R, nhl, dtype=np.int64)
        if nhl > R:
            notes.append(f"decoder layers 0-{nhl - R - 1} taken as dense (the file's {R} rows "
                         f"are layers {nhl - R}-{nhl - 1}; pass --layer-ids to say otherwise)")
    else:
        out = np.arange(R, dtype=np.int64)
        notes.append(f"layer ids are MoE-layer indices 0-{R - 1}; pass --first-k-dense, "
                     "--dense-layers or --layer-ids for decoder-layer ids")
    if stored is not None and not np.array_equal(stored, out):
        raise InputError(f"{path}: the file's layer_ids are {format_ids(stored.tolist())}, not "
                         f"{format_ids(out.tolist())}.")
    return out


def import_plan(
    path: str | Path,
    cluster: Cluster | None = None,
    *,
    fmt: str = "auto",
    num_experts: int | None = None,
    layer_ids: Sequence[int] | None = None,
    dense_layers: Sequence[int] | None = None,
    num_hidden_layers: int | None = None,
    mtp_layers: Sequence[int] | None = None,
    model: str | None = None,
) -> ImportResult:
    """Read a deployed engine placement into a :class:`Plan` (see :func:`engine_file_to_plan`);
    without ``cluster`` the file must say it (EPLB files written by ``placement`` do)."""
    ef = read_engine_file(path, fmt)
    if cluster is None:
        cluster = complete_cluster(ef)
    return engine_file_to_plan(
        ef, cluster, num_experts=num_experts, layer_ids=layer_ids, dense_layers=dense_layers,
        num_hidden_layers=num_hidden_layers, mtp_layers=mtp_layers, model=model,
    )
