"""SGLang's ``deepseek_vec`` expert placement (``--eplb-algorithm deepseek_vec[_hierarchical]``).

A numpy port of ``python/sglang/srt/eplb/eplb_algorithms/deepseek_vec.py`` of SGLang
(github.com/sgl-project/sglang, Apache License 2.0; itself derived from DeepSeek's EPLB). Unlike
EPLB, which places replicas for one summed load, it takes per-step counts
``tokens_per_expert [steps, layers, experts]`` and adds each redundant replica where it lowers
the sum over steps of every step's busiest replica. The same steps, dtypes (float32 arithmetic,
int64 sums where SGLang sums integers) and tie-breaking (first index of a max/min; the two
descending sorts are torch's own, whose order among ties decides which GPU gets which copy) as
upstream, so that it reproduces SGLang's own outputs exactly
(``shared/reference/sglang_deepseek_vec_reference.npz``; see ``tests/solver/test_sglang_vec.py``).

Policies: *hierarchical* (``deepseek_vec_hierarchical``: expert groups packed to nodes, replicas
made and packed to GPUs inside each node) and *flat* (``deepseek_vec``: one chunk, the whole
cluster). :func:`solve_sglang_vec` (``--method sglang-vec``) picks hierarchical when the number
of groups is above 1 and divides over the nodes (as SGLang's ``auto`` does for EPLB), flat
otherwise (``--groups 1``).
"""

from __future__ import annotations

import time

import numpy as np

from placement._util import Progress
from placement.errors import InputError
from placement.plan import Plan
from placement.solver.problem import ProblemData, SolveOptions

__all__ = ["rebalance_experts", "sglang_vec_hierarchical", "solve_sglang_vec"]

_F32 = np.float32


def _torch_desc(x: np.ndarray) -> np.ndarray:
    """Indices sorting float32 ``x`` descending along the last axis with torch's own
    (unstable) sort: tied replicas (the copies of one expert) land in the order SGLang's
    ``argsort(descending=True)`` gives them, which decides which GPU gets which copy."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).argsort(dim=-1, descending=True).numpy()


def _chunkwise(
    tpe: np.ndarray, num_physical: int, num_local: int, per_chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_redundant_experts_chunkwise``: replicas made inside chunks of ``per_chunk`` slots.

    Args:
        tpe: ``[S, L, E]`` int64 (integer path) or float32 counts.
        num_physical: P slots; num_local: slots per GPU; per_chunk: slots per chunk.
    Returns:
        ``phy2log [L, P]``, ``log2phy [L, E, P - E + 1]`` (-1 padded), ``logcnt [L, E]``.
    """
    S, L, E = tpe.shape
    P = num_physical
    R = P - E
    C = P // per_chunk
    n = E // C  # logical experts per chunk
    r = R // C  # redundant slots per chunk
    integer = np.issubdtype(tpe.dtype, np.integer)
    phy2log: np.ndarray = np.empty((L, C, per_chunk), dtype=np.int64)
    phy2log[:, :, :n] = np.arange(E).reshape(C, n)
    log2phy: np.ndarray = np.full((L, C, n, R + 1), -1, dtype=np.int64)
    log2phy[:, :, :, 0] = np.arange(n)[None, :] + np.arange(C)[:, None] * per_chunk
    logcnt: np.ndarray = np.ones((L, C, n), dtype=np.int64)
    # 1. float32 copies as torch makes them (int64 + float32 -> float32)
    tpe_f = tpe.astype(_F32).reshape(S, L, C, n)
    diff = (tpe_f.reshape(S, L, E) + np.arange(E, dtype=_F32) * _F32(1e-4)).reshape(S, L, C, n)
    lay = np.arange(L)[:, None]
    chk = np.arange(C)[None, :]
    # 2. one redundant replica per chunk and step i: the expert whose extra replica gives the
    #    smallest sum over steps of the chunk's busiest replica
    for i in range(r):
        cnt_f = logcnt.astype(_F32)
        score = diff / cnt_f  # [S, L, C, n]
        score1 = tpe_f / (cnt_f + _F32(1))
        arg = score.argmax(axis=-1)[..., None]  # [S, L, C, 1]
        top = np.take_along_axis(score, arg, axis=-1)
        np.put_along_axis(score, arg, np.take_along_axis(score1, arg, axis=-1), axis=-1)
        values = np.broadcast_to(top, score.shape).copy()
        np.put_along_axis(values, arg, score.max(axis=-1, keepdims=True), axis=-1)
        red = values.sum(axis=0, dtype=_F32).argmin(axis=-1)  # [L, C]
        phy2log[:, :, n + i] = red + chk * n
        rank = logcnt[lay, chk, red]
        log2phy[lay, chk, red, rank] = chk * per_chunk + n + i
        logcnt[lay, chk, red] += 1
    phy2log = phy2log.reshape(L, P)
    log2phy = log2phy.reshape(L, E, R + 1)
    logcnt = logcnt.reshape(L, E)
    # 3. balance between GPUs: replicas by load per replica, dealt to the chunk's GPUs in snake
    #    order
    if num_local > 1:
        counts = np.take_along_axis(logcnt, phy2log, axis=-1).astype(_F32)
        tot = tpe.sum(axis=0).astype(_F32) if integer else tpe.sum(axis=0, dtype=_F32)
        score = np.take_along_axis(tot, phy2log, axis=-1) / counts
        idx = _torch_desc(score.reshape(L, C, per_chunk))
        idx = idx + (np.arange(C) * per_chunk)[None, :, None]
        gpus = per_chunk // num_local
        idx = idx.reshape(L, C, num_local, gpus)
        idx[:, :, 1::2, :] = idx[:, :, 1::2, ::-1]
        idx = idx.transpose(0, 1, 3, 2).reshape(L, P)
        phy2log = np.take_along_axis(phy2log, idx, axis=-1)
        inv = np.argsort(idx, axis=-1)
        mask = log2phy == -1
        log2phy = np.take_along_axis(inv, np.where(mask, 0, log2phy).reshape(L, -1), axis=-1)
        log2phy = log2phy.reshape(L, E, R + 1)
        log2phy[mask] = -1
    return phy2log, log2phy, logcnt


