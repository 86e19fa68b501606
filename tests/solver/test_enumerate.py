"""The exact balance route by listing every placement of a tiny layer
(placement.solver.balance.enumerate_placements), against CP-SAT's exact pattern model."""

from __future__ import annotations

import numpy as np
import pytest

from placement.solver.balance import LayerState, enumerate_placements, multiset_count
from placement.solver.cpsat import solve_patterns


def test_multiset_count_is_the_number_of_multisets_of_gpu_configurations() -> None:
    # C(8, 3) = 56 configurations, 4 GPUs: C(59, 4)
    assert multiset_count(8, 4, 3) == 455126
    assert multiset_count(4, 2, 2) == 21  # C(4, 2) = 6 configurations, 2 GPUs: C(7, 2)


@pytest.mark.parametrize("robust", ["max", "mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_listing_finds_cp_sats_optimum(robust: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    G, spg, E = 4, 3, 8
    w = rng.dirichlet(np.full(E, 0.7), size=2) * G  # [S, E], mean GPU load 1
    phy = enumerate_placements(w, G, spg, robust=robust)
    assert phy is not None and phy.shape == (G, spg)
    cnt = np.bincount(phy.reshape(-1), minlength=E)
    assert cnt.min() >= 1
    assert all(len(set(row.tolist())) == spg for row in phy)  # no GPU holds an expert twice
    ref = solve_patterns(w, G, spg, robust=robust, seed=0, max_deterministic_time=10.0)
    assert ref.optimal and ref.phy is not None
    mine = LayerState.build(w, phy, robust).objective()
    theirs = LayerState.build(w, ref.phy, robust).objective()
    # CP-SAT's model rounds the loads to integers: optimal up to that rounding
    assert mine <= theirs + 1e-9
    assert mine >= ref.bound - 1e-9


def test_listing_respects_the_replica_cap_and_says_when_none_fits() -> None:
    w = np.array([[3.0, 0.5, 0.3, 0.2]])  # one hot expert, G = 2
    phy = enumerate_placements(w, 2, 2, max_count=1)
    assert phy is not None
    assert np.bincount(phy.reshape(-1), minlength=4).max() == 1
    # 3 experts, 2 GPUs x 2 slots, at most 1 replica each: 4 slots, 3 replicas: impossible
    assert enumerate_placements(np.ones((1, 3)), 2, 2, max_count=1) is None
