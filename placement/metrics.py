"""Metrics of ``docs/definitions.md``, in numpy: GPU loads, imbalance, cross-node traffic.

A leaf module (numpy only) shared by the solver, which evaluates plans in-sample, and the
validator, which replays held-out traces (its torch replay is tested against these functions).

Shapes: ``L`` layers, ``E`` logical experts, ``P`` slots, ``G`` GPUs, ``T`` tokens, ``k`` top-k.
"""

from __future__ import annotations

import numpy as np

from placement.cluster import Cluster

__all__ = [
    "even_gpu_loads",
    "imbalance",
    "source_gpus",
    "static_gpu_loads",
    "token_traffic",
]


def imbalance(loads: np.ndarray) -> np.ndarray:
    """``loads [..., G]`` -> ``[...]`` max / mean load per GPU (1.0 where nothing is routed)."""
    loads = np.asarray(loads, dtype=np.float64)
    mean = loads.mean(axis=-1)
    mx = loads.max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(mean > 0, mx / np.where(mean > 0, mean, 1.0), 1.0)
    return out


def even_gpu_loads(phy2log: np.ndarray, counts: np.ndarray, cluster: Cluster) -> np.ndarray:
    """Tokens per GPU when every expert's tokens split evenly over its replicas.

    Args:
        phy2log: ``[L, P]`` logical expert of every slot.
        counts: ``[..., L, E]`` tokens routed to every expert.
    Returns:
        ``[..., L, G]`` tokens processed by every GPU.
    """
    phy2log = np.asarray(phy2log, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.float64)
    L, P = phy2log.shape
    E = counts.shape[-1]
    logcnt = np.zeros((L, E), dtype=np.float64)
    np.add.at(logcnt, (np.repeat(np.arange(L), P), phy2log.reshape(-1)), 1.0)
    per_replica = counts / np.maximum(logcnt, 1.0)  # [..., L, E]
    slot_load = np.take_along_axis(
        per_replica, np.broadcast_to(phy2log, (*per_replica.shape[:-1], P)), axis=-1
    )  # [..., L, P]
    return slot_load.reshape(*slot_load.shape[:-1], cluster.num_gpus, cluster.slots_per_gpu).sum(-1)


def source_gpus(num_tokens: int, source_rank: np.ndarray | None, num_gpus: int) -> np.ndarray:
    """``[T]`` source GPU of every token: ``source_rank % G`` when known, else ``t % G``."""
    if source_rank is None:
        return np.arange(num_tokens, dtype=np.int64) % num_gpus
    return np.asarray(source_rank, dtype=np.int64) % num_gpus


def static_gpu_loads(
    dispatch: np.ndarray, rank_counts: np.ndarray, cluster: Cluster
) -> np.ndarray:
    """Tokens per GPU under a dispatch table, from per-source-GPU counts.

    Args:
        dispatch: ``[L, G, E]`` slot used by tokens on source GPU g for expert e.
        rank_counts: ``[G, L, E]`` tokens from every source GPU to every expert.
    Returns:
        ``[L, G]`` tokens processed by every GPU.
    """
    dispatch = np.asarray(dispatch, dtype=np.int64)
    L, G, _ = dispatch.shape
    rc = np.asarray(rank_counts, dtype=np.float64).transpose(1, 0, 2)  # [L, G, E]
    dest = dispatch // cluster.slots_per_gpu  # [L, G, E]
    flat = dest + (np.arange(L) * G)[:, None, None]
    return np.bincount(flat.reshape(-1), weights=rc.reshape(-1), minlength=L * G).reshape(L, G)


def token_traffic(
    dispatch: np.ndarray,
    topk_ids: np.ndarray,
    src_gpu: np.ndarray,
    cluster: Cluster,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer traffic of a token-level trace under a dispatch table.

    Args:
        dispatch: ``[L, G, E]`` slot used by tokens on source GPU g for expert e.
        topk_ids: ``[T, L, k]`` logical expert ids, ``-1`` = none.
        src_gpu: ``[T]`` source GPU of every token.
    Returns:
        ``sends [L]``: cross-node sends summed over tokens (distinct remote nodes per token);
        ``copies [L]``: cross-node copies summed over tokens (remote experts, not deduplicated);
        ``loads [L, G]``: tokens processed by every GPU.
    """
    dispatch = np.asarray(dispatch, dtype=np.int64)
    ids = np.asarray(topk_ids, dtype=np.int64)
    L = ids.shape[1]
    G = cluster.num_gpus
    gpn = cluster.gpus_per_node
    src = np.asarray(src_gpu, dtype=np.int64)
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    slot = dispatch[np.arange(L)[None, :, None], src[:, None, None], safe]  # [T, L, k]
    dest_gpu = slot // cluster.slots_per_gpu
    dest_node = dest_gpu // gpn
    src_node = (src // gpn)[:, None, None]
    remote = valid & (dest_node != src_node)
    copies = remote.sum(axis=(0, 2)).astype(np.float64)
    # distinct remote nodes per (token, layer): sort nodes, count changes among remote entries
    node_key = np.where(remote, dest_node, -1)
    srt = np.sort(node_key, axis=2)
    first = np.ones_like(srt, dtype=bool)
    first[:, :, 1:] = srt[:, :, 1:] != srt[:, :, :-1]
    sends = ((srt >= 0) & first).sum(axis=(0, 2)).astype(np.float64)
    flat = dest_gpu + (np.arange(L) * G)[None, :, None]
    loads = np.bincount(flat[valid], minlength=L * G).reshape(L, G).astype(np.float64)
    return sends, copies, loads