def _pack_groups(tokens_per_group: np.ndarray, num_nodes: int) -> np.ndarray:
    """``[L, groups]`` float32 -> ``[L, groups]`` each group's position (node * per_node + k):
    heaviest group first to the lightest node with room (first node on ties)."""
    L, num_groups = tokens_per_group.shape
    per_node = num_groups // num_nodes
    order = _torch_desc(tokens_per_group)
    out = np.full((L, num_groups), -1, dtype=np.int64)
    for layer in range(L):
        node_tokens = [_F32(0)] * num_nodes
        node_groups = [0] * num_nodes
        for group in order[layer].tolist():
            node = min(range(num_nodes), key=lambda j: (1, _F32(0)) if node_groups[j] >= per_node
                       else (0, node_tokens[j]))
            out[layer, group] = node * per_node + node_groups[node]
            node_tokens[node] = _F32(node_tokens[node] + tokens_per_group[layer, group])
            node_groups[node] += 1
    return out


def _hierarchical(
    tpe: np.ndarray, num_physical: int, num_local: int, num_groups: int, num_nodes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``prefill_rebalance_experts``: groups packed to nodes, then chunkwise per node."""
    S, L, E = tpe.shape
    f = tpe.astype(_F32)
    group_size = E // num_groups
    # 1. pack groups to nodes by their summed load
    per_group = f.sum(axis=0, dtype=_F32).reshape(L, num_groups, group_size).sum(axis=-1, dtype=_F32)
    perm = _pack_groups(per_group, num_nodes)
    log2mlog = ((perm * group_size)[:, :, None] + np.arange(group_size)).reshape(L, E)
    mlog2log = np.argsort(log2mlog, axis=-1)
    # 2. replicas and GPU packing inside every node (one chunk per node)
    per_mlog = np.take_along_axis(f, np.broadcast_to(mlog2log, (S, L, E)), axis=-1)
    phy2mlog, mlog2phy, mlogcnt = _chunkwise(per_mlog, num_physical, num_local,
                                             num_physical // num_nodes)
    # 3. back to logical ids
    phy2log = np.take_along_axis(mlog2log, phy2mlog, axis=-1)
    log2phy = np.take_along_axis(mlog2phy, log2mlog[:, :, None], axis=1)
    logcnt = np.take_along_axis(mlogcnt, log2mlog, axis=-1)
    return phy2log, log2phy, logcnt


def rebalance_experts(
    tokens_per_expert: np.ndarray,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int,
    num_nodes: int,
    hierarchical: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SGLang's ``deepseek_vec.rebalance_experts``.

    Args:
        tokens_per_expert: ``[steps, layers, num_logical_experts]`` counts per step (integer
            counts follow SGLang's integer path; floats its float32 path).
        num_physical_experts: P slots; num_local_physical_experts: slots per GPU.
        num_groups, num_nodes: expert groups and nodes (hierarchical policy only).
        hierarchical: ``deepseek_vec_hierarchical`` (True) or ``deepseek_vec`` (False).
    Returns:
        ``phy2log [layers, P]``, ``log2phy [layers, E, P - E + 1]`` (-1 padded),
        ``logcnt [layers, E]``, int64.
    """
    t = np.asarray(tokens_per_expert)
    if t.ndim != 3:
        raise InputError(f"Expected tokens_per_expert [steps, layers, experts], got shape {t.shape}.")
    if not np.issubdtype(t.dtype, np.integer):
        t = t.astype(_F32)
        if not np.isfinite(t).all():
            raise InputError("Expected tokens_per_expert to be finite.")
    if (t < 0).any():
        raise InputError("Expected tokens_per_expert to be non-negative.")
    S, _, E = t.shape
    P, local = num_physical_experts, num_local_physical_experts
    if S < 1:
        raise InputError("Expected at least one step in tokens_per_expert.")
    if local < 1 or P % local != 0:
        raise InputError(f"Expected num_physical_experts ({P}) to be a multiple of "
                         f"num_local_physical_experts ({local}).")
    if P < E:
        raise InputError(f"Expected num_physical_experts >= {E} (the experts), got {P}.")
    chunks = num_nodes if hierarchical else 1
    if num_nodes < 1 or num_groups < 1:
        raise InputError(f"Expected num_groups, num_nodes >= 1, got {num_groups}, {num_nodes}.")
    if hierarchical:
        if E % num_groups != 0 or num_groups % num_nodes != 0:
            raise InputError(f"Expected the {E} experts in num_groups={num_groups} groups that "
                             f"divide over num_nodes={num_nodes} nodes.")
    if P % chunks != 0 or E % chunks != 0 or (P - E) % chunks != 0 or (P // chunks) % local != 0:
        raise InputError(f"Expected the {P} slots, {E} experts and {P - E} redundant slots to "
                         f"divide over {chunks} node(s) of whole GPUs.")
    if hierarchical:
        return _hierarchical(t, P, local, num_groups, num_nodes)
    return _chunkwise(t, P, local, P)


def sglang_vec_hierarchical(num_groups: int, num_nodes: int) -> bool:
    """Whether :func:`solve_sglang_vec` uses the hierarchical policy: ``num_groups > 1`` and
    ``num_groups % num_nodes == 0``."""
    return num_groups > 1 and num_groups % num_nodes == 0


def solve_sglang_vec(problem: ProblemData, options: SolveOptions,
                     progress: Progress | None = None) -> Plan:
    """SGLang ``deepseek_vec``'s plan, the problem's scenarios (windows) as its steps."""
    from placement.solver.evaluate import make_plan

    start = time.perf_counter()
    c = problem.cluster
    groups = options.groups_for(problem.num_experts)
    P, E, N = c.num_slots, problem.num_experts, c.num_nodes
    # hierarchical needs the groups, slots and redundant slots to divide over the nodes;
    # otherwise the flat policy (SGLang would refuse the hierarchical one)
    hier = (sglang_vec_hierarchical(groups, N) and E % groups == 0
            and P % N == 0 and E % N == 0 and (P // N) % c.slots_per_gpu == 0)
    counts = np.asarray(problem.scenario_counts)
    if np.array_equal(counts, np.round(counts)) and counts.max(initial=0) < 2**62:
        counts = counts.astype(np.int64)  # SGLang receives integer counts
    p2l, _, _ = rebalance_experts(counts, c.num_slots, c.slots_per_gpu, groups, c.num_nodes, hier)
    if progress is not None:
        progress(problem.num_layers, problem.num_layers)
    settings = {"num_groups": groups, "policy": "hierarchical" if hier else "flat",
                "steps": problem.num_scenarios}
    return make_plan(problem, p2l, options, "sglang-vec", start, status="BASELINE",
                     settings=settings, allow_colocated=True)
