"""SGLang's dispatch rules (sglang-static, dynamic, lp) against small independent references:
SGLang's own loops transcribed in plain Python, per-token loops, a brute-force LP optimum and an
enumeration of every replica combination."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from replay_reference import random_plan, random_tokens, reference_replay

from placement.cluster import Cluster
from placement.errors import InputError
from placement.routing_traces.trace import Trace
from placement.validation import replay
from placement.validation.engine_replay import DYNAMIC_BLOCK, dynamic_draws
from placement.validation.engine_rules import (
    lp_gpu_loads,
    lp_split,
    sglang_static_dispatch,
)

# ----------------------------------------------------------------------------------------------
# plain-Python transcription of SGLang's rank-local narrowing and its static map
# ----------------------------------------------------------------------------------------------


def _candidates(row: np.ndarray, e: int) -> list[int]:
    return [p for p in range(len(row)) if int(row[p]) == e]


def _nearest(cands: list[int], spg: int, rank: int, gpn: int | None) -> int:
    if len(cands) == 1:
        return cands[0]
    same_gpu = [p for p in cands if p // spg == rank]
    if same_gpu:
        return same_gpu[0]
    if gpn is not None:
        same_node = [p for p in cands if p // (spg * gpn) == rank // gpn]
        if 0 < len(same_node) < len(cands):
            return same_node[0]
    return -1


def _fair(arr: list[int], k: int, r: random.Random) -> list[int]:
    q, rem = divmod(k, len(arr))
    ans = arr * q + r.sample(arr, k=rem)
    r.shuffle(ans)
    return ans


def sglang_static_reference(phy2log: np.ndarray, cluster: Cluster, E: int,
                            same_node: bool) -> np.ndarray:
    """``[L, G, E]``: for every rank, SGLang's narrowed map then its dispatch-map loop."""
    L = phy2log.shape[0]
    G, spg = cluster.num_gpus, cluster.slots_per_gpu
    gpn = cluster.gpus_per_node if same_node else None
    out = np.full((L, G, E), -1, dtype=np.int64)
    for rank in range(G):
        # the rank's logical_to_all_physical_map, narrowed
        narrowed = [[(lambda c, n: [n] if n != -1 else c)(_candidates(phy2log[layer], e),
                                                            _nearest(_candidates(phy2log[layer], e),
                                                                     spg, rank, gpn))
                     for e in range(E)] for layer in range(L)]
        r = random.Random(42)
        for layer in range(L):
            for e in range(E):
                cands = narrowed[layer][e]
                row = [_nearest(cands, spg, g, gpn) for g in range(G)]
                remaining = [g for g in range(G) if row[g] == -1]
                if remaining:
                    for g, choice in zip(remaining, _fair(cands, len(remaining), r), strict=True):
                        row[g] = choice
                out[layer, rank, e] = row[rank]
    return out


CLUSTERS = [Cluster(2, 2, 3), Cluster(3, 2, 2), Cluster(1, 4, 3)]


@pytest.mark.parametrize("cluster", CLUSTERS, ids=lambda c: c.shape)
@pytest.mark.parametrize("colocated", [False, True])
def test_sglang_static_is_sglangs_loop(cluster: Cluster, colocated: bool) -> None:
    rng = np.random.default_rng(3)
    E = cluster.num_slots // 2
    plan = random_plan(rng, cluster, E, [0, 1, 2, 3], colocated=colocated)
    same = cluster.num_nodes > 1
    got = sglang_static_dispatch(plan.phy2log, cluster, E, same_node=same)
    np.testing.assert_array_equal(got, sglang_static_reference(plan.phy2log, cluster, E, same))


def test_sglang_static_replay_is_the_table_replayed() -> None:
    rng = np.random.default_rng(4)
    cluster = Cluster(2, 2, 3)
    plan = random_plan(rng, cluster, 6, [0, 1])
    trace = random_tokens(rng, 40, 2, 6, 2, pad=0.1)
    res = replay(plan, trace, dispatch="sglang-static")
    table = sglang_static_reference(plan.phy2log, cluster, 6, True)
    src = np.arange(40) % cluster.num_gpus
    ref = reference_replay(plan.phy2log, table, trace.topk_ids, src, 2, 2, 3)
    np.testing.assert_allclose(res.gpu_loads, ref["loads"])
    np.testing.assert_allclose(res.node_sends, ref["node_sends"])
    assert res.dispatch == "sglang-static"


