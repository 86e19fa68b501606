"""Replays under SGLang's per-batch and per-token rules: ``lp`` and ``dynamic``.

* ``lp``: per batch (token-level traces: ``batch_tokens`` consecutive tokens, default 4,096;
  aggregated traces: each window) and layer, :class:`~placement.validation.engine_rules.LpLayout`
  splits every replicated expert's batch count over its replicas. A token-expert assignment goes
  to replica ``s`` with probability ``p_s`` (the split), independently of its source GPU and of
  the token's other experts, as SGLang's sampling does; the replay counts the expectation: loads
  and the GPU x GPU matrix take the fractional split, a token's cross-node sends to node ``n``
  count ``1 - prod_j (1 - q_{e_j, n})`` (``q``: the probability that expert ``e_j``'s copy runs
  on ``n``), the even rule's formula with the LP's shares.
* ``dynamic``: every assignment takes the narrowed replica of its source GPU, else a replica
  drawn per token (``draw % n``, draws in ``[0, 65536)`` from numpy's generator seeded by
  ``(seed, block)`` per block of 4,096 tokens, so any chunking gives the same draws); counted
  exactly, as the static path counts.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from placement.cluster import Cluster
from placement.errors import InputError
from placement.routing_traces.trace import Trace
from placement.validation.engine_rules import (
    DEFAULT_BATCH_TOKENS,
    LpLayout,
    dynamic_slots,
    narrowed_dispatch,
    replica_table,
)
from placement.validation.result import ValidationResult

__all__ = ["DYNAMIC_BLOCK", "dynamic_draws", "replay_dynamic", "replay_lp"]

DYNAMIC_BLOCK = 4096
"""Tokens per block of ``dynamic`` draws (one seeded generator per block)."""


def _source(trace: Trace, start: int, stop: int, G: int) -> np.ndarray:
    sr = trace.source_rank
    if sr is None:
        return np.arange(start, stop, dtype=np.int64) % G
    return np.asarray(sr[start:stop], dtype=np.int64) % G


def _share_nodes(share: np.ndarray, phy2log: np.ndarray, cluster: Cluster,
                 E: int) -> tuple[np.ndarray, np.ndarray]:
    """``share [L, P]`` -> ``(to_gpu [L, E, G], to_node [L, E, N])`` the probability an
    assignment of expert ``e`` runs on GPU ``g`` / node ``n``."""
    L, P = phy2log.shape
    G, N = cluster.num_gpus, cluster.num_nodes
    gpu = cluster.gpu_of_slot()
    to_gpu = np.zeros((L, E, G))
    np.add.at(to_gpu, (np.repeat(np.arange(L), P), phy2log.reshape(-1), np.tile(gpu, L)),
              share.reshape(-1))
    to_node = to_gpu.reshape(L, E, N, cluster.gpus_per_node).sum(axis=3)
    return to_gpu, to_node


def _cell_counts(ids: np.ndarray, src: np.ndarray, L: int, G: int, E: int) -> np.ndarray:
    """``[L, G, E]`` assignments per (layer, source GPU, expert) of ``ids [t, L, k]``."""
    valid = ids >= 0
    key = (np.arange(L)[None, :, None] * G + src[:, None, None]) * E + np.where(valid, ids, 0)
    return np.bincount(key[valid], minlength=L * G * E).reshape(L, G, E).astype(np.float64)


def _node_reach_expected(ids: np.ndarray, to_node: np.ndarray) -> np.ndarray:
    """``[t, L, N]`` expected reach of every node by every (token, layer)."""
    _, L, k = ids.shape
    _, E, N = to_node.shape
    # row 0 of every layer's block is padding (never reached); rows 1..E the experts
    keep = np.ones((L, E + 1, N))
    keep[:, 1:, :] = 1.0 - to_node
    keep = keep.reshape(L * (E + 1), N)
    rows = np.arange(L)[None, :, None] * (E + 1) + 1 + np.maximum(ids, -1)  # [t, L, k]
    miss = keep.take(rows[:, :, 0], axis=0)
    for j in range(1, k):
        miss *= keep.take(rows[:, :, j], axis=0)
    return 1.0 - miss


def _add_node_sends(ns: np.ndarray, reach: np.ndarray, src: np.ndarray) -> None:
    """``ns [L, G, N] +=`` the per-(token, layer) node reach, by (layer, source GPU)."""
    L, G, N = ns.shape
    t = reach.shape[0]
    dest = (np.arange(L)[None, :] * G + src[:, None]).reshape(-1)
    flat = reach.reshape(t * L, N)
    for n in range(N):
        ns[:, :, n] += np.bincount(dest, weights=flat[:, n], minlength=L * G).reshape(L, G)


def _drop_own_node(cluster: Cluster, ns: np.ndarray) -> None:
    """A token's own node is not a cross-node send."""
    ns[:, np.arange(cluster.num_gpus), cluster.node_of_gpu()] = 0.0


