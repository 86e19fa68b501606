"""The validation guard: a traffic-aware plan is kept only when it beats EPLB's on tokens it was
not fitted to (placement.solver.optimizer._validate, placement.solver.objective.validated)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.routing_traces.trace import Trace
from placement.solver import SolveOptions, solve
from placement.solver.objective import CLEAR_GAIN, VALIDATION_MARGIN, LayerScore, validated
from placement.solver.optimizer import (
    MIN_SPLIT_TOKENS,
    candidate_kinds,
    validation_split,
)
from placement.solver.problem import ProblemData

PLAIN = ("eplb", "eplb, co-located replicas spread", "balance", "eplb-global")


def _score(time: float, static: float) -> LayerScore:
    return LayerScore(robust_even=static, static=static, expected=static, sends=0.0, copies=0.0,
                      time=time, compute=time, comm=0.0)


def _cliques(cliques_by_window: list[list[list[int]]], tokens_per_window: int = 1000,
             seed: int = 1) -> Trace:
    """Two experts per token from one clique; every window has its own cliques (they fire
    apart, as often each); 8 experts on 4 source ranks."""
    rng = np.random.default_rng(seed)
    rows, window = [], []
    for w, cliques in enumerate(cliques_by_window):
        for t in range(tokens_per_window):
            rows.append(rng.choice(cliques[t % len(cliques)], 2, replace=False))
            window.append(w)
    ids = np.stack(rows)
    return Trace(num_experts=8, topk_ids=ids[:, None, :], window=np.asarray(window),
                 source_rank=rng.integers(0, 4, ids.shape[0]))


# 1 GB/s between nodes: the network sets the predicted time, so the time objective wants traffic
SLOW = dataclasses.replace(Cluster(2, 2, 3), network_gbps=1.0)
OPTS = SolveOptions(jobs=1, model="flame-moe-290m")


def test_validated_needs_time_and_balance_or_a_clear_gain() -> None:
    ref = _score(100.0, 1.2)
    m = 1.0 - VALIDATION_MARGIN
    assert validated(_score(100.0 * m, 1.2 * m), ref)
    assert not validated(_score(100.0 * m * 1.001, 1.2 * m), ref)  # not faster enough
    assert not validated(_score(90.0, 1.2), ref)  # faster, but balances no better
    assert not validated(_score(90.0, 1.3), ref)
    # clearly faster: balance may give a little
    assert validated(_score(100.0 * CLEAR_GAIN, 1.2 * (1.0 + VALIDATION_MARGIN)), ref)
    assert not validated(_score(100.0 * CLEAR_GAIN * 1.01, 1.2), ref)
    assert not validated(_score(100.0 * CLEAR_GAIN, 1.3), ref)


def test_a_partition_that_only_wins_in_sample_falls_back() -> None:
    # the cliques of the first window are not those of the second: a partition fitted to one
    # cuts nothing on the other, and the guard keeps a plain plan
    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 1, 4, 5], [2, 3, 6, 7]]])
    res = solve(trace, SLOW, OPTS)
    st = res.plan.settings
    assert st["guard_fell_back"] == [1.0]
    assert st["choice"][0] in PLAIN
    assert st["validation_time_ratio"][0] > 1.0 - VALIDATION_MARGIN  # no gain held out
    assert res.guard_fell_back == [0]
    assert ("validation guard: 1 of 1 layer(s) kept a plain plan (0): no traffic-aware plan "
            "beat EPLB's on the planning tokens it was not fitted to") in res.summary()


def test_strong_co_activation_keeps_the_traffic_plan() -> None:
    # the same two cliques in both windows: the partition splits them by node on any tokens
    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2)
    res = solve(trace, SLOW, OPTS)
    st = res.plan.settings
    assert st["guard_fell_back"] == [0.0]
    assert st["choice"][0].startswith("partition")
    assert st["validation_time_ratio"][0] <= CLEAR_GAIN
    assert res.guard_fell_back == []
    assert "validation guard: 0 of 1 layer(s) kept a plain plan\n" in res.summary()
    sends = res.plan.objectives["cross_node_sends_per_token"][0]
    assert sends == pytest.approx(0.5, abs=0.05)  # a token crosses only to reach a replica
    bal = solve(trace, SLOW, dataclasses.replace(OPTS, objective="balance")).plan
    assert sends < 0.85 * bal.objectives["cross_node_sends_per_token"][0]


def test_the_guard_is_off_with_an_explicit_tolerance_or_another_objective() -> None:
    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2)
    for opts in (dataclasses.replace(OPTS, balance_tolerance=0.05),
                 dataclasses.replace(OPTS, objective="traffic")):
        assert "guard_fell_back" not in solve(trace, SLOW, opts).plan.settings


def test_the_guard_gives_the_same_plan_with_any_jobs() -> None:
    # two layers, each with its own cliques in both windows
    a1 = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2, seed=1)
    a2 = _cliques([[[0, 1, 4, 5], [2, 3, 6, 7]]] * 2, seed=2)
    trace = Trace(num_experts=8, topk_ids=np.concatenate([a1.topk_ids, a2.topk_ids], axis=1),
                  window=a1.window, source_rank=a1.source_rank)
    a = solve(trace, SLOW, dataclasses.replace(OPTS, jobs=1)).plan
    b = solve(trace, SLOW, dataclasses.replace(OPTS, jobs=2)).plan
    np.testing.assert_array_equal(a.phy2log, b.phy2log)
    assert a.settings["choice"] == b.settings["choice"]
    assert a.settings["guard_fell_back"] == b.settings["guard_fell_back"]
    assert len(a.settings["guard_fell_back"]) == 2


def test_validation_split_takes_the_first_windows_else_alternate_blocks() -> None:
    trace = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 3, tokens_per_window=200)
    masks = validation_split(ProblemData.from_traces(trace, SLOW))
    assert masks is not None and [bool(m.all()) for m in masks] == [True, True, False]
    assert not masks[2].any()
    one = Trace(num_experts=8, topk_ids=trace.topk_ids, window=np.zeros(600, dtype=np.int64),
                source_rank=trace.source_rank)
    (m,) = validation_split(ProblemData.from_traces(one, SLOW)) or [None]
    assert m is not None and abs(int(m.sum()) - 300) <= 10 and m[0] and not m[-1]
    few = _cliques([[[0, 1, 2, 3], [4, 5, 6, 7]]] * 2, tokens_per_window=MIN_SPLIT_TOKENS // 4)
    assert validation_split(ProblemData.from_traces(few, SLOW)) is None


def test_candidate_kinds_do_not_depend_on_the_tokens() -> None:
    labels = ["balance", "partition, cap 0, 0 everywhere", "partition, cap 0, 3 everywhere",
              "partition, cap 0.0412, 2 everywhere", "groups, node peak +1.3 %, 4 everywhere",
              "eplb-global", "eplb, co-located replicas spread", "eplb"]
    assert candidate_kinds(labels) == [
        "balance", "partition, cap 0 #0", "partition, cap 0 #1", "partition, cap room #0",
        "groups 0 #0", "eplb-global", "eplb-spread", "eplb"]
