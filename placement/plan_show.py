"""What a plan is, at a glance: cluster, method, replicas per expert, what every GPU and node holds.

:func:`describe_plan` turns a :class:`~placement.plan.Plan` into a :class:`PlanView` (plain data,
``to_dict()`` for scripts); :func:`format_plan_view` writes it for people. Per layer:

* replicas per expert: ``logcnt [E]``, as a histogram (``1 x 226, 2 x 28, 3 x 2``) and the most
  replicated experts (a plan gives hot experts more replicas, so these are the hottest experts as
  the plan saw them);
* the experts of every GPU in slot order, and the distinct experts of every node;
* slots: every slot holds an expert; ``colocated`` counts the slots holding a second replica of
  an expert on the same GPU (the engines accept it, DeepSeek's EPLB makes it; it adds no
  capacity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placement._util import format_ids
from placement.errors import InputError
from placement.plan import Plan, compute_logcnt

__all__ = ["LayerView", "PlanView", "describe_plan", "format_plan_view"]

TOP = 8
"""Most replicated experts listed per layer in text."""


@dataclass(frozen=True)
class LayerView:
    """One layer of a plan.

    Attributes:
        layer_id: decoder-layer id.
        replicas: ``[E]`` replicas of every expert (``logcnt``).
        gpus: ``[G, spg]`` the expert of every slot, GPU by GPU.
        colocated: slots holding a second (or later) replica of an expert on the same GPU.
    """

    layer_id: int
    replicas: np.ndarray
    gpus: np.ndarray
    colocated: int

    @property
    def histogram(self) -> dict[int, int]:
        """Replica count -> number of experts with that many replicas."""
        vals, cnt = np.unique(self.replicas, return_counts=True)
        return {int(v): int(c) for v, c in zip(vals, cnt, strict=True)}

    def most_replicated(self, n: int | None = None) -> list[tuple[int, int]]:
        """``(expert, replicas)`` of experts with more than one replica, most first (ties by
        expert id); at most ``n``."""
        order = np.lexsort((np.arange(self.replicas.size), -self.replicas))
        out = [(int(e), int(self.replicas[e])) for e in order if self.replicas[e] > 1]
        return out if n is None else out[:n]

    def node_experts(self, gpus_per_node: int) -> list[np.ndarray]:
        """Distinct experts held by every node, ascending."""
        G = self.gpus.shape[0]
        return [np.unique(self.gpus[n:n + gpus_per_node]) for n in range(0, G, gpus_per_node)]


@dataclass(frozen=True)
class PlanView:
    """A plan described for people and scripts (see the module docstring).

    Attributes:
        plan: the plan.
        source: where it came from (a path), or ``""``.
        kind: ``"plan"`` or the engine format it was read from.
        layers: the layers shown (all, or the one asked for).
        detail: whether GPUs and nodes are listed in text (one layer asked for).
        notes: what reading the file assumed.
    """

    plan: Plan
    source: str
    kind: str
    layers: tuple[LayerView, ...]
    detail: bool = False
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the plan's facts and, per shown layer, replicas, GPUs and nodes."""
        p = self.plan
        c = p.cluster
        layers = []
        for lv in self.layers:
            layers.append({
                "layer_id": lv.layer_id,
                "replicas": lv.replicas.tolist(),
                "replica_histogram": {str(k): v for k, v in lv.histogram.items()},
                "max_replicas": int(lv.replicas.max()),
                "most_replicated": [[e, r] for e, r in lv.most_replicated()],
                "colocated_slots": lv.colocated,
                "gpus": lv.gpus.tolist(),
                "nodes": [{"node": n, "gpus": list(range(n * c.gpus_per_node,
                                                         (n + 1) * c.gpus_per_node)),
                           "experts": ex.tolist()}
                          for n, ex in enumerate(lv.node_experts(c.gpus_per_node))],
            })
        return {
            "source": self.source,
            "kind": self.kind,
            "method": p.method,
            "status": p.status,
            "model": p.model,
            "cluster": c.to_dict(),
            "cluster_shape": c.shape,
            "num_experts": p.num_experts,
            "num_slots": p.num_slots,
            "num_redundant": p.num_redundant,
            "num_layers": p.num_layers,
            "layer_ids": p.layer_ids.tolist(),
            "num_hidden_layers": p.num_hidden_layers,
            "objectives": {k: float(np.mean(v)) for k, v in p.objectives.items() if v},
            "notes": list(self.notes),
            "layers": layers,
        }


