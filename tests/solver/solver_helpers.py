"""Helpers of the solver tests: tiny traces and exhaustive enumeration of placements."""

from __future__ import annotations

import itertools

import numpy as np

from placement.routing_traces.trace import Trace


def brute_force_best(w: np.ndarray, num_gpus: int, spg: int, robust: str = "max") -> float:
    """The least robust imbalance over EVERY placement of ``w [S, E]`` (scaled loads) on
    ``num_gpus`` GPUs of ``spg`` slots, no expert twice on a GPU, every expert at least once.

    GPUs are interchangeable for balance, so placements are multisets of per-GPU subsets.
    """
    _S, E = w.shape
    subsets = np.array(list(itertools.combinations(range(E), spg)))  # [n, spg]
    inc = np.zeros((len(subsets), E))
    inc[np.repeat(np.arange(len(subsets)), spg), subsets.reshape(-1)] = 1.0
    combos = np.array(list(itertools.combinations_with_replacement(range(len(subsets)),
                                                                   num_gpus)))
    cnt = inc[combos].sum(axis=1)  # [m, E]
    ok = (cnt >= 1).all(axis=1)
    combos, cnt = combos[ok], cnt[ok]
    per = w[None, :, :] / cnt[:, None, :]  # [m, S, E]
    loads = np.einsum("mse,mge->msg", per, inc[combos])  # [m, S, G]
    peak = loads.max(axis=2)
    val = peak.max(axis=1) if robust == "max" else peak.mean(axis=1)
    return float(val.min())


def counts_trace(shares: np.ndarray, tokens: float = 1e6) -> Trace:
    """An aggregated trace from ``shares [W, L, E]`` (each window one scenario)."""
    shares = np.asarray(shares, dtype=np.float64)
    return Trace(num_experts=shares.shape[-1], counts=np.rint(shares * tokens))


def clique_tokens(num_tokens: int, cliques: list[list[int]], num_experts: int, k: int,
                  seed: int = 0, windows: int = 2) -> Trace:
    """Tokens whose top-k experts always come from one clique (cliques fire apart)."""
    rng = np.random.default_rng(seed)
    ids = np.empty((num_tokens, 1, k), dtype=np.int64)
    which = rng.integers(len(cliques), size=num_tokens)
    for t in range(num_tokens):
        ids[t, 0] = rng.choice(cliques[which[t]], size=k, replace=False)
    window = (np.arange(num_tokens) * windows) // num_tokens
    return Trace(num_experts=num_experts, topk_ids=ids, window=window)