def replay_lp(phy2log: np.ndarray, trace: Trace, cluster: Cluster, *,
              batch_tokens: int | None, common: dict[str, Any], messages: list[str],
              progress: Any = None) -> ValidationResult:
    """The ``lp`` replay of ``trace`` against ``phy2log [L, P]`` (the trace's layers)."""
    start = time.perf_counter()
    E = trace.num_experts
    L = phy2log.shape[0]
    G, N = cluster.num_gpus, cluster.num_nodes
    if batch_tokens is not None and batch_tokens < 1:
        raise InputError(f"Expected batch_tokens >= 1, got {batch_tokens}.")
    lay = LpLayout(phy2log, cluster, E)
    if not trace.is_token_level:
        wc = trace.window_counts()  # [W, L, E]
        loads = np.zeros((L, G))
        peak = np.zeros(L)
        for w in range(wc.shape[0]):
            share = lay.solve(wc[w])
            to_gpu, _ = _share_nodes(share, phy2log, cluster, E)
            part = np.einsum("le,leg->lg", wc[w], to_gpu)
            loads += part
            peak += part.max(axis=1)
        tot = wc.sum(axis=(0, 2))
        if progress is not None:
            progress(1, 1)
        messages.append(f"lp: one LP per window and layer ({wc.shape[0]} window(s)).")
        return ValidationResult(
            dispatch="lp", gpu_loads=loads, tokens=tot / trace.top_k if trace.top_k else None,
            trace_kind="counts", messages=tuple(messages), device="cpu",
            wall_time=time.perf_counter() - start, assignments=float(tot.sum()),
            batch_imbalance=_ratio(peak, loads), **common)
    ids_all = trace.topk_ids
    T = int(trace.num_tokens or 0)
    bt = batch_tokens or DEFAULT_BATCH_TOKENS
    matrix = np.zeros((L, G, G))
    ns = np.zeros((L, G, N))
    valid_tokens = np.zeros(L)
    peak = np.zeros(L)
    nb = 0
    for s in range(0, T, bt):
        ids = np.asarray(ids_all[s:s + bt], dtype=np.int64)
        src = _source(trace, s, s + ids.shape[0], G)
        cells = _cell_counts(ids, src, L, G, E)  # [L, G, E]
        share = lay.solve(cells.sum(axis=1))
        to_gpu, to_node = _share_nodes(share, phy2log, cluster, E)
        part = np.matmul(cells, to_gpu)  # [L, G, E] @ [L, E, G]
        matrix += part
        peak += part.sum(axis=1).max(axis=1)
        _add_node_sends(ns, _node_reach_expected(ids, to_node), src)
        valid_tokens += (ids >= 0).any(axis=2).sum(axis=0)
        nb += 1
        if progress is not None:
            progress(s + ids.shape[0], T)
    if not trace.has_source_rank:
        messages.append("the trace has no source ranks: tokens are spread evenly over GPUs (t % G).")
    messages.append(f"lp: one LP per batch of {bt} tokens and layer ({nb} batch(es)); "
                    "sends are expected values of SGLang's per-token sampling.")
    loads = matrix.sum(axis=1)
    _drop_own_node(cluster, ns)
    return ValidationResult(
        dispatch="lp", gpu_loads=loads, tokens=valid_tokens, matrix=matrix, node_sends=ns,
        num_tokens=T, trace_kind="tokens", messages=tuple(messages), device="cpu",
        wall_time=time.perf_counter() - start, assignments=float(loads.sum()),
        batch_imbalance=_ratio(peak, loads), **common)


