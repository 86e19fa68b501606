"""Two plans of one cluster side by side: the expert weights that must move, and what it buys.

A *move* (:mod:`placement.moves`) is one expert's weights that a GPU must receive because the new
plan puts that expert on it and the old one did not: per layer and GPU, the multiset difference
``new experts - old experts``. A change of slot order inside a GPU moves nothing; a replica that
disappears costs nothing. A move is *cross-node* when no GPU of the receiving node held that
expert before. Bytes are ``moves x 3 x hidden x moe_intermediate x bytes_per_param`` (gate, up
and down projections; the shape from :mod:`placement.models`, FP8 weights by default).

With a trace, both plans are replayed on it (:mod:`placement.plan_eval`): imbalance, cross-node
sends per token and the predicted MoE layer time of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from placement._util import format_ids
from placement.errors import InputError, PlanError
from placement.models import ModelShape, guess_model
from placement.moves import MoveCount, TransferTime, count_moves, transfer_time
from placement.plan import Plan
from placement.plan_eval import STEP_TOKENS_PER_GPU, PlanFigures, plan_figures
from placement.routing_traces.trace import Trace

__all__ = [
    "WEIGHT_BYTES",
    "PlanDiff",
    "check_comparable",
    "default_bytes_per_param",
    "diff_plans",
    "expert_bytes",
    "expert_size_text",
    "figure_lines",
    "format_bytes_line",
    "format_diff",
    "format_transfer",
    "size_text",
    "time_text",
]


WEIGHT_BYTES: dict[str, float] = {"deepseek-v3": 1.0}
"""Bytes per expert weight of models not served in BF16 (2 bytes): DeepSeek-V3/R1 are released
and served in FP8 (definitions.md: about 44 MB per expert)."""


def default_bytes_per_param(model: ModelShape | None) -> float:
    """Bytes per expert weight as the model is released: FP8 (1) for DeepSeek-V3, else BF16
    (2)."""
    return 2.0 if model is None else WEIGHT_BYTES.get(model.name, 2.0)


def expert_bytes(model: ModelShape, bytes_per_param: float = 1.0) -> float:
    """Bytes of one routed expert's weights: ``3 * hidden * moe_intermediate * bytes_per_param``."""
    return 3.0 * model.hidden_size * model.moe_intermediate_size * bytes_per_param


def check_comparable(old: Plan, new: Plan, old_name: str = "OLD",
                     new_name: str = "NEW") -> np.ndarray:
    """The decoder-layer ids both plans place, after checking that one cluster and one expert
    count are meant; raises :class:`PlanError` (naming both) otherwise."""
    a, b = old.cluster, new.cluster
    if (a.num_nodes, a.gpus_per_node, a.slots_per_gpu) != (b.num_nodes, b.gpus_per_node,
                                                           b.slots_per_gpu):
        raise PlanError(f"the plans are for different clusters: {old_name} {a.shape}, "
                        f"{new_name} {b.shape} (nodes x GPUs per node x slots per GPU); a diff "
                        "needs one cluster.")
    if old.num_experts != new.num_experts:
        raise PlanError(f"the plans place different experts: {old_name} {old.num_experts} per "
                        f"layer, {new_name} {new.num_experts}.")
    common = np.intersect1d(old.layer_ids, new.layer_ids)
    if not common.size:
        raise PlanError(f"the plans share no layer: {old_name} places "
                        f"{format_ids(old.layer_ids.tolist())}, {new_name} "
                        f"{format_ids(new.layer_ids.tolist())}.")
    return common


