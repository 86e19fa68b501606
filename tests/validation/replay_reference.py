"""Slow, obvious reference of the replay: Python loops over tokens and layers (tests only).

Written from ``docs/definitions.md`` without the code under test: every token goes to the
replica its rule picks (static/plan: a table lookup; even: every replica with probability 1/r,
independently per expert, the expectation taken by enumerating every combination of replicas).
"""

from __future__ import annotations

import itertools

import numpy as np

from placement.cluster import Cluster
from placement.plan import Plan
from placement.routing_traces.trace import Trace


def reference_replay(
    phy2log: np.ndarray,
    table: np.ndarray | None,
    ids: np.ndarray,
    src: np.ndarray,
    num_nodes: int,
    gpus_per_node: int,
    slots_per_gpu: int,
) -> dict[str, np.ndarray]:
    """Figures of a replay.

    Args:
        phy2log: ``[L, P]``.
        table: ``[L, G, E]`` dispatch slots, or None for the even rule.
        ids: ``[T, L, k]`` logical ids, -1 = none.
        src: ``[T]`` source GPU of every token.
    Returns:
        loads [L, G], matrix [L, G, G], node_sends [L, G, N] (own node 0), tokens [L],
        sends [L], copies [L], intra [L] (sums over tokens).
    """
    T, L, _ = ids.shape
    G = num_nodes * gpus_per_node
    N = num_nodes
    loads = np.zeros((L, G))
    matrix = np.zeros((L, G, G))
    node_sends = np.zeros((L, G, N))
    tokens = np.zeros(L)
    sends = np.zeros(L)
    copies = np.zeros(L)
    intra = np.zeros(L)
    for layer in range(L):
        for t in range(T):
            g = int(src[t])
            own = g // gpus_per_node
            experts = [int(e) for e in ids[t, layer] if e >= 0]
            if not experts:
                continue
            tokens[layer] += 1
            # choices: per expert, a list of (probability, destination GPU)
            choices = []
            for e in experts:
                if table is not None:
                    slot = int(table[layer, g, e])
                    assert phy2log[layer, slot] == e
                    choices.append([(1.0, slot // slots_per_gpu)])
                else:
                    slots = [p for p in range(phy2log.shape[1]) if phy2log[layer, p] == e]
                    choices.append([(1.0 / len(slots), p // slots_per_gpu) for p in slots])
            for opts in choices:
                for prob, h in opts:
                    loads[layer, h] += prob
                    matrix[layer, g, h] += prob
                    if h // gpus_per_node != own:
                        copies[layer] += prob
                    elif h != g:
                        intra[layer] += prob
            # expected distinct remote nodes: enumerate every combination of replicas
            for combo in itertools.product(*choices):
                prob = float(np.prod([c[0] for c in combo]))
                reached = {h // gpus_per_node for _, h in combo} - {own}
                for n in reached:
                    node_sends[layer, g, n] += prob
                    sends[layer] += prob
    return {
        "loads": loads, "matrix": matrix, "node_sends": node_sends, "tokens": tokens,
        "sends": sends, "copies": copies, "intra": intra,
    }


def random_plan(
    rng: np.random.Generator,
    cluster: Cluster,
    num_experts: int,
    layer_ids: list[int],
    *,
    colocated: bool = False,
) -> Plan:
    """Every expert once per layer, the redundant slots random (one replica per GPU unless
    ``colocated``)."""
    P, spg = cluster.num_slots, cluster.slots_per_gpu
    rows = []
    for _ in layer_ids:
        while True:
            row = np.concatenate([rng.permutation(num_experts),
                                  rng.integers(0, num_experts, P - num_experts)])
            rng.shuffle(row)
            per_gpu = np.sort(row.reshape(-1, spg), axis=1)
            if colocated or not (per_gpu[:, 1:] == per_gpu[:, :-1]).any():
                break
        rows.append(row)
    return Plan(cluster=cluster, num_experts=num_experts, layer_ids=np.asarray(layer_ids),
                phy2log=np.stack(rows), allow_colocated_replicas=colocated, method="random")


def random_plan_dispatch(rng: np.random.Generator, plan: Plan) -> Plan:
    """The plan with a random valid dispatch table (any replica per source GPU and expert)."""
    L, G, E = plan.num_layers, plan.cluster.num_gpus, plan.num_experts
    table = np.zeros((L, G, E), dtype=np.int64)
    for layer in range(L):
        for e in range(E):
            slots = np.flatnonzero(plan.phy2log[layer] == e)
            table[layer, :, e] = rng.choice(slots, G)
    return plan.with_dispatch(table)


def random_tokens(
    rng: np.random.Generator,
    num_tokens: int,
    num_layers: int,
    num_experts: int,
    top_k: int,
    *,
    pad: float = 0.0,
    ranks: int | None = None,
    layer_ids: list[int] | None = None,
) -> Trace:
    """Distinct experts per (token, layer), a share ``pad`` of entries set to -1."""
    ids = np.argsort(rng.random((num_tokens, num_layers, num_experts)), axis=2)[:, :, :top_k]
    if pad:
        ids[rng.random(ids.shape) < pad] = -1
    return Trace(
        num_experts=num_experts,
        topk_ids=ids.astype(np.int16),
        source_rank=None if ranks is None else rng.integers(0, ranks, num_tokens),
        layer_ids=layer_ids,
    )