def _ratio(peak: np.ndarray, loads: np.ndarray) -> np.ndarray:
    """``[L]`` summed batch peaks over summed batch means (1.0 where a layer routes nothing)."""
    mean = loads.mean(axis=1)
    return np.divide(peak, mean, out=np.ones_like(peak), where=mean > 0)


def dynamic_draws(seed: int, block: int, shape: tuple[int, ...]) -> np.ndarray:
    """The draws of token block ``block`` (``[block tokens, L, k]`` integers in [0, 65536))."""
    rng = np.random.default_rng([seed, block])
    return rng.integers(0, 65536, size=shape, dtype=np.int64)


def replay_dynamic(phy2log: np.ndarray, trace: Trace, cluster: Cluster, *, seed: int,
                   common: dict[str, Any], messages: list[str],
                   progress: Any = None) -> ValidationResult:
    """The ``dynamic`` replay of a token-level ``trace`` against ``phy2log [L, P]``."""
    start = time.perf_counter()
    if not trace.is_token_level:
        raise InputError("dispatch dynamic draws a replica per token: it needs a token-level "
                         "trace (use even, static or lp for counts).")
    E = trace.num_experts
    L = phy2log.shape[0]
    G, N, spg, gpn = (cluster.num_gpus, cluster.num_nodes, cluster.slots_per_gpu,
                      cluster.gpus_per_node)
    narrowed = narrowed_dispatch(phy2log, cluster, E, same_node=N > 1)
    log2phy, logcnt = replica_table(phy2log, E)
    ids_all = trace.topk_ids
    T = int(trace.num_tokens or 0)
    cnt = np.zeros(L * G * G)
    ns = np.zeros((L, G, N))
    valid_tokens = np.zeros(L)
    lay = np.arange(L)[None, :, None]
    for b, s in enumerate(range(0, T, DYNAMIC_BLOCK)):
        ids = np.asarray(ids_all[s:s + DYNAMIC_BLOCK], dtype=np.int64)
        src = _source(trace, s, s + ids.shape[0], G)
        draws = dynamic_draws(seed, b, ids.shape)
        slot = dynamic_slots(ids, src, narrowed, log2phy, logcnt, draws)
        valid = slot >= 0
        dst = slot // spg
        key = (lay * G + src[:, None, None]) * G + dst
        cnt += np.bincount(key[valid], minlength=L * G * G)
        node = np.where(valid, dst // gpn, N)
        reach = np.zeros((ids.shape[0], L, N + 1), dtype=bool)
        np.put_along_axis(reach, node, True, axis=2)
        _add_node_sends(ns, reach[:, :, :N].astype(np.float64), src)
        valid_tokens += valid.any(axis=2).sum(axis=0)
        if progress is not None:
            progress(s + ids.shape[0], T)
    if not trace.has_source_rank:
        messages.append("the trace has no source ranks: tokens are spread evenly over GPUs (t % G).")
    matrix = cnt.reshape(L, G, G)
    loads = matrix.sum(axis=1)
    _drop_own_node(cluster, ns)
    return ValidationResult(
        dispatch="dynamic", gpu_loads=loads, tokens=valid_tokens, matrix=matrix, node_sends=ns,
        num_tokens=T, trace_kind="tokens", messages=tuple(messages), device="cpu",
        wall_time=time.perf_counter() - start, assignments=float(loads.sum()), **common)