@dataclass(frozen=True)
class PlanDiff:
    """What it takes to go from one plan to another, per layer and in total.

    Attributes:
        old, new: the plans (``old_name``, ``new_name``: labels).
        layer_ids: ``[L]`` the layers both plans place, ascending.
        counts: the moves per layer (:class:`~placement.moves.MoveCount`).
        model: the model shape bytes come from, or None (bytes unknown).
        model_guessed: the shape was guessed from the plans (not given).
        bytes_per_param: bytes per weight.
        only_old, only_new: layers only one plan places (not compared).
        trace_name: the trace both plans were replayed on, or ``""``.
        old_figures, new_figures: their figures on it, or None.
    """

    old: Plan
    new: Plan
    old_name: str
    new_name: str
    layer_ids: np.ndarray
    counts: MoveCount
    model: ModelShape | None
    model_guessed: bool
    bytes_per_param: float
    only_old: tuple[int, ...] = ()
    only_new: tuple[int, ...] = ()
    trace_name: str = ""
    old_figures: PlanFigures | None = None
    new_figures: PlanFigures | None = None

    @property
    def moves(self) -> int:
        """Expert weights moved, all layers."""
        return self.counts.total

    @property
    def cross_node_moves(self) -> int:
        """Moves whose receiving node held no replica of the expert, all layers."""
        return self.counts.total_cross_node

    @property
    def bytes_per_expert(self) -> float | None:
        """Bytes of one expert's weights, when the model is known."""
        return None if self.model is None else expert_bytes(self.model, self.bytes_per_param)

    @property
    def bytes(self) -> float | None:
        """Bytes moved, all layers (None: model unknown)."""
        b = self.bytes_per_expert
        return None if b is None else self.moves * b

    @property
    def transfer(self) -> TransferTime | None:
        """The time to move the weights over the cluster's NVLink and network
        (:func:`~placement.moves.transfer_time`), when the model is known."""
        b = self.bytes_per_expert
        return None if b is None else transfer_time(self.counts, self.old.cluster, b)

    @property
    def num_slots(self) -> int:
        """Slots of the compared layers."""
        return int(self.layer_ids.size) * self.old.num_slots

    def summary(self) -> str:
        """A readable summary (see :func:`format_diff`)."""
        return format_diff(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, and a ``layers`` list with per-layer counts (and figures)."""
        bpe = self.bytes_per_expert
        layers = []
        fo, fn = self.old_figures, self.new_figures
        pos_o = {} if fo is None else {int(x): i for i, x in enumerate(fo.layer_ids.tolist())}
        pos_n = {} if fn is None else {int(x): i for i, x in enumerate(fn.layer_ids.tolist())}
        for i, lid in enumerate(self.layer_ids.tolist()):
            m = int(self.counts.moves[i])
            row: dict[str, Any] = {
                "layer_id": int(lid),
                "moves": m,
                "cross_node_moves": int(self.counts.cross_node_moves[i]),
                "changed_slots": int(self.counts.changed_slots[i]),
                "bytes": None if bpe is None else m * bpe,
            }
            if fo is not None and fn is not None and lid in pos_o and lid in pos_n:
                for tag, f, j in (("old", fo, pos_o[lid]), ("new", fn, pos_n[lid])):
                    row[f"imbalance_{f.rule}_{tag}"] = float(f.imbalance[j])
                    row[f"cross_node_sends_per_token_{tag}"] = (
                        None if f.sends_per_token is None else float(f.sends_per_token[j]))
            layers.append(row)
        out: dict[str, Any] = {
            "old": self.old_name,
            "new": self.new_name,
            "cluster": self.old.cluster.shape,
            "num_experts": self.old.num_experts,
            "layers_compared": int(self.layer_ids.size),
            "slots": self.num_slots,
            "moves": self.moves,
            "cross_node_moves": self.cross_node_moves,
            "changed_slots": int(self.counts.changed_slots.sum()),
            "bytes": self.bytes,
            "bytes_per_expert": bpe,
            "bytes_per_param": self.bytes_per_param,
            "transfer_s": None if (t := self.transfer) is None else t.seconds,
            "stall_per_layer_s": None if t is None else t.max_layer_seconds,
            "model": None if self.model is None else self.model.name,
            "model_guessed": self.model_guessed if self.model is not None else None,
            "layers_only_old": list(self.only_old),
            "layers_only_new": list(self.only_new),
            "layers": layers,
        }
        if fo is not None and fn is not None:
            out["trace"] = {"name": self.trace_name, "old": fo.to_dict(), "new": fn.to_dict()}
        return out


def diff_plans(
    old: Plan,
    new: Plan,
    *,
    model: ModelShape | None = None,
    bytes_per_param: float | None = None,
    trace: Trace | None = None,
    old_name: str = "OLD",
    new_name: str = "NEW",
    trace_name: str = "",
    device: str = "cpu",
) -> PlanDiff:
    """Moves, cross-node moves and bytes from ``old`` to ``new`` (and both plans on ``trace``).

    Args:
        old, new: plans of one cluster and one expert count (engine files imported as plans
            are fine).
        model: the model shape for bytes; default: guessed from the plans' (and the trace's)
            model name, else from the expert count (None when that is ambiguous: bytes
            unknown).
        bytes_per_param: bytes per weight (FP8: 1, BF16: 2); default: as the model is
            released (:func:`default_bytes_per_param`).
        trace: replay both plans on it (held-out traffic, ideally).
    """
    if bytes_per_param is not None and not (math.isfinite(bytes_per_param)
                                            and bytes_per_param > 0):
        raise InputError(f"Expected bytes_per_param > 0, got {bytes_per_param!r}.")
    common = check_comparable(old, new, old_name, new_name)
    rows_o = {int(x): i for i, x in enumerate(old.layer_ids.tolist())}
    rows_n = {int(x): i for i, x in enumerate(new.layer_ids.tolist())}
    a = np.asarray(old.phy2log)[[rows_o[int(x)] for x in common]]
    b = np.asarray(new.phy2log)[[rows_n[int(x)] for x in common]]
    counts = count_moves(a, b, old.cluster, old.num_experts)
    guessed = model is None
    if model is None:
        model = guess_model(old.model, new.model, trace.model if trace is not None else None,
                            num_experts=old.num_experts)
    if bytes_per_param is None:
        bytes_per_param = default_bytes_per_param(model)
    fo = fn = None
    if trace is not None:
        fo = plan_figures(old, trace, model=model, device=device)
        fn = plan_figures(new, trace, model=model, device=device)
    return PlanDiff(
        old=old, new=new, old_name=old_name, new_name=new_name, layer_ids=common,
        counts=counts, model=model, model_guessed=guessed, bytes_per_param=float(bytes_per_param),
        only_old=tuple(sorted(set(rows_o) - set(common.tolist()))),
        only_new=tuple(sorted(set(rows_n) - set(common.tolist()))),
        trace_name=trace_name, old_figures=fo, new_figures=fn,
    )


def size_text(x: float) -> str:
    """``44.04 MB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def time_text(s: float) -> str:
    """``12.34 ms``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.2f} {unit}"
    return f"{s * 1e9:.2f} ns"


def expert_size_text(model: ModelShape, guessed: bool, bytes_per_param: float) -> str:
    """``44.04 MB per expert weight (deepseek-v3, guessed: --model to set; 3 x 7168 x 2048 x
    1 B)``."""
    how = ", guessed: --model to set" if guessed else ""
    return (f"{size_text(expert_bytes(model, bytes_per_param))} per expert weight "
            f"({model.name}{how}; 3 x {model.hidden_size} x {model.moe_intermediate_size} x "
            f"{bytes_per_param:g} B)")


def format_transfer(t: TransferTime) -> str:
    """``transfer: 1.84 s over NVLink 160 GB/s and the network 40 GB/s per GPU (GPU 5
    receives 42 weights, 38 cross-node); serving stall: 1.84 s moving every layer at once, at
    most 48.2 ms per layer moving one layer at a time``."""
    moves = t.nvlink_moves + t.network_moves
    if moves == 0:
        return "transfer: nothing moves, no serving stall"
    return (f"transfer: {time_text(t.seconds)} over NVLink {t.nvlink_gbps:g} GB/s and the "
            f"network {t.network_gbps:g} GB/s per GPU (GPU {t.gpu} receives {moves} "
            f"weight(s), {t.network_moves} cross-node); serving stall: {time_text(t.seconds)} "
            f"moving every layer at once, at most {time_text(t.max_layer_seconds)} per layer "
            "moving one layer at a time")


def format_bytes_line(model: ModelShape | None, guessed: bool, bytes_per_param: float,
                      moves: int) -> str:
    """``bytes: 73.55 GB (44.04 MB per expert weight (deepseek-v3; ...))``."""
    if model is None:
        return "bytes: unknown (the model is not known; give --model)"
    per = expert_bytes(model, bytes_per_param)
    return f"bytes: {size_text(moves * per)}, {expert_size_text(model, guessed, bytes_per_param)}"


def figure_lines(old: PlanFigures, new: PlanFigures) -> list[str]:
    """``label: a -> b`` lines for two plans' figures on one trace."""
    lines = [f"  {old.label}: {old.mean_imbalance:.4f} -> {new.mean_imbalance:.4f}"]
    if old.mean_sends is not None and new.mean_sends is not None:
        lines.append(f"  cross-node sends per token: {old.mean_sends:.4f} -> {new.mean_sends:.4f}")
    if old.mean_copies is not None and new.mean_copies is not None:
        lines.append(f"  cross-node copies per token: {old.mean_copies:.4f} -> "
                     f"{new.mean_copies:.4f}")
    if old.mean_layer_time is not None and new.mean_layer_time is not None:
        what = "compute only" if old.compute_only else f"{old.overlap} overlap"
        ratio = new.mean_layer_time / old.mean_layer_time if old.mean_layer_time else float("nan")
        so, sn = old.mean_step_time, new.mean_step_time
        if so is not None and sn is not None:
            lines.append(f"  predicted MoE layer time ({what}), per step of "
                         f"{STEP_TOKENS_PER_GPU:,} tokens per GPU: {time_text(so)} -> "
                         f"{time_text(sn)} ({ratio:.3f}x)")
        tokens = old.mean_tokens
        whole = (f"all {tokens:,.0f} tokens of the trace" if tokens is not None
                 else "all the trace's tokens")
        lines.append(f"  predicted MoE layer time ({what}), {whole} (a total): "
                     f"{time_text(old.mean_layer_time)} -> {time_text(new.mean_layer_time)} "
                     f"({ratio:.3f}x)")
    return lines


