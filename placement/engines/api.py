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

import numpy as np

from placement.cluster import Cluster, load_cluster
from placement.engines._common import (
    FILL_CHOICES,
    EngineFile,
    ExportRequest,
    format_ids,
    layers_phrase,
    load_container,
    trivial_row,
)
from placement.engines.registry import format_names, formats, get_format
from placement.errors import ClusterError, EngineFormatError, InputError, PlanError
from placement.filekinds import Probe, identify, mismatch
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
        fmt: a registered format (:data:`placement.engines.FORMATS`: ``sglang``, ``trtllm``,
            ``eplb``, ``vllm-ascend``).
        path: output file; it must end in one of the format's suffixes, which picks the
            container where there are several (``sglang``: ``.json``/``.pt``; ``eplb``:
            ``.pt``/``.npz``; ``trtllm``: ``.yaml``/``.yml``, or ``.json`` for JSON).
        num_hidden_layers: decoder layers of the model (dense ones included) when the plan
            does not say; without either, the model preset the plan's model name points to
            gives it. SGLang needs it unless the plan's layers are ``0..L-1``.
        dense_layers: decoder layers without routed experts; default: those below the first
            planned layer (DeepSeek-V3: 0-2).
        fill_missing: ``"error"`` (default) or ``"trivial"``: what to do with MoE layers the plan
            does not cover (known when the number of decoder layers is).
        mtp_layers: ``trtllm`` only: MTP layer ids (DeepSeek-V3: 61) that need an assignment.
        mtp_copy_from: the layer whose assignment the MTP layers copy (default: the last one).
    """
    form = get_format(fmt)
    path = Path(path)
    if fill_missing not in FILL_CHOICES:
        raise InputError(f"Expected fill_missing in {FILL_CHOICES}, got {fill_missing!r}.")
    if path.suffix.lower() not in form.suffixes:
        endings = form.suffixes
        said = (", ".join(endings[:-1]) + " or " + endings[-1]) if len(endings) > 1 \
            else endings[0]
        raise InputError(f"{path}: --format {form.name} needs a file ending in {said}"
                         f"{form.suffix_reason}.")
    for option, value in (("mtp_layers", tuple(mtp_layers)), ("mtp_copy_from", mtp_copy_from)):
        if value not in ((), None) and option not in form.options:
            takers = [f.name for f in formats() if option in f.options]
            raise InputError(f"--{option.replace('_', '-')} applies to the "
                             f"{' and '.join(takers) or 'no'} format only.")
    if (num_hidden_layers is not None and plan.num_hidden_layers is not None
            and num_hidden_layers != plan.num_hidden_layers):
        raise PlanError(f"num_hidden_layers={num_hidden_layers} but the plan says "
                        f"{plan.num_hidden_layers}.")
    notes: list[str] = []
    nhl = num_hidden_layers if num_hidden_layers is not None else plan.num_hidden_layers
    if nhl is None:
        nhl, note = _layers_of_model(plan)
        notes += [note] if note else []
    request = ExportRequest(
        num_hidden_layers=nhl,
        dense_layers=None if dense_layers is None else tuple(int(d) for d in dense_layers),
        fill_missing=fill_missing, mtp_layers=tuple(int(m) for m in mtp_layers),
        mtp_copy_from=mtp_copy_from,
    )
    # 1. build, 2. check (nothing is written if either fails), 3. write, 4. say how to use it
    built = form.build(plan, request, path)
    form.check(built, plan)
    form.write(built, path)
    usage = form.usage(plan, path)
    return ExportResult(path=path, fmt=form.name, layer_ids=built.layer_ids,
                        num_slots=plan.num_slots, description=built.description,
                        notes=(*notes, *built.notes), usage=usage.lines,
                        warnings=(*built.warnings, *usage.warnings))


def _layers_of_model(plan: Plan) -> tuple[int | None, str]:
    """Decoder layers from the model preset the plan's model name points to, when the plan
    places every MoE layer of that model (the plan's source trace named its model and traced
    all of its MoE layers, but did not count the dense ones): ``(n, note)`` or ``(None, "")``."""
    from placement.models import guess_model

    m = guess_model(plan.model) if plan.model else None
    if (m is None or m.num_experts != plan.num_experts or m.num_moe_layers != plan.num_layers
            or m.num_hidden_layers <= int(plan.layer_ids.max())):
        return None, ""
    return m.num_hidden_layers, (
        f"the model has {m.num_hidden_layers} decoder layers (model preset {m.name}, from the "
        f"plan's model name {plan.model!r}; pass --num-hidden-layers to say otherwise)"
    )


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


def detect_format(source: str | Path | Probe) -> str | None:
    """The registered format a file's content belongs to, or None when it matches none."""
    probe = source if isinstance(source, Probe) else Probe(source)
    return next((f.name for f in formats() if f.detect(probe)), None)


def read_engine_file(path: str | Path, fmt: str = "auto") -> EngineFile:
    """Read an engine placement file; ``fmt="auto"`` detects the format by content."""
    path = Path(path)
    if fmt != "auto":
        get_format(fmt)
    probe = Probe(path)
    found = detect_format(probe)
    if found is None:
        kind = identify(probe)
        if kind is not None and kind.role != "engine":
            raise EngineFormatError(mismatch(kind, "engine", path), path)
    container, data, text = load_container(path, probe)
    if fmt == "auto":
        if found is None:
            what = (f"keys {sorted(map(str, data))}" if isinstance(data, dict)
                    else f"a {type(data).__name__}")
            raise EngineFormatError(
                f"not a known engine placement file ({what}); formats: "
                f"{', '.join(format_names())}.", path,
            )
        fmt = found
    elif found is not None and found != fmt:
        raise EngineFormatError(f"holds a {found} placement, not {fmt}.", path)
    return get_format(fmt).read(path, container, data, text)


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
    elif ef.row_layer_ids is not None and ef.may_hold_mtp:
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
