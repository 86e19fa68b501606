"""The shared numpy metrics against plain-Python loops over tokens."""

from __future__ import annotations

import numpy as np

from placement import Cluster, static_dispatch
from placement.metrics import (
    even_gpu_loads,
    imbalance,
    source_gpus,
    static_gpu_loads,
    token_traffic,
)


def random_plan(rng: np.random.Generator, c: Cluster, E: int, L: int) -> np.ndarray:
    rows = []
    for _ in range(L):
        while True:
            row = np.concatenate([rng.permutation(E), rng.integers(0, E, c.num_slots - E)])
            per = np.sort(row.reshape(c.num_gpus, c.slots_per_gpu), axis=1)
            if not (per[:, 1:] == per[:, :-1]).any():
                rows.append(row)
                break
    return np.stack(rows)


def test_imbalance() -> None:
    np.testing.assert_allclose(imbalance(np.array([[1, 1, 2], [0, 0, 0]])), [1.5, 1.0])


def test_even_loads_match_loop() -> None:
    rng = np.random.default_rng(0)
    c = Cluster(2, 2, 3)
    E, L = 9, 2
    p2l = random_plan(rng, c, E, L)
    counts = rng.integers(0, 100, (3, L, E)).astype(float)
    got = even_gpu_loads(p2l, counts, c)
    for s in range(3):
        for layer in range(L):
            want = np.zeros(c.num_gpus)
            for p, e in enumerate(p2l[layer]):
                want[p // c.slots_per_gpu] += counts[s, layer, e] / (p2l[layer] == e).sum()
            np.testing.assert_allclose(got[s, layer], want)


def test_token_traffic_and_static_loads_match_loop() -> None:
    rng = np.random.default_rng(1)
    c = Cluster(3, 2, 3)
    E, L, T, k = 12, 2, 200, 3
    p2l = random_plan(rng, c, E, L)
    disp = static_dispatch(p2l, c, E)
    ids = np.stack([np.stack([rng.choice(E, k, replace=False) for _ in range(L)]) for _ in range(T)])
    ids[rng.random((T, L, k)) < 0.1] = -1
    src = source_gpus(T, rng.integers(0, 10, T), c.num_gpus)
    sends, copies, loads = token_traffic(disp, ids, src, c)
    w_sends, w_copies = np.zeros(L), np.zeros(L)
    w_loads = np.zeros((L, c.num_gpus))
    rc = np.zeros((c.num_gpus, L, E))
    for t in range(T):
        for layer in range(L):
            nodes = set()
            for e in ids[t, layer]:
                if e < 0:
                    continue
                gpu = disp[layer, src[t], e] // c.slots_per_gpu
                w_loads[layer, gpu] += 1
                rc[src[t], layer, e] += 1
                if gpu // c.gpus_per_node != src[t] // c.gpus_per_node:
                    w_copies[layer] += 1
                    nodes.add(gpu // c.gpus_per_node)
            w_sends[layer] += len(nodes)
    np.testing.assert_array_equal(sends, w_sends)
    np.testing.assert_array_equal(copies, w_copies)
    np.testing.assert_array_equal(loads, w_loads)
    np.testing.assert_array_equal(static_gpu_loads(disp, rc, c), w_loads)


def test_source_gpus() -> None:
    np.testing.assert_array_equal(source_gpus(5, None, 2), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(source_gpus(3, np.array([5, 1, 2]), 4), [1, 1, 2])