def format_diff(d: PlanDiff) -> str:
    """Text: totals, bytes, a line per layer that changes, figures on the trace."""
    L = int(d.layer_ids.size)
    lines = [
        f"diff {d.old_name} -> {d.new_name}: {L} layer(s), cluster {d.old.cluster.shape}, "
        f"{d.old.num_experts} experts",
        f"moves: {d.moves} expert weight(s) ({d.moves / max(d.num_slots, 1):.1%} of "
        f"{d.num_slots} slots) in {int((d.counts.moves > 0).sum())} layer(s); "
        f"{d.cross_node_moves} cross-node",
        format_bytes_line(d.model, d.model_guessed, d.bytes_per_param, d.moves),
    ]
    t = d.transfer
    if t is not None:
        lines.append(format_transfer(t))
    lines += [
        f"changed slots: {int(d.counts.changed_slots.sum())} (a move is an expert a GPU did not "
        "hold; slot-order changes inside a GPU move nothing)",
    ]
    if d.only_old:
        lines.append(f"note: layer(s) {format_ids(list(d.only_old))} only in {d.old_name}: not compared")
    if d.only_new:
        lines.append(f"note: layer(s) {format_ids(list(d.only_new))} only in {d.new_name}: not compared")
    changed = [i for i in range(L) if d.counts.moves[i] or d.counts.changed_slots[i]]
    if changed:
        lines.append(f"{'layer':>5} {'moves':>6} {'cross-node':>10} {'changed slots':>13}")
        for i in changed:
            lines.append(f"{int(d.layer_ids[i]):>5} {int(d.counts.moves[i]):>6} "
                         f"{int(d.counts.cross_node_moves[i]):>10} "
                         f"{int(d.counts.changed_slots[i]):>13}")
        if len(changed) < L:
            lines.append(f"({L - len(changed)} layer(s) identical)")
    else:
        lines.append("the plans place every layer identically")
    if d.old_figures is not None and d.new_figures is not None:
        lines.append(f"on {d.trace_name or 'the trace'} ({d.old_name} -> {d.new_name}):")
        lines += figure_lines(d.old_figures, d.new_figures)
    return "\n".join(lines)
