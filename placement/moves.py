"""Expert-weight moves between two placements of the same cluster: what changing a plan costs.

A *move* is one expert's weights (gate, up and down projections of one layer) that a GPU must
receive because the new placement puts that expert there and the old one did not. Per layer and
GPU ``g``, with ``old[g]`` and ``new[g]`` the multisets of logical experts in ``g``'s slots::

    moves(g) = |new[g] - old[g]|        (multiset difference)

So a change of slot order inside one GPU moves no weight, an expert that stays on its GPU moves
none, and dropping a replica costs nothing (its slot is simply overwritten). A move is
*cross-node* when no GPU of the receiving GPU's node held that expert in the old placement: its
weights must come over the inter-node network (otherwise over NVLink, from a GPU of the same
node). ``changed_slots`` counts slots whose expert differs (what an engine that rewrites every
changed slot, as SGLang's online EPLB does, would transfer): always at least ``moves``.

The time to move them (:func:`transfer_time`) is the busiest receiving GPU's: cross-node moves
over its network link, the others over NVLink, both links at once, at the cluster's figures
(:meth:`placement.cluster.Cluster.figures`); while weights move, an engine that pauses to
rebalance stalls serving that long.

Shapes: ``L`` layers, ``P`` slots, ``G`` GPUs, ``N`` nodes, ``E`` logical experts. Numpy only: a
leaf module shared by the re-planner (:mod:`placement.solver.replan`), ``placement diff`` and the
simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from placement.cluster import Cluster
from placement.errors import PlanError
from placement.hardware import HardwareFigures

__all__ = [
    "MoveCount",
    "TransferTime",
    "count_moves",
    "gpu_expert_counts",
    "incoming_experts",
    "transfer_time",
]


def gpu_expert_counts(phy2log: np.ndarray, cluster: Cluster, num_experts: int) -> np.ndarray:
    """``phy2log [L, P]`` -> ``[L, G, E]`` replicas of every expert held by every GPU."""
    p2l = np.asarray(phy2log, dtype=np.int64)
    L, P = p2l.shape
    G, E = cluster.num_gpus, num_experts
    gpu = np.arange(P) // cluster.slots_per_gpu
    flat = (np.arange(L)[:, None] * G + gpu[None, :]) * E + p2l
    return np.bincount(flat.reshape(-1), minlength=L * G * E).reshape(L, G, E)


def incoming_experts(old: np.ndarray, new: np.ndarray, cluster: Cluster,
                     num_experts: int) -> np.ndarray:
    """``[L, G, E]`` replicas of expert ``e`` that GPU ``g`` must receive to go from ``old`` to
    ``new`` (both ``phy2log [L, P]``): ``max(new count - old count, 0)``."""
    a = gpu_expert_counts(old, cluster, num_experts)
    b = gpu_expert_counts(new, cluster, num_experts)
    return np.maximum(b - a, 0)


@dataclass(frozen=True)
class MoveCount:
    """Moves per layer from one placement to another (see the module docstring).

    Attributes:
        moves: ``[L]`` expert weights received by some GPU that did not hold them.
        cross_node_moves: ``[L]`` of those, the ones no GPU of the receiving node held.
        changed_slots: ``[L]`` slots whose expert changed.
        incoming: ``[L, G, E]`` replicas of expert ``e`` GPU ``g`` receives.
        cross_node_incoming: ``[L, G]`` of GPU ``g``'s moves, the cross-node ones (None when
            not counted).
    """

    moves: np.ndarray
    cross_node_moves: np.ndarray
    changed_slots: np.ndarray
    incoming: np.ndarray
    cross_node_incoming: np.ndarray | None = None

    @property
    def total(self) -> int:
        """Moves over all layers."""
        return int(self.moves.sum())

    @property
    def total_cross_node(self) -> int:
        """Cross-node moves over all layers."""
        return int(self.cross_node_moves.sum())


def count_moves(old: np.ndarray, new: np.ndarray, cluster: Cluster,
                num_experts: int) -> MoveCount:
    """Moves from placement ``old`` to ``new``, both ``phy2log [L, P]`` of ``cluster``.

    Raises :class:`PlanError` when the shapes differ or an id is outside ``[0, num_experts)``.
    """
    a = np.asarray(old, dtype=np.int64)
    b = np.asarray(new, dtype=np.int64)
    if a.ndim != 2 or a.shape != b.shape:
        raise PlanError(f"Expected two phy2log arrays of one shape [L, P], got {a.shape} and "
                        f"{b.shape}.")
    if a.shape[1] != cluster.num_slots:
        raise PlanError(f"phy2log has {a.shape[1]} slots per layer but cluster {cluster.shape} "
                        f"has {cluster.num_slots}.")
    for arr in (a, b):
        if arr.size and (arr.min() < 0 or arr.max() >= num_experts):
            raise PlanError(f"Expected expert ids in [0, {num_experts}).")
    L = a.shape[0]
    ca = gpu_expert_counts(a, cluster, num_experts)  # [L, G, E]
    cb = gpu_expert_counts(b, cluster, num_experts)
    inc = np.maximum(cb - ca, 0)
    # 1. which experts every node held before: [L, N, E]
    N, gpn = cluster.num_nodes, cluster.gpus_per_node
    node_held = ca.reshape(L, N, gpn, num_experts).sum(axis=2) > 0
    # 2. a move to GPU g is cross-node when g's node held none of that expert
    remote = ~node_held[:, cluster.node_of_gpu(), :]  # [L, G, E]
    remote_in = np.where(remote, inc, 0).sum(axis=2)  # [L, G]
    return MoveCount(
        moves=inc.sum(axis=(1, 2)),
        cross_node_moves=remote_in.sum(axis=1),
        changed_slots=(a != b).sum(axis=1),
        incoming=inc,
        cross_node_incoming=remote_in,
    )


@dataclass(frozen=True)
class TransferTime:
    """How long moving the expert weights of a :class:`MoveCount` takes on a cluster's links.

    Every GPU receives its moves at once: the cross-node ones over its network link, the others
    over NVLink from a GPU of its node, the two links in parallel; the GPU that takes longest
    sets the time. Attributes:

        seconds: every changed layer moved in one go (what an engine that pauses serving to
            rebalance, as SGLang's EPLB does, stalls for).
        per_layer_seconds: ``[L]`` each layer moved on its own; its max is the stall of moving
            one layer at a time.
        gpu: the GPU that sets ``seconds``; ``nvlink_moves`` and ``network_moves``: its moves
            over each link.
        nvlink_gbps, network_gbps: the links' GB/s per GPU (:meth:`Cluster.figures`).
        bytes_per_expert: bytes of one expert's weights.
    """

    seconds: float
    per_layer_seconds: np.ndarray
    gpu: int
    nvlink_moves: int
    network_moves: int
    nvlink_gbps: float
    network_gbps: float
    bytes_per_expert: float

    @property
    def max_layer_seconds(self) -> float:
        """The slowest single layer (0 when nothing moves)."""
        return float(self.per_layer_seconds.max()) if self.per_layer_seconds.size else 0.0


def transfer_time(counts: MoveCount, cluster: Cluster, bytes_per_expert: float,
                  figures: HardwareFigures | None = None) -> TransferTime:
    """The time to move ``counts``' weights (``bytes_per_expert`` each) over ``cluster``'s
    NVLink and network (``figures``, default ``cluster.figures()``; see
    :class:`TransferTime`)."""
    if counts.cross_node_incoming is None:
        raise PlanError("the move count has no per-GPU cross-node moves (use count_moves).")
    f = figures if figures is not None else cluster.figures()
    remote = np.asarray(counts.cross_node_incoming, dtype=np.float64)  # [L, G]
    local = counts.incoming.sum(axis=2) - remote
    nv, net = f.nvlink_gbps * 1e9, f.network_gbps * 1e9

    def seconds(loc: np.ndarray, rem: np.ndarray) -> np.ndarray:
        return np.maximum(loc * bytes_per_expert / nv, rem * bytes_per_expert / net)

    per_gpu = seconds(local.sum(axis=0), remote.sum(axis=0))  # [G], all layers at once
    g = int(np.argmax(per_gpu)) if per_gpu.size else 0
    per_layer = seconds(local, remote).max(axis=1) if local.size else np.zeros(0)
    return TransferTime(
        seconds=float(per_gpu[g]) if per_gpu.size else 0.0,
        per_layer_seconds=per_layer,
        gpu=g,
        nvlink_moves=int(local[:, g].sum()) if local.size else 0,
        network_moves=int(remote[:, g].sum()) if remote.size else 0,
        nvlink_gbps=f.nvlink_gbps,
        network_gbps=f.network_gbps,
        bytes_per_expert=float(bytes_per_expert),
    )