def describe_plan(plan: Plan, *, layer: int | None = None, source: str = "",
                  kind: str = "plan", notes: tuple[str, ...] = ()) -> PlanView:
    """A :class:`PlanView` of every layer, or of decoder layer ``layer`` only.

    Raises :class:`InputError` when ``layer`` is not a layer of the plan.
    """
    c = plan.cluster
    ids = plan.layer_ids.tolist()
    if layer is not None and layer not in ids:
        raise InputError(f"layer {layer} is not in the plan (its MoE layers are "
                         f"{format_ids(ids)}).")
    rows = range(len(ids)) if layer is None else [ids.index(layer)]
    p2l = np.asarray(plan.phy2log)
    logcnt = compute_logcnt(p2l, plan.num_experts)
    per_gpu = p2l.reshape(p2l.shape[0], c.num_gpus, c.slots_per_gpu)
    srt = np.sort(per_gpu, axis=2)
    dup = (srt[:, :, 1:] == srt[:, :, :-1]).sum(axis=(1, 2))
    views = tuple(LayerView(layer_id=int(ids[i]), replicas=logcnt[i], gpus=per_gpu[i],
                            colocated=int(dup[i])) for i in rows)
    return PlanView(plan=plan, source=source, kind=kind, layers=views,
                    detail=layer is not None, notes=notes)


def _hist(h: dict[int, int]) -> str:
    return ", ".join(f"{r} x {n}" for r, n in sorted(h.items()))


def _top(lv: LayerView, n: int) -> str:
    top = lv.most_replicated()
    if not top:
        return "none"
    text = " ".join(f"{e}x{r}" for e, r in top[:n])
    return text + (f" (+{len(top) - n} more)" if len(top) > n else "")


def format_plan_view(view: PlanView) -> str:
    """Text: the plan's facts; a line per layer, or one layer's GPUs and nodes in full."""
    p = view.plan
    c = p.cluster
    what = "placement plan" if view.kind == "plan" else f"{view.kind} engine file"
    head = f"{view.source}: {what}" if view.source else what
    model = f", model {p.model}" if p.model else ""
    lines = [
        f"{head}, method {p.method}, status {p.status}{model}",
        f"cluster: {c.summary()}",
    ]
    nhl = f" of {p.num_hidden_layers} decoder layers" if p.num_hidden_layers else ""
    lines.append(f"layers: {p.num_layers} MoE layer(s) ({format_ids(p.layer_ids.tolist())}){nhl}; "
                 f"{p.num_experts} experts, {p.num_slots} slots per layer "
                 f"({p.num_redundant} redundant)")
    if p.objectives:
        objs = ", ".join(f"{k} {float(np.mean(v)):.4f}" for k, v in sorted(p.objectives.items())
                         if v)
        lines.append(f"recorded objectives (mean over layers): {objs}")
    lines += [f"note: {n}" for n in view.notes]
    if not view.detail:
        total: dict[int, int] = {}
        for lv in view.layers:
            for r, n in lv.histogram.items():
                total[r] = total.get(r, 0) + n
        coloc = sum(lv.colocated for lv in view.layers)
        lines.append(f"replicas per expert, all layers: {_hist(total)} (expert-layer pairs)")
        lines.append(f"slots used: {p.num_slots} of {p.num_slots} per layer; "
                     f"{coloc} slot(s) in all hold a second replica on the same GPU")
        lines.append(f"{'layer':>5} {'max':>4} {'replicated':>10}  most replicated "
                     "(expert x replicas)")
        for lv in view.layers:
            n_rep = int((lv.replicas > 1).sum())
            lines.append(f"{lv.layer_id:>5} {int(lv.replicas.max()):>4} {n_rep:>10}  "
                         f"{_top(lv, TOP)}")
        lines.append("(--layer N lists the experts of every GPU and node of layer N)")
        return "\n".join(lines)
    lv = view.layers[0]
    lines.append(f"layer {lv.layer_id}: replicas per expert {_hist(lv.histogram)}; "
                 f"max {int(lv.replicas.max())}")
    lines.append(f"most replicated (expert x replicas): {_top(lv, 4 * TOP)}")
    lines.append(f"slots used: {p.num_slots} of {p.num_slots}; {lv.colocated} hold a second "
                 "replica on the same GPU")
    gpn = c.gpus_per_node
    for n, ex in enumerate(lv.node_experts(gpn)):
        g0 = n * gpn
        where = f"GPU {g0}" if gpn == 1 else f"GPUs {g0}-{g0 + gpn - 1}"
        lines.append(f"node {n} ({where}): {gpn * c.slots_per_gpu} slots, "
                     f"{ex.size} distinct experts")
        for g in range(g0, g0 + gpn):
            lines.append(f"  GPU {g}: " + " ".join(str(int(e)) for e in lv.gpus[g]))
    return "\n".join(lines)
