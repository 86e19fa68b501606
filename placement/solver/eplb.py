"""DeepSeek's Expert Parallelism Load Balancer (EPLB), as SGLang, vLLM and TensorRT-LLM ship it.

A faithful port of the reference algorithm (github.com/deepseek-ai/EPLB, ``eplb.py``): the same
steps, the same tie-breaking (torch ``sort``/``max`` on CPU), so that it reproduces the reference
outputs exactly (DeepSeek's README example and real cases; see ``tests/solver/test_eplb.py``). Input checks
raise :class:`~placement.errors.InputError` instead of the reference's bare asserts.
"""

from __future__ import annotations

import numpy as np
import torch

from placement.errors import InputError

__all__ = ["balanced_packing", "rebalance_experts", "replicate_experts"]


def balanced_packing(weight: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack n weighted objects into m packs of n/m objects each, keeping pack weights even.

    Parameters:
        weight: [X, n], the weight of each item
        num_packs: number of packs

    Returns:
        pack_index: [X, n], the pack index of each item
        rank_in_pack: [X, n], the rank of the item in the pack
    """
    num_layers, num_groups = weight.shape
    if num_groups % num_packs != 0:
        raise InputError(f"Expected the {num_groups} items to divide evenly into {num_packs} packs.")
    groups_per_pack = num_groups // num_packs

    if groups_per_pack == 1:
        pack_index = torch.arange(weight.size(-1), dtype=torch.int64).expand(weight.shape)
        rank_in_pack = torch.zeros_like(weight, dtype=torch.int64)
        return pack_index, rank_in_pack

    indices = weight.float().sort(-1, descending=True).indices.cpu()
    pack_index = torch.full_like(weight, fill_value=-1, dtype=torch.int64, device="cpu")
    rank_in_pack = torch.full_like(pack_index, fill_value=-1)
    w = weight.tolist()
    for i in range(num_layers):
        pack_weights = [0.0] * num_packs
        pack_items = [0] * num_packs
        row_w = w[i]
        for group in indices[i].tolist():
            # the lightest pack that still has room (first one on ties)
            pack = min(
                (j for j in range(num_packs) if pack_items[j] < groups_per_pack),
                key=pack_weights.__getitem__,
            )
            pack_index[i, group] = pack
            rank_in_pack[i, group] = pack_items[pack]
            pack_weights[pack] += row_w[group]
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(
    weight: torch.Tensor, num_phy: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replicate ``num_log`` experts to ``num_phy`` replicas, minimising the max load of a replica.

    Parameters:
        weight: [X, num_log]
        num_phy: total number of experts after replication

    Returns:
        phy2log: [X, num_phy], logical expert id of each physical expert
        rank: [X, num_phy], the replica rank
        logcnt: [X, num_log], number of replicas for each logical expert
    """
    n, num_log = weight.shape
    num_redundant = num_phy - num_log
    if num_redundant < 0:
        raise InputError(f"Expected at least {num_log} physical experts, got {num_phy}.")
    phy2log = torch.arange(num_phy, dtype=torch.int64).repeat(n, 1)
    rank = torch.zeros(n, num_phy, dtype=torch.int64)
    logcnt = torch.ones(n, num_log, dtype=torch.int64)
    arangen = torch.arange(n, dtype=torch.int64)
    for i in range(num_log, num_phy):
        redundant_indices = (weight / logcnt).max(dim=-1).indices
        phy2log[:, i] = redundant_indices
        rank[:, i] = logcnt[arangen, redundant_indices]
        logcnt[arangen, redundant_indices] += 1
    return phy2log, rank, logcnt


def _rebalance_hierarchical(
    weight: torch.Tensor, num_physical_experts: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_layers, num_logical_experts = weight.shape
    group_size = num_logical_experts // num_groups
    groups_per_node = num_groups // num_nodes
    phy_experts_per_gpu = num_physical_experts // num_gpus

    def inverse(perm: torch.Tensor) -> torch.Tensor:
        inv = torch.empty_like(perm)
        inv.scatter_(
            1, perm, torch.arange(perm.size(1), dtype=torch.int64).expand(perm.shape)
        )
        return inv

    # Step 1: pack groups to nodes
    tokens_per_group = weight.unflatten(-1, (num_groups, group_size)).sum(-1)
    group_pack_index, group_rank_in_pack = balanced_packing(tokens_per_group, num_nodes)
    log2mlog = (
        ((group_pack_index * groups_per_node + group_rank_in_pack) * group_size).unsqueeze(-1)
        + torch.arange(group_size, dtype=torch.int64)
    ).flatten(-2)
    mlog2log = inverse(log2mlog)

    # Step 2: construct redundant experts within nodes
    # [num_layers * num_nodes, num_logical_experts // num_nodes]
    tokens_per_mlog = weight.gather(-1, mlog2log).view(-1, num_logical_experts // num_nodes)
    phy2mlog, phyrank, mlogcnt = replicate_experts(tokens_per_mlog, num_physical_experts // num_nodes)

    # Step 3: pack physical_experts to GPUs
    # [num_layers * num_nodes, num_physical_experts // num_nodes]
    tokens_per_phy = (tokens_per_mlog / mlogcnt).gather(-1, phy2mlog)
    pack_index, rank_in_pack = balanced_packing(tokens_per_phy, num_gpus // num_nodes)
    phy2pphy = pack_index * phy_experts_per_gpu + rank_in_pack
    pphy2phy = inverse(phy2pphy)

    pphy2mlog = phy2mlog.gather(-1, pphy2phy)  # [num_layers * num_nodes, num_log_per_nodes]
    pphy2mlog = (
        pphy2mlog.view(num_layers, num_nodes, -1)
        + torch.arange(0, num_logical_experts, num_logical_experts // num_nodes).view(1, -1, 1)
    ).flatten(-2)
    pphy2log = mlog2log.gather(-1, pphy2mlog)
    pphyrank = phyrank.gather(-1, pphy2phy).view(num_layers, -1)
    logcnt = mlogcnt.view(num_layers, -1).gather(-1, log2mlog)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(
    weight: torch.Tensor | np.ndarray,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry point for the expert-parallelism load balancer.

    Parameters:
        weight: [layers, num_logical_experts], the load statistics for all logical experts
        num_replicas: number of physical experts, must be a multiple of ``num_gpus``
        num_groups: number of expert groups
        num_nodes: number of server nodes, where the intra-node network (e.g. NVLink) is faster
        num_gpus: number of GPUs, must be a multiple of ``num_nodes``

    Returns:
        phy2log: [layers, num_replicas], the expert index of each replica
        log2phy: [layers, num_logical_experts, X], the replica indices for each expert (-1 padded)
        logcnt: [layers, num_logical_experts], number of physical replicas for each logical expert

    The hierarchical policy (groups packed to nodes, replicas made inside each node, then packed to
    its GPUs) is used when ``num_groups % num_nodes == 0``; otherwise the global policy (one group,
    one node).
    """
    w = torch.as_tensor(np.asarray(weight) if not isinstance(weight, torch.Tensor) else weight)
    if w.ndim != 2:
        raise InputError(f"Expected weight [layers, num_logical_experts], got shape {tuple(w.shape)}.")
    num_layers, num_logical_experts = w.shape
    if not torch.isfinite(w.float()).all() or (w < 0).any():
        raise InputError("Expected weight to be finite and non-negative.")
    for name, v in (("num_groups", num_groups), ("num_nodes", num_nodes), ("num_gpus", num_gpus)):
        if v < 1:
            raise InputError(f"Expected {name} >= 1, got {v}.")
    if num_replicas < num_logical_experts:
        raise InputError(
            f"Expected num_replicas >= num_logical_experts ({num_logical_experts}), got {num_replicas}."
        )
    if num_replicas % num_gpus != 0:
        raise InputError(f"Expected num_replicas ({num_replicas}) to be a multiple of num_gpus ({num_gpus}).")
    if num_gpus % num_nodes != 0:
        raise InputError(f"Expected num_gpus ({num_gpus}) to be a multiple of num_nodes ({num_nodes}).")
    w = w.float().cpu()
    hierarchical = num_groups % num_nodes == 0
    if hierarchical:
        if num_logical_experts % num_groups != 0:
            raise InputError(
                f"Expected num_logical_experts ({num_logical_experts}) to be a multiple of "
                f"num_groups ({num_groups})."
            )
        if num_replicas % num_nodes != 0 or (num_replicas // num_nodes) < (num_logical_experts // num_nodes):
            raise InputError(f"Expected num_replicas ({num_replicas}) to divide over {num_nodes} nodes.")
        # use hierarchical load-balance policy
        phy2log, phyrank, logcnt = _rebalance_hierarchical(
            w, num_replicas, num_groups, num_nodes, num_gpus
        )
    else:
        # use global load-balance policy
        phy2log, phyrank, logcnt = _rebalance_hierarchical(w, num_replicas, 1, 1, num_gpus)
    maxlogcnt = int(logcnt.max().item())
    log2phy = torch.full(
        (num_layers, num_logical_experts, maxlogcnt), -1, dtype=torch.int64
    )
    log2phy.view(num_layers, -1).scatter_(
        -1,
        phy2log * maxlogcnt + phyrank,
        torch.arange(num_replicas, dtype=torch.int64).expand(num_layers, -1),
    )
    return phy2log, log2phy, logcnt
