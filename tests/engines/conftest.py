"""Small named plans for the engine tests (random but valid, fixed seeds)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.plan import Plan


def random_phy2log(rng: np.random.Generator, layers: int, cluster: Cluster,
                   num_experts: int) -> np.ndarray:
    """``[layers, P]``: every expert once plus ``P - E`` extra replicas, never two replicas of
    one expert on one GPU (rejection sampling per layer)."""
    P, spg = cluster.num_slots, cluster.slots_per_gpu
    rows = []
    while len(rows) < layers:
        row = np.concatenate([rng.permutation(num_experts),
                              rng.choice(num_experts, P - num_experts,
                                         replace=P - num_experts > num_experts)])
        row = row[rng.permutation(P)]
        per_gpu = np.sort(row.reshape(-1, spg), axis=1)
        if (per_gpu[:, 1:] != per_gpu[:, :-1]).all():
            rows.append(row)
    return np.asarray(rows, dtype=np.int64)


def make_plan(name: str) -> Plan:
    """Named plans: ``single`` (1 node, no redundancy), ``multinode`` (2x4x3, 8 experts, 4
    redundant), ``subset`` (DeepSeek-like: layers 3..9 of 10, first 3 dense), ``deepseek``
    (4x8x9 = 288 slots, 256 experts, layers 3..60 of 61)."""
    seeds = {"single": 1, "multinode": 2, "subset": 3, "deepseek": 4}
    rng = np.random.default_rng(seeds.get(name, 0))
    if name == "single":
        c = Cluster(1, 4, 2)
        return Plan(cluster=c, num_experts=8, layer_ids=np.arange(4),
                    phy2log=random_phy2log(rng, 4, c, 8), model="tiny-moe")
    if name == "multinode":
        c = Cluster(2, 4, 3)
        return Plan(cluster=c, num_experts=8, layer_ids=np.arange(6),
                    phy2log=random_phy2log(rng, 6, c, 8), num_hidden_layers=6)
    if name == "subset":
        c = Cluster(2, 2, 5)
        return Plan(cluster=c, num_experts=16, layer_ids=np.arange(3, 10),
                    phy2log=random_phy2log(rng, 7, c, 16), num_hidden_layers=10)
    if name == "deepseek":
        c = Cluster(4, 8, 9)
        return Plan(cluster=c, num_experts=256, layer_ids=np.arange(3, 61),
                    phy2log=random_phy2log(rng, 58, c, 256), num_hidden_layers=61,
                    model="deepseek-v3")
    raise KeyError(name)


PLAN_NAMES = ("single", "multinode", "subset", "deepseek")


@pytest.fixture(scope="session")
def named_plan() -> Callable[[str], Plan]:
    """``named_plan(name)`` -> a cached :func:`make_plan` plan."""
    cache: dict[str, Plan] = {}

    def get(name: str) -> Plan:
        if name not in cache:
            cache[name] = make_plan(name)
        return cache[name]

    return get