# ----------------------------------------------------------------------------------------------
# dynamic: a per-token loop with the same draws
# ----------------------------------------------------------------------------------------------


def dynamic_reference(phy2log: np.ndarray, ids: np.ndarray, src: np.ndarray, cluster: Cluster,
                      seed: int) -> dict[str, np.ndarray]:
    T, L, k = ids.shape
    G, N, spg, gpn = cluster.num_gpus, cluster.num_nodes, cluster.slots_per_gpu, \
        cluster.gpus_per_node
    loads = np.zeros((L, G))
    ns = np.zeros((L, G, N))
    for b in range(0, T, DYNAMIC_BLOCK):
        draws = dynamic_draws(seed, b // DYNAMIC_BLOCK, ids[b:b + DYNAMIC_BLOCK].shape)
        for t in range(b, min(T, b + DYNAMIC_BLOCK)):
            g = int(src[t])
            for layer in range(L):
                reached = set()
                for j in range(k):
                    e = int(ids[t, layer, j])
                    if e < 0:
                        continue
                    cands = _candidates(phy2log[layer], e)
                    near = _nearest(cands, spg, g, gpn if N > 1 else None)
                    slot = near if near != -1 else cands[int(draws[t - b, layer, j]) % len(cands)]
                    loads[layer, slot // spg] += 1
                    reached.add(slot // spg // gpn)
                for n in reached - {g // gpn}:
                    ns[layer, g, n] += 1
    return {"loads": loads, "node_sends": ns}


@pytest.mark.parametrize("cluster", CLUSTERS[:2], ids=lambda c: c.shape)
def test_dynamic_matches_per_token_loop(cluster: Cluster) -> None:
    rng = np.random.default_rng(5)
    E = cluster.num_slots // 2
    plan = random_plan(rng, cluster, E, [0, 1])
    trace = random_tokens(rng, 60, 2, E, 3, pad=0.1, ranks=cluster.num_gpus)
    res = replay(plan, trace, dispatch="dynamic", seed=7)
    src = np.asarray(trace.source_rank) % cluster.num_gpus
    ref = dynamic_reference(plan.phy2log, trace.topk_ids, src, cluster, 7)
    np.testing.assert_array_equal(res.gpu_loads, ref["loads"])
    np.testing.assert_array_equal(res.node_sends, ref["node_sends"])
    other = replay(plan, trace, dispatch="dynamic", seed=8)
    assert not np.array_equal(other.gpu_loads, res.gpu_loads)  # the draws follow the seed


def test_dynamic_needs_tokens() -> None:
    rng = np.random.default_rng(6)
    cluster = Cluster(2, 2, 3)
    plan = random_plan(rng, cluster, 6, [0])
    counts = Trace(num_experts=6, counts=np.ones((1, 1, 6)))
    with pytest.raises(InputError, match="token-level"):
        replay(plan, counts, dispatch="dynamic")


# ----------------------------------------------------------------------------------------------
# lp: the optimum against a brute-force bound, the replay against an enumeration
# ----------------------------------------------------------------------------------------------


def brute_force_min_max(row: np.ndarray, counts: np.ndarray, cluster: Cluster) -> float:
    """Least possible busiest-GPU load when every expert's count may be split over its
    replicas: max over GPU subsets U of (tokens that must land in U) / |U| (max-flow min-cut)."""
    G, spg = cluster.num_gpus, cluster.slots_per_gpu
    homes = [{p // spg for p in range(len(row)) if row[p] == e} for e in range(len(counts))]
    best = 0.0
    for size in range(1, G + 1):
        for U in itertools.combinations(range(G), size):
            inside = sum(float(counts[e]) for e in range(len(counts)) if homes[e] <= set(U))
            best = max(best, inside / size)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_lp_reaches_the_least_busiest_gpu(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cluster = Cluster(2, 2, 3)
    plan = random_plan(rng, cluster, 7, [0, 1], colocated=True)
    counts = rng.integers(0, 50, size=(2, 7)).astype(float)
    loads = lp_gpu_loads(counts, plan.phy2log, cluster, 7)
    for layer in range(2):
        assert loads[layer].max() == pytest.approx(
            brute_force_min_max(plan.phy2log[layer], counts[layer], cluster), rel=1e-7)
        assert loads[layer].sum() == pytest.approx(counts[layer].sum())
    share = lp_split(counts[None], plan.phy2log, cluster, 7)[0]  # [L, P]
    for layer in range(2):
        for e in range(7):
            assert share[layer, plan.phy2log[layer] == e].sum() == pytest.approx(1.0)
    assert (share >= 0).all()


def lp_reference(phy2log: np.ndarray, ids: np.ndarray, src: np.ndarray, cluster: Cluster,
                 batch: int) -> dict[str, np.ndarray]:
    """Per batch: the LP's shares, then every assignment split by them, cross-node sends
    expected by enumerating every combination of replicas of the token's experts."""
    T, L, _ = ids.shape
    G, N, spg, gpn = cluster.num_gpus, cluster.num_nodes, cluster.slots_per_gpu, \
        cluster.gpus_per_node
    E = int(phy2log.max()) + 1
    loads = np.zeros((L, G))
    ns = np.zeros((L, G, N))
    peak = np.zeros(L)
    for b in range(0, T, batch):
        part = ids[b:b + batch]
        counts = np.zeros((L, E))
        for layer in range(L):
            for e in part[:, layer].reshape(-1):
                if e >= 0:
                    counts[layer, e] += 1
        share = lp_split(counts[None], phy2log, cluster, E)[0]
        bl = np.zeros((L, G))
        for t in range(b, min(T, b + batch)):
            g = int(src[t])
            for layer in range(L):
                opts = []
                for e in ids[t, layer]:
                    if e < 0:
                        continue
                    slots = _candidates(phy2log[layer], int(e))
                    opts.append([(share[layer, p], p // spg) for p in slots])
                for o in opts:
                    for prob, h in o:
                        bl[layer, h] += prob
                for combo in itertools.product(*opts):
                    prob = float(np.prod([c[0] for c in combo]))
                    for n in {h // gpn for _, h in combo} - {g // gpn}:
                        ns[layer, g, n] += prob
        loads += bl
        peak += bl.max(axis=1)
    return {"loads": loads, "node_sends": ns, "batch_imbalance": peak / loads.mean(axis=1)}


def test_lp_replay_matches_enumeration() -> None:
    rng = np.random.default_rng(8)
    cluster = Cluster(2, 2, 3)
    plan = random_plan(rng, cluster, 6, [0, 1])
    trace = random_tokens(rng, 30, 2, 6, 2, pad=0.1, ranks=4)
    res = replay(plan, trace, dispatch="lp", batch_tokens=7)
    ref = lp_reference(plan.phy2log, trace.topk_ids, np.asarray(trace.source_rank) % 4,
                       cluster, 7)
    np.testing.assert_allclose(res.gpu_loads, ref["loads"], atol=1e-9)
    np.testing.assert_allclose(res.node_sends, ref["node_sends"], atol=1e-9)
    np.testing.assert_allclose(res.batch_imbalance, ref["batch_imbalance"], atol=1e-9)
    assert res.dispatch == "lp" and res.mean_batch_imbalance is not None


def test_lp_on_counts_is_one_lp_per_window() -> None:
    rng = np.random.default_rng(9)
    cluster = Cluster(2, 2, 3)
    plan = random_plan(rng, cluster, 6, [0, 1])
    counts = rng.integers(0, 30, size=(3, 2, 6)).astype(float)
    res = replay(plan, Trace(num_experts=6, counts=counts), dispatch="lp")
    want = sum(lp_gpu_loads(counts[w], plan.phy2log, cluster, 6) for w in range(3))
    np.testing.assert_allclose(res.gpu_loads, want)
    assert res.node_sends is None


def test_lp_never_busier_than_even_per_batch() -> None:
    rng = np.random.default_rng(10)
    cluster = Cluster(2, 2, 3)
    plan = random_plan(rng, cluster, 6, [0, 1])
    counts = rng.integers(0, 30, size=(1, 2, 6)).astype(float)
    trace = Trace(num_experts=6, counts=counts)
    lp = replay(plan, trace, dispatch="lp")
    even = replay(plan, trace, dispatch="even")
    assert (lp.gpu_loads.max(axis=1) <= even.gpu_loads.max(axis=1) + 1e-9).all()
